import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import RelayModel
import RelayStore
import ServiceLifecycle
import TunnelCore

/// Every `interval`, on every relay node: expires requests past their window, closes tunnels of
/// clusters whose flag went away and sessions whose request ended, whose token was revoked or that an
/// operator killed, each with a reason the engineer sees. Also saves live sessions' counts.
/// Polling the shared store keeps this correct with several relay nodes whatever messages are lost;
/// a change made on this node, or announced by another through the store, wakes it at once.
public struct AccessReconciler: Service {
    let control: MissionControl
    let registry: TunnelRegistry
    let sessions: LiveSessions
    let interval: Duration
    let clock: any Clock<Duration>
    /// Per cluster with tunnels here: the access requests that were in force at the last tick.
    private let inForce = NIOLockedValueBox<[String: Set<Int64>]>([:])
    /// One per interval, and one whenever this node changes access (`MissionControl.onReconcileNeeded`).
    private let wakeups: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation

    init(control: MissionControl, registry: TunnelRegistry, sessions: LiveSessions, interval: Duration, clock: any Clock<Duration>) {
        self.control = control
        self.registry = registry
        self.sessions = sessions
        self.interval = interval
        self.clock = clock
        (self.wakeups, self.wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        control.onReconcileNeeded { [wake] in wake.yield() }
    }

    /// Ticks every `interval` on the clock, and at once when this node changes access, until
    /// graceful shutdown. One consumer runs the ticks, so they never overlap; wake-ups during a
    /// tick fold into one more.
    public func run() async {
        await withDiscardingTaskGroup { group in
            group.addTask { [clock, interval, wake] in
                while (try? await clock.sleep(for: interval, tolerance: nil)) != nil { wake.yield() }
            }
            // Another relay node changed access (PostgreSQL NOTIFY): look now, not at the next tick.
            group.addTask { [changes = self.control.store.accessChanges(), wake] in
                for await _ in changes { wake.yield() }
            }
            for await _ in self.wakeups.cancelOnGracefulShutdown() {
                do {
                    try await self.tick()
                } catch is CancellationError {
                    break  // the relay is stopping
                } catch is StoreUnavailable {
                    continue  // the store said so once, when it found the database gone; ticks go on
                } catch {
                    self.control.logger.error("reconcile failed", metadata: ["error": "\(error)"])
                }
            }
            group.cancelAll()
        }
    }

    func tick() async throws {
        try await self.control.auditHousekeeping()
        // Never in the way of expiry and revocation: a failed flush is retried on the next tick.
        do {
            try await self.control.flushLiveness()
            try await self.control.flushUnwritten()
        } catch is StoreUnavailable {
            // Said once by the store; what is kept is written once it answers.
        } catch {
            self.control.logger.error("cannot write what is kept in memory (heartbeats, records); retrying next tick", metadata: ["error": "\(error)"])
        }
        // One instant for the whole tick: what expires and what is closed for it agree.
        let now = self.control.now
        _ = try await self.control.expireDue(now: now)
        let clusters = self.registry.clusterIDs
        for cluster in clusters {
            // Tunnels accepted after this read were allowed by a newer one (a request created
            // meanwhile): they are left to the next tick, which reads again.
            let readAt = NIODeadline.now()
            let approved = try await self.control.store.requests(clusterID: cluster, states: [.approved])
            // The connectors learn at once which requests ended (and why), before any tunnel closes.
            self.registry.tell(cluster: cluster, try await self.requestsEnded(cluster: cluster, approved: approved, now: now))
            guard !AccessPolicy.flag(requests: approved, now: now) else { continue }
            let reason = try await self.control.accessEndReason(cluster: cluster)
            for tunnel in self.registry.tunnels(cluster: cluster) where tunnel.connectedAt < readAt {
                self.control.logger.info("closing tunnel", metadata: ["cluster": "\(cluster)", "node": "\(tunnel.node)", "reason": "\(reason)"])
                await self.control.audit(actor: "relay", "tunnel.close", cluster: cluster, subject: tunnel.node, reason: reason)
                tunnel.channel.triggerUserOutboundEvent(WebSocketCloseRequest(code: WireCloseCode.accessEnded, reason: reason), promise: nil)
            }
        }
        self.inForce.withLockedValue { seen in seen = seen.filter { clusters.contains($0.key) } }
        let live = self.sessions.all
        guard !live.isEmpty else { return }
        let tokens = Dictionary(try await self.control.store.tokens().map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        for session in live {
            let record = session.record
            let request = try await self.control.store.request(id: record.requestID)
            if let reason = AccessPolicy.endReason(of: request, now: now) {
                session.end(code: WireCloseCode.accessEnded, reason: reason)
            } else if let token = tokens[record.expert], !token.isValid(at: now) {
                let reason = token.revokedAt != nil ? "token \"\(token.name)\" was revoked by \(token.revokedBy ?? "an operator")" : "token \"\(token.name)\" expired"
                session.end(code: WireCloseCode.sessionKilled, reason: reason)
            } else {
                let stored = try await self.control.store.session(id: record.id)
                if let by = stored?.killRequestedBy {
                    session.end(code: WireCloseCode.sessionKilled, reason: "session killed by \(by)")
                } else if let stored, stored.endedAt != nil {
                    // Ended in the store by another node (this one was taken for gone): the record
                    // is final, so the session goes too rather than run on unrecorded.
                    session.end(code: WireCloseCode.sessionKilled, reason: stored.endReason ?? "ended by another relay node")
                } else {
                    try await self.control.store.updateSession(record)
                }
            }
        }
    }
}

extension AccessReconciler {
    /// Requests in force at the last tick that are not now: revoked, expired or rejected.
    private func requestsEnded(cluster: String, approved: [AccessRequestRecord], now: Date) async throws -> [ControlEvent] {
        let current = Set(approved.filter { $0.isActive(at: now) }.map(\.id))
        let gone = self.inForce.withLockedValue { ($0[cluster] ?? []).subtracting(current) }
        var events: [ControlEvent] = []
        for id in gone.sorted() {
            guard let request = try await self.control.store.request(id: id), request.state.isFinal else { continue }
            events.append(
                ControlEvent(
                    event: ControlEvent.requestEnded, accessRequest: id, expert: request.expert, state: request.state.rawValue,
                    reason: AccessPolicy.endReason(of: request, now: now) ?? "request \(id) \(request.state.rawValue)"))
        }
        // Only once every lookup worked: a failed tick tells the connectors on the next one.
        self.inForce.withLockedValue { $0[cluster] = current }
        return events
    }
}

extension MissionControl {
    /// Why the cluster has no access now, naming the request that ended last.
    func accessEndReason(cluster: String) async throws -> String {
        let ended = try await self.store.requests(clusterID: cluster, states: [.expired, .revoked, .rejected])
        guard let latest = ended.max(by: { $0.changedAt < $1.changedAt }) else { return "no approved access request" }
        return AccessPolicy.endReason(of: latest, now: self.now) ?? "no approved access request"
    }
}
