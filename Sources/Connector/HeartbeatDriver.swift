import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import RelayAPI
import RelayModel
import ServiceLifecycle
import TunnelCore

/// Runs `HeartbeatStateMachine` against the real world: sends heartbeats to the relay's API, keeps
/// its timer on an injected clock, and opens or closes tunnels through `TunnelConnector`. A
/// `Service`: `run()` owns the heartbeats in flight and the timer; on graceful shutdown the machine
/// stops, so an answer still in flight can neither reschedule nor redial.
public final class HeartbeatDriver: Service, Sendable {
    private let config: ConnectorConfig
    private let credential: ConnectorCredential
    private let client: APIClient
    private let clock: any Clock<Duration>
    private let logger: Logger
    private let health: NodeHealthProbe
    private let machine: NIOLockedValueBox<HeartbeatStateMachine>
    /// The pending timer: rung (ended early) when a new one is set.
    private let timer = NIOLockedValueBox<Alarm?>(nil)
    /// Work for `run()`: heartbeats to send and timers to run.
    private let jobs: AsyncStream<Job>
    private let jobsContinuation: AsyncStream<Job>.Continuation

    private enum Job: Sendable {
        case send
        case timer(Alarm, milliseconds: Int64)
    }
    private let last = NIOLockedValueBox<(answer: HeartbeatResponse, at: Date)?>(nil)
    private let failure = NIOLockedValueBox<String?>(nil)
    private let tunnels = NIOLockedValueBox<TunnelConnector?>(nil)
    /// The tunnel URLs last ignored (logged once, not on every heartbeat).
    private let lastDropped = NIOLockedValueBox<[String]>([])
    private let privacy: PrivacyGuard

    public init(
        config: ConnectorConfig, credential: ConnectorCredential, privacy: PrivacyGuard, group: EventLoopGroup,
        clock: any Clock<Duration> = ContinuousClock(), logger: Logger
    ) throws {
        self.config = config
        self.privacy = privacy
        self.credential = credential
        self.client = try APIClient(base: config.relayURL, caFile: config.caFile, bearer: credential.credential, group: group, proxy: config.proxy)
        self.clock = clock
        self.logger = logger
        (self.jobs, self.jobsContinuation) = AsyncStream.makeStream(of: Job.self)
        let folder = (config.credentialFile as NSString).deletingLastPathComponent
        self.health = NodeHealthProbe(masterNode: config.masterNode, startedAt: privacy.clock(), diskPath: folder.isEmpty ? "." : folder)
        self.machine = NIOLockedValueBox(
            HeartbeatStateMachine(configuration: config.heartbeat, remoteAccessEnabled: privacy.mode != .disabled))
        privacy.onModeChange { [weak self] mode in self?.remoteAccessChanged(enabled: mode != .disabled) }
    }

    /// The customer switched remote access on or off: close tunnels now, tell the relay now.
    public func remoteAccessChanged(enabled: Bool) {
        self.perform(self.machine.withLockedValue { $0.remoteAccessChanged(enabled: enabled, jitter: Double.random(in: -1...1)) })
    }

    /// The relay URLs the tunnels are meant to be up to now.
    public var wantedTunnelURLs: [String] { self.machine.withLockedValue { $0.tunnelURLs } }

    /// Heartbeat answers received since start (for status and tests).
    public var answersReceived: Int { self.answers.withLockedValue { $0 } }
    private let answers = NIOLockedValueBox(0)

    /// When the relay last answered a heartbeat.
    public var lastAnswerAt: Date? { self.last.withLockedValue { $0?.at } }

    /// The tunnels this driver opens and closes.
    public func attach(_ connector: TunnelConnector) {
        self.tunnels.withLockedValue { $0 = connector }
    }

    /// Heartbeats at once, then as the machine says, until graceful shutdown.
    public func run() async {
        await withDiscardingTaskGroup { group in
            self.perform(self.machine.withLockedValue { $0.start() })
            for await job in self.jobs.cancelOnGracefulShutdown() {
                switch job {
                case .send:
                    group.addTask { await self.send() }
                case .timer(let alarm, let milliseconds):
                    group.addTask {
                        guard await alarm.sleep(for: .milliseconds(milliseconds), on: self.clock) else { return }
                        self.perform(self.machine.withLockedValue { $0.timerFired() })
                    }
                }
            }
            self.machine.withLockedValue { $0.stop() }
            self.timer.withLockedValue { $0 }?.ring()
            group.cancelAll()  // a heartbeat in flight: its answer no longer matters
        }
    }

    /// Ask the relay now (a tunnel was closed or refused: the access may have ended).
    public func heartbeatNow() {
        self.perform(self.machine.withLockedValue { $0.heartbeatNow() })
    }

    /// The customer decided a request: the relay learns it with the next heartbeat, sent now (or
    /// right after the one in flight).
    public func relayMustLearn() {
        self.perform(self.machine.withLockedValue { $0.relayMustLearn() })
    }

    /// The relay's last answer (for status output and tests).
    public var lastAnswer: HeartbeatResponse? { self.last.withLockedValue { $0?.answer } }

    /// Why the last heartbeat failed; nil once one is answered (for `connector status`).
    public var lastFailure: String? { self.failure.withLockedValue { $0 } }

    /// Exactly what leaves the connector in a heartbeat: identifiers, version, the privacy settings
    /// (component names, never addresses) and the node's health.
    /// and the customer's decisions the relay has not taken yet.
    public static func makeRequest(
        config: ConnectorConfig, credential: ConnectorCredential, health: NodeHealth, mode: PrivacyMode? = nil, decisions: [ApprovalDecision] = []
    ) -> HeartbeatRequest {
        HeartbeatRequest(
            clusterID: credential.clusterID, nodeID: credential.nodeID, sourceType: config.sourceType,
            connectorVersion: ConnectorVersion.current,
            privacy: PrivacySettings(mode: mode ?? config.privacyMode, components: config.components.map(\.name).sorted()),
            health: health, decisions: decisions)
    }

    private func perform(_ actions: [HeartbeatStateMachine.Action]) {
        for action in actions {
            switch action {
            case .sendHeartbeat:
                self.jobsContinuation.yield(.send)
            case .scheduleHeartbeat(let milliseconds):
                let alarm = Alarm()
                self.timer.withLockedValue { timer in
                    timer?.ring()
                    timer = alarm
                }
                self.jobsContinuation.yield(.timer(alarm, milliseconds: milliseconds))
            case .openTunnels(let urls):
                let parsed = urls.compactMap { try? WebSocketURL(parsing: $0) }
                self.logger.info("access requested: opening tunnels", metadata: ["relays": "\(parsed.count)"])
                self.tunnels.withLockedValue { $0 }?.keep(parsed)
            case .closeTunnels(let reason):
                self.logger.info("closing tunnels", metadata: ["reason": "\(reason)"])
                // The tunnels close first: the relay ended the access and tells the engineer why
                // itself; this connector's own words ("the access request ended") would be vaguer.
                self.tunnels.withLockedValue { $0 }?.keep([], reason: reason)
                self.privacy.endAllSessions(reason: reason)
            }
        }
    }

    private func send() async {
        // Sent as x-request-id: the relay's log and audit (a decision delivered, say) carry it too.
        let id = RequestID.generate()
        await RequestID.$current.withValue(id) { await self.send(id: id) }
    }

    private func send(id: String) async {
        let jitter = Double.random(in: -1...1)
        do {
            let config = self.privacy.config  // the settings in force (reloads change them)
            let decisions = self.privacy.undeliveredDecisions
            let answer = try await self.client.call(
                RelayEndpoints.heartbeat,
                body: Self.makeRequest(
                    config: config, credential: self.credential, health: self.health.sample(), mode: self.privacy.mode,
                    decisions: decisions))
            self.last.withLockedValue { $0 = (answer, self.privacy.clock()) }
            self.failure.withLockedValue { $0 = nil }
            defer { self.answers.withLockedValue { $0 += 1 } }
            self.privacy.heartbeatAnswered(pending: answer.pendingApprovals, sent: decisions)
            self.privacy.figures.heartbeat(answered: true)
            self.logger.debug("heartbeat answered", metadata: ["request_id": "\(id)", "remote_ui": "\(answer.remoteUIRequested)"])
            if !decisions.isEmpty {
                self.logger.info(
                    "the customer's decisions delivered to the relay",
                    metadata: ["requests": "\(decisions.map { "\($0.requestID) \($0.verdict.rawValue)" })", "request_id": "\(id)"])
            }
            // Requests the relay ended, before any tunnel closes for them: sessions end with the relay's reason.
            for ended in (answer.endedRequests ?? []).prefix(50) {
                self.privacy.relaySaid(
                    ControlEvent(
                        event: ControlEvent.requestEnded, accessRequest: ended.requestID, expert: ended.expert, state: ended.state,
                        reason: ended.reason))
            }
            if !answer.pendingApprovals.isEmpty {
                self.logger.notice("access requests wait for the customer's approval", metadata: ["count": "\(answer.pendingApprovals.count)"])
            }
            if let spread = answer.reconnectSpreadMilliseconds {
                // Between 100 ms and 10 minutes, whatever the relay says: a window too small to spread
                // anything would herd, and a tunnel must come back in bounded time.
                self.tunnels.withLockedValue { $0 }?.reconnectSpreadMilliseconds = min(max(spread, 100), 600_000)
            }
            // Only relay nodes the customer allowed are dialed, whatever the answer lists.
            let (urls, dropped) = self.config.tunnelURLPolicy.filter(answer.websocketURLs)
            if !dropped.isEmpty, self.lastDropped.withLockedValue({ old in defer { old = dropped.map(\.url) }; return old != dropped.map(\.url) }) {
                self.logger.warning(
                    "ignoring tunnel URLs from the relay", metadata: ["urls": "\(dropped.map(\.url))", "why": "\(dropped.map(\.why))"])
            }
            let state = HeartbeatStateMachine.Answer(
                remoteUIRequested: answer.remoteUIRequested, websocketURLs: urls,
                nextIntervalMilliseconds: HeartbeatStateMachine.Answer.milliseconds(fromSeconds: answer.nextHeartbeatSeconds))
            self.perform(self.machine.withLockedValue { $0.received(state, jitter: jitter) })
        } catch {
            guard !Task.isCancelled else { return }  // shutting down
            self.privacy.figures.heartbeat(answered: false)
            self.logger.warning("heartbeat failed", metadata: ["error": "\(error)", "request_id": "\(id)"])
            self.failure.withLockedValue { $0 = "\(error)" }
            self.perform(self.machine.withLockedValue { $0.failed(jitter: jitter) })
        }
    }
}
