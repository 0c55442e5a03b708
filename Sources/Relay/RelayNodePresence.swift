import Foundation
import Logging
import RelayModel
import RelayStore
import NIOConcurrencyHelpers
import ServiceLifecycle

/// This node's place among the relay nodes sharing a store. Every `interval` it announces itself
/// (its tunnel URL, last seen now), reads the others and gives heartbeat answers the URL of every
/// node seen within `ttl`; a node silent for longer (killed, host lost) drops out, and its sessions
/// left open in the store are ended by the first survivor to see it. On start it ends what an
/// earlier run of itself left open; at the end of a drain it leaves, so connectors stop dialing it.
///
/// A node judges the others only once it has itself announced without a gap for `ttl`: after a
/// database outage (or its own), every node's last announcement is old, and the first node back
/// must not take the others, still serving, for gone; until then it keeps the URLs it sent before.
public struct RelayNodePresence: Service {
    let control: MissionControl
    let nodeID: String
    let tunnelURL: String
    let ttl: Duration
    let interval: Duration
    let clock: any Clock<Duration>
    let startedAt: Date
    /// What this node carries now (tunnels, sessions), announced with it for the status page.
    let load: @Sendable () -> (tunnels: Int, sessions: Int)
    private let state = NIOLockedValueBox(Continuity())

    /// Since when this node has announced itself without a gap longer than `ttl`, and the URLs it
    /// last gave heartbeat answers.
    struct Continuity {
        var since: Date?
        var lastAnnounced: Date?
        var urls: [String] = []
    }

    init(
        control: MissionControl, nodeID: String, tunnelURL: String, ttl: Duration, clock: any Clock<Duration>,
        load: @escaping @Sendable () -> (tunnels: Int, sessions: Int) = { (0, 0) }
    ) {
        self.load = load
        self.control = control
        self.nodeID = nodeID
        self.tunnelURL = tunnelURL
        self.ttl = ttl
        // Three chances within the deadline: one slow write does not make a node look gone.
        self.interval = ttl / 3
        self.clock = clock
        self.startedAt = control.now
    }

    public func run() async {
        await self.endLeftovers()
        while true {
            do {
                try await self.tick()
            } catch {
                self.control.logger.error("cannot announce this relay node or read the others; retrying", metadata: ["error": "\(error)"])
            }
            do {
                try await cancelWhenGracefulShutdown { [clock, interval] in try await clock.sleep(for: interval, tolerance: nil) }
            } catch {
                break  // graceful shutdown (or cancelled)
            }
        }
        // Drained (the listener stopped first): connectors are no longer sent this node's URL.
        do {
            try await self.control.store.removeRelayNode(id: self.nodeID, seenBefore: nil)
        } catch {
            self.control.logger.warning("cannot remove this relay node from the store; the others drop it after node_ttl", metadata: ["error": "\(error)"])
        }
    }

    /// Sessions this node's earlier run left live in the store (it stopped without ending them).
    func endLeftovers() async {
        do {
            let ended = try await self.control.store.endSessions(
                onRelayNode: self.nodeID, startedBefore: self.startedAt, unlessSeenSince: nil, at: self.control.now,
                reason: "relay node \(self.nodeID) restarted")
            await self.audit(ended)
        } catch {
            self.control.logger.error("cannot end the sessions an earlier run of this node left open", metadata: ["error": "\(error)"])
        }
    }

    func tick() async throws {
        let now = self.control.now
        let load = self.load()
        try await self.control.store.announceRelayNode(
            RelayNodeRecord(
                id: self.nodeID, tunnelURL: self.tunnelURL, startedAt: self.startedAt, lastSeenAt: now, tunnels: load.tunnels, sessions: load.sessions))
        let ttl = Double(self.ttl.components.seconds) + Double(self.ttl.components.attoseconds) / 1e18
        let continuous = self.state.withLockedValue { state -> Bool in
            if let last = state.lastAnnounced, now.timeIntervalSince(last) <= ttl, let since = state.since {
                state.lastAnnounced = now
                return now.timeIntervalSince(since) >= ttl
            }
            state.since = now  // first announcement, or one after a gap: judge no one for a while
            state.lastAnnounced = now
            return false
        }
        let nodes = try await self.control.store.relayNodes()
        let deadline = now.addingTimeInterval(-ttl)
        let live = nodes.filter { $0.id == self.nodeID || $0.lastSeenAt >= deadline }
        var urls: [String] = []
        for node in live where !urls.contains(node.tunnelURL) { urls.append(node.tunnelURL) }
        let sent = self.state.withLockedValue { state -> [String] in
            // Not yet in a position to judge: nothing sent before is taken away.
            if !continuous { for url in state.urls where !urls.contains(url) { urls.append(url) } }
            state.urls = urls
            return urls
        }
        self.control.setLiveTunnelURLs(sent)
        guard continuous else { return }
        for silent in nodes where !live.contains(where: { $0.id == silent.id }) {
            let reason = "relay node \(silent.id) stopped answering (last seen \(Timestamp.text(silent.lastSeenAt)))"
            // Checked again in the store: a node that announced itself meanwhile keeps its sessions.
            let ended = try await self.control.store.endSessions(
                onRelayNode: silent.id, startedBefore: now, unlessSeenSince: deadline, at: now, reason: reason)
            try await self.control.store.removeRelayNode(id: silent.id, seenBefore: deadline)
            self.control.logger.notice("relay node silent past node_ttl: dropped, its sessions ended", metadata: [
                "node": "\(silent.id)", "last_seen": "\(Timestamp.text(silent.lastSeenAt))", "sessions": "\(ended.count)",
            ])
            await self.audit(ended)
        }
    }

    private func audit(_ ended: [SessionRecord]) async {
        for session in ended {
            await self.control.audit(
                actor: "relay:\(self.nodeID)", "session.end", cluster: session.clusterID, subject: session.id,
                reason: "\(session.endReason ?? "ended"); expert \(session.expert), component \(session.component)")
        }
    }
}
