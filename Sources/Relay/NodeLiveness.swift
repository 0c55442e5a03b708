import Foundation
import RelayModel

/// Heartbeats' time and health not written yet. A heartbeat whose other fields (mode, settings,
/// version, the flag it was told) and its cluster's mode equal what the store holds (read with the
/// heartbeat, so another relay node's writes count) changes only the time and the node's health,
/// which differs on nearly every beat: those are kept here and written behind, for all nodes in one
/// transaction per flush. Pure: no clock, no I/O.
struct NodeLiveness {
    struct Key: Hashable {
        var cluster: String
        var node: String
    }

    private var kept: [Key: NodeRecord] = [:]
    private var unwritten: Set<Key> = []
    /// Each cluster's latest heartbeat kept here (any node).
    private var clusterLatest: [String: Date] = [:]

    /// Whether `heartbeat` changes only the time and the health of `stored`, the node's row, given
    /// `clusterMode`, the mode the store holds for its cluster.
    static func changesOnlyLiveness(_ heartbeat: NodeRecord, stored: NodeRecord?, clusterMode: PrivacyMode?) -> Bool {
        guard let stored else { return false }
        return stored.sourceType == heartbeat.sourceType && stored.connectorVersion == heartbeat.connectorVersion
            && stored.privacyMode == heartbeat.privacyMode && stored.privacyJSON == heartbeat.privacyJSON
            && stored.remoteUIRequested == heartbeat.remoteUIRequested && clusterMode == heartbeat.privacyMode
    }

    /// Keeps the heartbeat's time and health for the next flush (the newest wins).
    mutating func keep(_ node: NodeRecord) {
        let key = Key(cluster: node.clusterID, node: node.nodeID)
        if let known = self.kept[key], known.lastHeartbeatAt > node.lastHeartbeatAt { return }
        self.kept[key] = node
        self.unwritten.insert(key)
        self.clusterLatest[node.clusterID] = max(self.clusterLatest[node.clusterID] ?? .distantPast, node.lastHeartbeatAt)
    }

    /// `node` was written whole (time and health included): nothing older is left to write.
    mutating func written(_ node: NodeRecord) {
        let key = Key(cluster: node.clusterID, node: node.nodeID)
        if let known = self.kept[key], known.lastHeartbeatAt > node.lastHeartbeatAt { return }  // a newer beat is still kept
        self.kept[key] = nil
        self.unwritten.remove(key)
    }

    /// The records whose time and health are newer than the store's; they count as written until
    /// `unflushed` gives them back.
    mutating func takeUnwritten() -> [NodeRecord] {
        defer { self.unwritten.removeAll() }
        return self.unwritten.compactMap { self.kept[$0] }
    }

    /// A flush failed: these go out with the next one.
    mutating func unflushed(_ records: [NodeRecord]) {
        for record in records { self.unwritten.insert(Key(cluster: record.clusterID, node: record.nodeID)) }
    }

    /// Nodes as read from the store, with the time and health of heartbeats not written yet.
    func overlay(_ nodes: [NodeRecord]) -> [NodeRecord] {
        nodes.map { node in
            guard let kept = self.kept[Key(cluster: node.clusterID, node: node.nodeID)], kept.lastHeartbeatAt > node.lastHeartbeatAt
            else { return node }
            var fresh = node
            fresh.lastHeartbeatAt = kept.lastHeartbeatAt
            fresh.healthJSON = kept.healthJSON
            return fresh
        }
    }

    /// A cluster as read from the store, with its latest heartbeat not written yet.
    func overlay(_ cluster: ClusterRecord) -> ClusterRecord {
        guard let latest = self.clusterLatest[cluster.id], latest > (cluster.lastHeartbeatAt ?? .distantPast) else { return cluster }
        var fresh = cluster
        fresh.lastHeartbeatAt = latest
        return fresh
    }
}
