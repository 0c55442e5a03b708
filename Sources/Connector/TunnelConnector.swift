import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import ServiceLifecycle
import TunnelCore

/// Keeps one outbound tunnel to each wanted relay URL (the heartbeat answer says which, and when),
/// redialing with full-jitter backoff on an injected clock. The connector never listens: every tunnel
/// is a websocket it dialed. A `Service`: `run()` owns one dial loop per wanted URL and, on graceful
/// shutdown, lets requests in flight finish (bounded) before closing every tunnel with 1000.
public final class TunnelConnector: Service, Sendable {
    public let config: ConnectorConfig
    private let credential: ConnectorCredential
    private let group: EventLoopGroup
    private let logger: Logger
    private let tls: NIOSSLContext
    private let opener: ComponentOpener
    private let privacy: PrivacyGuard
    private let clock: any Clock<Duration>
    private let state = NIOLockedValueBox(State())
    /// Each tunnel's control stream (opened by the relay), by tunnel channel.
    private let controls = NIOLockedValueBox<[ObjectIdentifier: ControlStreamHandler]>([:])
    /// Called when a tunnel goes down or a dial is refused: the access may have ended, so the
    /// heartbeat driver asks the relay at once.
    private let onTunnelLost: @Sendable () -> Void
    /// URLs newly wanted, for `run()` to start their dial loops.
    private let added: AsyncStream<Wanted>
    private let addedContinuation: AsyncStream<Wanted>.Continuation

    /// One wanted relay URL: its tunnel when up, and the alarm that ends its loop.
    private final class Wanted: Sendable {
        let url: WebSocketURL
        let stop = Alarm()
        let reason = NIOLockedValueBox("no longer wanted")
        let channel = NIOLockedValueBox<Channel?>(nil)
        init(url: WebSocketURL) { self.url = url }

        /// Ends the loop; an open tunnel is closed with 1000 and `reason`.
        func end(reason: String) {
            self.reason.withLockedValue { $0 = reason }
            self.stop.ring()
            self.channel.withLockedValue { $0 }?.triggerUserOutboundEvent(WebSocketCloseRequest(code: 1000, reason: reason), promise: nil)
        }
    }

    /// A relay URL waiting to be dialed again: which attempt comes next, after how long.
    public struct Redial: Sendable, Equatable {
        public var attempt: Int
        public var delay: Duration
    }

    private struct State {
        var wanted: [String: Wanted] = [:]
        /// Each tunnel up, and when the dial that opened it began.
        var tunnels: [String: (channel: Channel, dialStarted: ContinuousClock.Instant)] = [:]
        var lastErrors: [String: String] = [:]
        var redials: [String: Redial] = [:]
        /// Set once shutdown began: nothing new is dialed.
        var stopping = false
        /// After a drop the relay did not announce (or a drain), redials spread over this window.
        var reconnectSpreadMilliseconds: Int64 = 15_000
    }

    public init(
        config: ConnectorConfig, credential: ConnectorCredential, privacy: PrivacyGuard, group: EventLoopGroup,
        clock: any Clock<Duration> = ContinuousClock(), upstreamDeadlines: Deadlines = .eventLoop, logger: Logger = Logger(label: "connector"),
        onTunnelLost: @escaping @Sendable () -> Void = {}
    ) throws {
        self.config = config
        self.credential = credential
        self.privacy = privacy
        self.group = group
        self.clock = clock
        self.logger = logger
        self.tls = try TLSFiles.clientContext(caFile: config.caFile)
        self.opener = ComponentOpener(
            pool: ComponentConnectionPool(idleTimeout: .milliseconds(config.componentIdleMilliseconds)),
            responseTimeout: .milliseconds(config.upstreamTimeoutMilliseconds), deadlines: upstreamDeadlines)
        self.onTunnelLost = onTunnelLost
        (self.added, self.addedContinuation) = AsyncStream.makeStream(of: Wanted.self)
    }

    /// Keeps exactly these tunnels: dials the missing ones, closes the others telling the relay why.
    public func keep(_ urls: [WebSocketURL], reason: String = "no longer wanted") {
        let keys = Set(urls.map(\.description))
        let (added, removed) = self.state.withLockedValue { state -> ([Wanted], [Wanted]) in
            guard !state.stopping else { return ([], []) }
            var removed: [Wanted] = []
            for (key, wanted) in state.wanted where !keys.contains(key) {
                removed.append(wanted)
                state.wanted[key] = nil
                state.lastErrors[key] = nil
                state.redials[key] = nil
            }
            var added: [Wanted] = []
            for url in urls where state.wanted[url.description] == nil {
                let wanted = Wanted(url: url)
                state.wanted[url.description] = wanted
                added.append(wanted)
            }
            return (added, removed)
        }
        for wanted in removed { wanted.end(reason: reason) }
        for wanted in added { self.addedContinuation.yield(wanted) }
    }

    /// The window the relay asks its connectors to spread their redials over (heartbeat answers).
    public var reconnectSpreadMilliseconds: Int64 {
        get { self.state.withLockedValue { $0.reconnectSpreadMilliseconds } }
        set { self.state.withLockedValue { $0.reconnectSpreadMilliseconds = max(0, newValue) } }
    }

    /// Runs the dial loops until graceful shutdown, then drains and closes every tunnel.
    public func run() async {
        await withDiscardingTaskGroup { group in
            for await wanted in self.added.cancelOnGracefulShutdown() {
                group.addTask { await self.keepDialing(wanted) }
            }
            await self.shutDown()
        }
    }

    /// No new dials; requests in flight get `drainTimeout` to finish; then every tunnel closes with
    /// 1000, so the relay knows the connector stopped on purpose.
    private func shutDown() async {
        let all = self.state.withLockedValue { state -> [Wanted] in
            state.stopping = true
            return Array(state.wanted.values)
        }
        for wanted in all { wanted.stop.ring() }
        let bound = Duration.milliseconds(self.config.drainMilliseconds)
        if !(await self.privacy.streamsFinished(within: bound, on: self.clock)) {
            self.logger.warning("requests still running at shutdown are cut", metadata: ["waited": "\(bound)"])
        }
        let channels = self.state.withLockedValue { $0.tunnels.values.map(\.channel) }
        for wanted in all { wanted.end(reason: "the connector is shutting down") }
        for channel in channels { try? await channel.closeFuture.get() }
    }

    /// Tells the relay, on every tunnel's control stream, what the customer's side ended.
    public func tellRelay(_ events: [ControlEvent]) {
        for control in self.controls.withLockedValue({ Array($0.values) }) { control.send(events) }
    }

    /// Relay URLs with a tunnel up right now.
    public var connectedURLs: [String] {
        self.state.withLockedValue { Array($0.tunnels.keys).sorted() }
    }

    /// Relay URLs this connector keeps a tunnel to, or redials (none: nothing will be dialed).
    public var wantedURLs: [String] {
        self.state.withLockedValue { Array($0.wanted.keys).sorted() }
    }

    /// When the dial that opened each tunnel up now began: on a machine too busy to finish
    /// handshakes at once, the moments a fleet's reconnects were spread over (for tests and figures).
    public var dialStarted: [String: ContinuousClock.Instant] {
        self.state.withLockedValue { $0.tunnels.mapValues(\.dialStarted) }
    }

    /// Relay URLs waiting to be dialed again, and when (for status output and tests).
    public var redials: [String: Redial] {
        self.state.withLockedValue { $0.redials }
    }

    /// The last dial error per relay URL (for status output and tests).
    public var lastErrors: [String: String] {
        self.state.withLockedValue { $0.lastErrors }
    }

    /// One relay URL's loop: dial, hold the tunnel until it closes, wait out the backoff, again;
    /// until the URL is no longer wanted or the connector stops.
    private func keepDialing(_ wanted: Wanted) async {
        let url = wanted.url
        var backoff = Backoff(policy: self.config.backoff)
        while !wanted.stop.hasRung {
            do {
                let dialed = ContinuousClock.now
                let (channel, peerClose) = try await self.dial(url)
                let attached = wanted.channel.withLockedValue { slot -> Bool in
                    guard !wanted.stop.hasRung else { return false }
                    slot = channel
                    return true
                }
                guard attached else {
                    channel.triggerUserOutboundEvent(WebSocketCloseRequest(code: 1000, reason: wanted.reason.withLockedValue { $0 }), promise: nil)
                    return
                }
                let upFor = Self.stopwatch(self.clock)  // started before the tunnel shows as up
                self.state.withLockedValue { state in
                    state.tunnels[url.description] = (channel, dialed)
                    state.lastErrors[url.description] = nil
                    state.redials[url.description] = nil
                }
                self.logger.info("tunnel up", metadata: ["relay": "\(url)"])
                self.privacy.figures.tunnelOpened()
                try? await channel.closeFuture.get()
                let up = upFor()
                wanted.channel.withLockedValue { $0 = nil }
                self.state.withLockedValue { state in
                    if state.tunnels[url.description]?.channel === channel { state.tunnels[url.description] = nil }
                }
                self.logger.info("tunnel down", metadata: ["relay": "\(url)", "up": "\(up)"])
                guard !wanted.stop.hasRung else { return }
                backoff.tunnelClosed(afterMilliseconds: up.milliseconds)
                if Self.relayWentAway(peerClose.withLockedValue { $0 }) {
                    backoff.spread(overMilliseconds: self.reconnectSpreadMilliseconds)
                }
                self.onTunnelLost()
            } catch {
                guard !wanted.stop.hasRung else { return }
                self.state.withLockedValue { $0.lastErrors[url.description] = "\(error)" }
                self.logger.warning("cannot open tunnel", metadata: ["relay": "\(url)", "error": "\(error)"])
                if let dial = error as? DialError, case .rejected = dial.kind { self.onTunnelLost() }
            }
            let delay = Duration.milliseconds(backoff.next())
            self.state.withLockedValue { $0.redials[url.description] = Redial(attempt: backoff.attempts, delay: delay) }
            _ = await wanted.stop.sleep(for: delay, on: self.clock)
        }
    }

    /// The relay node went away with its connectors, not this tunnel alone: it vanished (no close
    /// frame: killed, or the network between dropped) or drained (1012, or 1001 from older
    /// relays). A 4xxx close or a plain 1000 concerns this tunnel only.
    static func relayWentAway(_ close: WebSocketPeerClosed?) -> Bool {
        guard let close else { return true }
        return close.code == .unknown(WireCloseCode.relayDraining) || close.code == .goingAway
    }

    /// Time on `clock` from now until the returned closure is called.
    private static func stopwatch<C: Clock<Duration>>(_ clock: C) -> @Sendable () -> Duration {
        let start = clock.now
        return { start.duration(to: clock.now) }
    }

    /// One websocket dial to `url`, with the tunnel's streams set up: each decided and audited by
    /// the customer's `PrivacyGuard`.
    /// Also returns where the relay's close frame lands (nil while none came).
    private func dial(_ url: WebSocketURL) async throws -> (Channel, NIOLockedValueBox<WebSocketPeerClosed?>) {
        var headers = HTTPHeaders()
        headers.add(name: "authorization", value: "Bearer \(self.credential.credential)")
        headers.add(name: WireHeader.cluster, value: self.credential.clusterID)
        headers.add(name: WireHeader.node, value: self.credential.nodeID)
        let limits = self.config.limits
        let opener = self.opener
        let privacy = self.privacy
        let logger = self.logger
        let controls = self.controls
        let peerClose = NIOLockedValueBox<WebSocketPeerClosed?>(nil)
        let channel = try await WebSocketDialer.dial(url: url, headers: headers, tls: self.tls, limits: limits, group: self.group, proxy: self.config.proxy) { channel in
            let tunnelID = ObjectIdentifier(channel)
            channel.closeFuture.whenComplete { _ in _ = controls.withLockedValue { $0.removeValue(forKey: tunnelID) } }
            // The relay's control stream: what it ends (sessions, requests), this connector records
            // at once. Only the tunnel's first stream, once: any other (an expert's request that got
            // the header through, a relay that misbehaves) is reset.
            let openControl: @Sendable (ControlStreamHandler, Channel) -> Bool = { handler, stream in
                guard (try? stream.syncOptions?.getOption(HTTP2StreamChannelOptions.streamID)) == HTTP2StreamID(1) else { return false }
                return controls.withLockedValue { controls in
                    guard controls[tunnelID] == nil else { return false }
                    controls[tunnelID] = handler
                    return true
                }
            }
            let controlClosed: @Sendable (ControlStreamHandler) -> Void = { handler in
                controls.withLockedValue { if $0[tunnelID] === handler { $0[tunnelID] = nil } }
                logger.warning("the relay's control stream closed; session ends are no longer pushed on this tunnel")
            }
            return try TunnelPipeline.configure(
                channel: channel, websocketRole: .client, http2Mode: .server, link: .tunnel, limits: limits, logger: logger,
                onPeerClosed: { close in peerClose.withLockedValue { $0 = close } },
                onGoAway: { logger.notice("the relay node is draining this tunnel; requests in flight finish, then it redials", metadata: ["relay": "\(url)"]) }
            ) { stream in
                stream.eventLoop.makeCompletedFuture {
                    // Every request is decided and audited by the customer's PrivacyGuard.
                    let ticket = privacy.ticket(for: stream)
                    try stream.pipeline.syncOperations.addHandlers([
                        ControlStreamHandler(role: .answerer(onOpen: { openControl($0, stream) }), loop: stream.eventLoop, onClosed: controlClosed) {
                            privacy.relaySaid($0)
                        },
                        ExtendedConnectServerAdapter(),
                        HTTP2FramePayloadToHTTP1ServerCodec(),
                        ProxyServerHandler(
                            opener: { privacy.open($0, $1, ticket: ticket, opener: opener) },
                            // A response head larger than the tunnel and the session carry would
                            // fail the whole tunnel: 502 for that request instead.
                            limits: .init(responseHeaders: .session(limits), drainLimit: limits.refusedBodyDrainLimit),
                            onComplete: { record in
                                privacy.completed(record, ticket: ticket)
                                logger.debug(
                                    "request",
                                    metadata: [
                                        "expert": "\(record.head.headers.first(name: WireHeader.expert) ?? "-")",
                                        "component": "\(record.head.headers.first(name: WireHeader.component) ?? "-")",
                                        "method": "\(record.head.method)", "status": "\(record.status.map(String.init) ?? "-")",
                                        "session": "\(record.head.headers.first(name: WireHeader.session) ?? "-")",
                                        "request_id": "\(record.requestID ?? "-")", "refused": "\(record.refusalCode ?? "-")",
                                    ])
                            },
                            responseEndGate: { privacy.commit($0, ticket: ticket) },
                            onBodyBytes: { ticket.activity?.touch() }),
                    ])
                }
            }
        }.get().0
        return (channel, peerClose)
    }
}

extension Duration {
    /// Whole milliseconds (rounded down).
    var milliseconds: Int64 {
        self.components.seconds * 1000 + self.components.attoseconds / 1_000_000_000_000_000
    }
}
