import Foundation
import Logging
import RelayModel
import TunnelCore

/// Every `interval`, on every relay node: expires requests past their window, closes tunnels of
/// clusters whose flag went away and sessions whose request ended, whose token was revoked or that an
/// operator killed, each with a reason the engineer sees. Also saves live sessions' counts.
/// Polling the shared store (rather than messaging nodes) keeps this correct with several relay nodes.
struct AccessReconciler: Sendable {
    let control: MissionControl
    let registry: TunnelRegistry
    let sessions: LiveSessions

    func run(every interval: Duration) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            do {
                try await self.tick()
            } catch {
                self.control.logger.error("reconcile failed", metadata: ["error": "\(error)"])
            }
        }
    }

    func tick() async throws {
        try await self.control.auditHousekeeping()
        // One instant for the whole tick: what expires and what is closed for it agree.
        let now = self.control.now
        _ = try await self.control.expireDue(now: now)
        for cluster in self.registry.clusterIDs where try await !self.control.flag(cluster: cluster) {
            let reason = try await self.control.accessEndReason(cluster: cluster)
            for tunnel in self.registry.tunnels(cluster: cluster) {
                self.control.logger.info("closing tunnel", metadata: ["cluster": "\(cluster)", "node": "\(tunnel.node)", "reason": "\(reason)"])
                await self.control.audit(actor: "relay", "tunnel.close", cluster: cluster, subject: tunnel.node, reason: reason)
                tunnel.channel.triggerUserOutboundEvent(WebSocketCloseRequest(code: WireCloseCode.accessEnded, reason: reason), promise: nil)
            }
        }
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
            } else if let stored = try await self.control.store.session(id: record.id), let by = stored.killRequestedBy {
                session.end(code: WireCloseCode.sessionKilled, reason: "session killed by \(by)")
            } else {
                try await self.control.store.updateSession(record)
            }
        }
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
