import Foundation
import NIOCore
import RelayModel
import TunnelCore

/// What a connector says on its tunnel's control stream: the customer ended sessions. Each ends
/// only sessions of that connector's own cluster, with the customer's reason (4003); relayctl
/// prints it and exits 8. A grant the customer ended (kill, limit, revocation) ends its access
/// request here too, so that the engineer's next session is not opened under it again.
enum ConnectorEvents {
    static func apply(
        _ event: ControlEvent, cluster: String, node: String, sessions: LiveSessions, registry: TunnelRegistry, control: MissionControl,
        tasks: OwnedTasks, loop: EventLoop
    ) {
        // A connector's words, shown to an engineer and stored: cut to a sensible length.
        let said = String(event.reason.prefix(500))
        let reason = "ended by the customer's connector: \(said)"
        let ofCluster = sessions.all.filter { $0.record.clusterID == cluster }
        let ending: [LiveSession]
        switch event.event {
        case ControlEvent.sessionEnded:
            ending = ofCluster.filter { $0.record.id == event.session }
        case ControlEvent.grantEnded:
            ending = ofCluster.filter { $0.record.requestID == event.accessRequest && $0.record.expert == event.expert }
            if let request = event.accessRequest, let expert = event.expert {
                let by = event.by.map { String($0.prefix(64)) }
                _ = tasks.submit(on: loop) {
                    await control.customerEnded(request: request, expert: expert, cluster: cluster, node: node, by: by, reason: said)
                }
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
