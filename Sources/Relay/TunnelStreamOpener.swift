import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTP2
import RelayModel
import TunnelCore

extension SessionRecord {
    var metadata: Logger.Metadata {
        ["session": "\(self.id)", "expert": "\(self.expert)", "cluster": "\(self.clusterID)", "component": "\(self.component)"]
    }
}

/// Switches one expert request into a new HTTP/2 stream of the cluster's tunnel, stamped with the
/// identity headers the connector decides and audits on. Anything the expert sent under those
/// names is dropped first.
struct TunnelStreamOpener: Sendable {
    let session: SessionRecord
    /// When the session's access request expires: stamped so the connector can check it too.
    let accessExpiresAt: Date
    let registry: TunnelRegistry
    /// The IP address the expert's session came from, if known.
    let clientAddress: String?
    /// What the tunnel carries in one head; a larger one would fail the whole tunnel.
    let headerBudget: HeaderBudget

    func open(_ head: HTTPRequestHead, _ upstream: ProxyUpstreamHandler) -> EventLoopFuture<HTTPRequestHead> {
        guard let tunnel = self.registry.pick(cluster: self.session.clusterID, node: self.session.node) else {
            let target = self.session.node.map { "node \"\($0)\" of cluster \"\(self.session.clusterID)\"" }
                ?? "cluster \"\(self.session.clusterID)\""
            return upstream.downstreamEventLoop.makeFailedFuture(
                ProxyRefusal(.noTunnel, "\(target) has no connector connected to this relay"
                        + (self.registry.absence(cluster: self.session.clusterID, node: self.session.node).map { "; \($0)" } ?? "")
                        + "; wait for it to dial in and retry"))
        }
        var head = head
        head.headers.removeRelayOwned()
        head.headers.add(name: WireHeader.component, value: self.session.component)
        head.headers.add(name: WireHeader.expert, value: self.session.expert)
        head.headers.add(name: WireHeader.session, value: self.session.id)
        head.headers.add(name: WireHeader.role, value: self.session.role.rawValue)
        head.headers.add(name: WireHeader.accessRequest, value: String(self.session.requestID))
        head.headers.add(name: WireHeader.accessExpires, value: String(Int64(self.accessExpiresAt.timeIntervalSince1970)))
        head.headers.add(name: WireHeader.requestID, value: randomIdentifier())
        if let address = self.clientAddress { head.headers.add(name: WireHeader.clientAddress, value: address) }
        guard self.headerBudget.admits(head.headers, pseudoBytes: head.uri.utf8.count) else {
            return upstream.downstreamEventLoop.makeFailedFuture(ProxyRefusal.requestHeadersTooLarge(self.headerBudget))
        }
        let cluster = self.session.clusterID
        upstream.nextHop = "the tunnel to cluster \"\(cluster)\" (node \(tunnel.node))"
        let loop = tunnel.channel.eventLoop
        // A websocket waits until the connector has said it takes extended CONNECT (its first
        // SETTINGS, long in by the time an engineer opens one); an older connector does not.
        let ready = head.opensWebSocket ? tunnel.peerSettings.extendedConnect(on: loop) : loop.makeSucceededFuture(.supported)
        return ready.flatMap { answer in
            if let refusal = PeerSettings.refusal(answer, peer: "the connector on node \(tunnel.node) of cluster \"\(cluster)\"") {
                return loop.makeFailedFuture(refusal)
            }
            return TunnelPipeline.openRequestStream(on: tunnel.multiplexer, loop: loop, upstream: upstream).map { head }.flatMapErrorThrowing { error in
                throw ProxyRefusal.badGateway("the tunnel to cluster \"\(cluster)\" failed: \(error)")
            }
        }
    }
}
