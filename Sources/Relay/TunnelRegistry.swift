import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP2
import TunnelCore

/// A connector's live tunnel on this relay node.
public struct TunnelHandle: Sendable {
    public var id: ObjectIdentifier
    public var cluster: String
    public var node: String
    public var channel: Channel
    public var multiplexer: NIOHTTP2Handler.StreamMultiplexer
    public var connectedAt: NIODeadline
    /// The tunnel's control stream: what the relay ends, the connector learns at once.
    public var control: ControlStreamHandler
    /// The Host the connector dialed (a connector keeps one tunnel per relay URL).
    public var dialedAs: String = ""
    /// What the connector announced: whether it takes websockets (extended CONNECT).
    public var peerSettings = PeerSettings()
}

/// Which tunnels are up, by cluster. Expert streams are switched into one of them.
public final class TunnelRegistry: Sendable {
    private struct State {
        var tunnels: [String: [TunnelHandle]] = [:]
        var nextPick: [String: Int] = [:]
        /// The last tunnel that went down, per cluster: what `no_tunnel` tells the engineer.
        var lastLoss: [String: Loss] = [:]
    }

    /// A tunnel that went down: which node, when, and how.
    struct Loss {
        var node: String
        var at: NIODeadline
        var how: String
    }
    private let state = NIOLockedValueBox(State())

    public init() {}

    /// Adds `tunnel`; returns the older tunnels it replaces, from the same node dialed under the
    /// same name (a connector that redialed before this node noticed its old tunnel was gone),
    /// for the caller to close.
    public func register(_ tunnel: TunnelHandle) -> [TunnelHandle] {
        self.state.withLockedValue { state in
            let replaces: (TunnelHandle) -> Bool = { $0.node == tunnel.node && $0.dialedAs == tunnel.dialedAs }
            let older = (state.tunnels[tunnel.cluster] ?? []).filter(replaces)
            state.tunnels[tunnel.cluster, default: []].removeAll(where: replaces)
            state.tunnels[tunnel.cluster, default: []].append(tunnel)
            return older
        }
    }

    /// - Parameter how: how it went down, for a person ("the connector closed it: ...").
    public func unregister(_ tunnel: TunnelHandle, how: String = "closed") {
        self.state.withLockedValue { state in
            state.tunnels[tunnel.cluster]?.removeAll { $0.id == tunnel.id }
            if state.tunnels[tunnel.cluster]?.isEmpty == true { state.tunnels[tunnel.cluster] = nil }
            state.lastLoss[tunnel.cluster] = Loss(node: tunnel.node, at: .now(), how: how)
        }
    }

    /// Why the cluster (or its node) has no tunnel here, when one was up before: for `no_tunnel`.
    public func absence(cluster: String, node: String? = nil) -> String? {
        guard let loss = self.state.withLockedValue({ $0.lastLoss[cluster] }), node == nil || loss.node == node else { return nil }
        let seconds = max(0, (NIODeadline.now() - loss.at).nanoseconds / 1_000_000_000)
        return "its last tunnel (node \(loss.node)) went down \(seconds) s ago: \(loss.how)"
    }

    /// One tunnel of the cluster (round robin over its nodes), or of the given node.
    public func pick(cluster: String, node: String? = nil) -> TunnelHandle? {
        self.state.withLockedValue { state in
            let candidates = (state.tunnels[cluster] ?? []).filter { node == nil || $0.node == node }
            guard !candidates.isEmpty else { return nil }
            let index = state.nextPick[cluster, default: 0] % candidates.count
            state.nextPick[cluster] = index + 1
            return candidates[index]
        }
    }

    public func tunnels(cluster: String) -> [TunnelHandle] {
        self.state.withLockedValue { $0.tunnels[cluster] ?? [] }
    }

    /// Tells every connector of the cluster attached here (their control streams).
    public func tell(cluster: String, _ events: [ControlEvent]) {
        guard !events.isEmpty else { return }
        for tunnel in self.tunnels(cluster: cluster) { tunnel.control.send(events) }
    }

    /// Clusters with at least one tunnel here.
    public var clusterIDs: [String] {
        self.state.withLockedValue { Array($0.tunnels.keys) }
    }

    public var count: Int {
        self.state.withLockedValue { $0.tunnels.values.reduce(0) { $0 + $1.count } }
    }
}
