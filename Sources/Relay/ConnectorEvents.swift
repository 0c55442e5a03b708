import Foundation
import RelayModel
import TunnelCore

/// What a connector says on its tunnel's control stream: the customer ended sessions. Each ends
/// only sessions of that connector's own cluster, with the customer's reason (4003); relayctl
/// prints it and exits 8.
enum ConnectorEvents {
    static func apply(_ event: ControlEvent, cluster: String, node: String, sessions: LiveSessions, registry: TunnelRegistry) {
        let reason = "ended by the customer's connector: \(event.reason)"
        let ofCluster = sessions.all.filter { $0.record.clusterID == cluster }
        let ending: [LiveSession]
        switch event.event {
        case ControlEvent.sessionEnded:
            ending = ofCluster.filter { $0.record.id == event.session }
        case ControlEvent.grantEnded:
            ending = ofCluster.filter { $0.record.requestID == event.accessRequest && $0.record.expert == event.expert }
        case ControlEvent.accessOff:
            // Sessions this node served alone: those pinned to it, or all when no other node of
            // the cluster has a tunnel here.
            let others = registry.tunnels(cluster: cluster).contains { $0.node != node }
            ending = ofCluster.filter { $0.record.node == node || !others }
        default:
            return
        }
        for session in ending { session.end(code: WireCloseCode.endedByCustomer, reason: reason) }
    }
}
