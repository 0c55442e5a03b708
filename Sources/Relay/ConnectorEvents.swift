import Foundation
import RelayModel
import TunnelCore

/// What a connector says on its tunnel's control stream: the customer ended sessions. Each ends
/// only sessions of that connector's own cluster, with the customer's reason (4003); relayctl
/// prints it and exits 8. A grant the customer ended (kill, limit, revocation) ends its access
/// request here too, so that the engineer's next session is not opened under it again.
enum ConnectorEvents {
    static func apply(
        _ event: ControlEvent, cluster: String, node: String, sessions: LiveSessions, registry: TunnelRegistry, control: MissionControl
    ) {
        let reason = "ended by the customer's connector: \(event.reason)"
        let ofCluster = sessions.all.filter { $0.record.clusterID == cluster }
        let ending: [LiveSession]
        switch event.event {
        case ControlEvent.sessionEnded:
            ending = ofCluster.filter { $0.record.id == event.session }
        case ControlEvent.grantEnded:
            ending = ofCluster.filter { $0.record.requestID == event.accessRequest && $0.record.expert == event.expert }
            if let request = event.accessRequest, let expert = event.expert {
                Task { await control.customerEnded(request: request, expert: expert, cluster: cluster, node: node, by: event.by, reason: event.reason) }
            }
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
