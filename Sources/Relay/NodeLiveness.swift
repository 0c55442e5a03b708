import Foundation
import RelayModel

/// What the relay knows of each node's last heartbeat, so that a heartbeat which changes nothing
/// but the time (and the node's health figures, which differ on nearly every beat) costs no write:
/// those are kept here and written behind in one transaction per flush. A heartbeat that changes
/// anything else (mode, settings, version, the flag it was told), and a node's first heartbeat
/// since the relay started, is written at once as before. Pure: no clock, no I/O.
struct NodeLiveness {
    struct Key: Hashable {
        var cluster: String
        var node: String
    }

    enum Beat: Equatable {
        /// Only time and health changed: kept here, written at the next flush. Carries the node's
        /// record before this beat.
        case kept(previous: NodeRecord)
        /// Something else changed, or the node is not known yet: write it now.
        case write
    }

    private var known: [Key: NodeRecord] = [:]
    /// The mode last written for each cluster (the store keeps the last reporting node's mode).
    private var clusterModes: [String: PrivacyMode] = [:]
    private var unwritten: Set<Key> = []
    /// Each cluster's latest heartbeat seen (any node).
    private var clusterLatest: [String: Date] = [:]

    /// A heartbeat arrived, recorded as `node`.
    mutating func beat(_ node: NodeRecord) -> Beat {
        let key = Key(cluster: node.clusterID, node: node.nodeID)
        guard let previous = self.known[key], Self.sameButTime(previous, node),
            self.clusterModes[node.clusterID] == node.privacyMode
        else { return .write }
        var updated = node
        updated.registeredAt = previous.registeredAt
        self.known[key] = updated
        self.unwritten.insert(key)
        self.clusterLatest[node.clusterID] = max(self.clusterLatest[node.clusterID] ?? .distantPast, node.lastHeartbeatAt)
        return .kept(previous: previous)
    }

    /// `node` is in the store now (written whole, time and health included).
    mutating func stored(_ node: NodeRecord, registeredAt: Date) {
        let key = Key(cluster: node.clusterID, node: node.nodeID)
        var record = node
        record.registeredAt = registeredAt
        if let kept = self.known[key], kept.lastHeartbeatAt > node.lastHeartbeatAt {
            record.lastHeartbeatAt = kept.lastHeartbeatAt
            record.healthJSON = kept.healthJSON
        } else {
            self.unwritten.remove(key)
        }
        self.known[key] = record
        self.clusterModes[node.clusterID] = node.privacyMode
        self.clusterLatest[node.clusterID] = max(self.clusterLatest[node.clusterID] ?? .distantPast, record.lastHeartbeatAt)
    }

    /// A write failed: nothing is assumed about the node's row until it is written again.
    mutating func forget(cluster: String, node: String) {
        let key = Key(cluster: cluster, node: node)
        self.known[key] = nil
        self.unwritten.remove(key)
        self.clusterModes[cluster] = nil
    }

    /// The records whose time and health are newer than the store's; they count as written until
    /// `unflushed` gives them back.
    mutating func takeUnwritten() -> [NodeRecord] {
        defer { self.unwritten.removeAll() }
        return self.unwritten.compactMap { self.known[$0] }
    }

    /// A flush failed: these go out with the next one.
    mutating func unflushed(_ records: [NodeRecord]) {
        for record in records { self.unwritten.insert(Key(cluster: record.clusterID, node: record.nodeID)) }
    }

    /// Nodes as read from the store, with the time and health of heartbeats not written yet.
    func overlay(_ nodes: [NodeRecord]) -> [NodeRecord] {
        nodes.map { node in
            guard let kept = self.known[Key(cluster: node.clusterID, node: node.nodeID)], kept.lastHeartbeatAt > node.lastHeartbeatAt
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

    private static func sameButTime(_ a: NodeRecord, _ b: NodeRecord) -> Bool {
        a.sourceType == b.sourceType && a.connectorVersion == b.connectorVersion && a.privacyMode == b.privacyMode
            && a.privacyJSON == b.privacyJSON && a.remoteUIRequested == b.remoteUIRequested
    }
}
