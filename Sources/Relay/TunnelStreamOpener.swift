import Logging
import NIOCore
import NIOHTTP1
import NIOHTTP2
import TunnelCore

/// The authenticated expert session one websocket connection carries.
public struct SessionIdentity: Sendable {
    public var id: String
    public var expert: String
    public var cluster: String
    public var component: String
    public var node: String?

    var metadata: Logger.Metadata {
        ["session": "\(self.id)", "expert": "\(self.expert)", "cluster": "\(self.cluster)", "component": "\(self.component)"]
    }

    func metadata(_ record: ProxyExchangeRecord) -> Logger.Metadata {
        var metadata = self.metadata
        metadata["method"] = "\(record.head.method)"
        metadata["status"] = "\(record.status.map(String.init) ?? "-")"
        metadata["bytes_in"] = "\(record.requestBodyBytes)"
        metadata["bytes_out"] = "\(record.responseBodyBytes)"
        return metadata
    }
}

/// Switches one expert request into a new HTTP/2 stream of the cluster's tunnel, stamped with the
/// identity headers the connector decides and audits on. Anything the expert sent under those
/// names is dropped first.
struct TunnelStreamOpener: Sendable {
    let session: SessionIdentity
    let registry: TunnelRegistry

    func open(_ head: HTTPRequestHead, _ upstream: ProxyUpstreamHandler) -> EventLoopFuture<HTTPRequestHead> {
        guard let tunnel = self.registry.pick(cluster: self.session.cluster, node: self.session.node) else {
            let target = self.session.node.map { "node \"\($0)\" of cluster \"\(self.session.cluster)\"" }
                ?? "cluster \"\(self.session.cluster)\""
            return upstream.downstreamEventLoop.makeFailedFuture(
                ProxyRefusal(
                    .serviceUnavailable, code: "no_tunnel",
                    message: "\(target) has no connector connected to this relay; wait for it to dial in and retry"))
        }
        var head = head
        head.headers.removeRelayOwned()
        head.headers.add(name: WireHeader.component, value: self.session.component)
        head.headers.add(name: WireHeader.expert, value: self.session.expert)
        head.headers.add(name: WireHeader.session, value: self.session.id)
        head.headers.add(name: WireHeader.requestID, value: randomIdentifier())
        let cluster = self.session.cluster
        let loop = tunnel.channel.eventLoop
        return loop.flatSubmit {
            TunnelPipeline.openRequestStream(on: tunnel.multiplexer, loop: loop, upstream: upstream).map { head }
        }.flatMapErrorThrowing { error in
            throw ProxyRefusal.badGateway("the tunnel to cluster \"\(cluster)\" failed: \(error)")
        }
    }
}
