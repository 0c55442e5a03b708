import NIOCore
import NIOHTTP1
import NIOPosix
import TunnelCore

/// The engineer's local HTTP/1.1 port (loopback by default): a browser or curl uses it unchanged;
/// every request is carried to the cluster component through the relay.
public final class LocalListener: Sendable {
    public let channel: Channel

    private init(channel: Channel) { self.channel = channel }

    public static func start(
        host: String, port: Int, session: SessionClient, group: EventLoopGroup,
        onComplete: (@Sendable (ProxyExchangeRecord) -> Void)? = nil
    ) async throws -> LocalListener {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    let rewriter = LocalHostRewriter(component: session.target.component)
                    try channel.pipeline.syncOperations.addHandler(rewriter)
                    try channel.pipeline.syncOperations.addHandler(LocalWebSocketBridge(httpOnly: [rewriter]))
                    try channel.pipeline.syncOperations.addHandler(
                        ProxyServerHandler(
                            opener: session.open,
                            limits: .init(
                                requestHeaders: .sessionRequest(session.target.limits), requestTrailers: .session(session.target.limits),
                                drainLimit: session.target.limits.refusedBodyDrainLimit),
                            onComplete: onComplete))
                }
            }
            .bind(host: host, port: port)
            .get()
        return LocalListener(channel: channel)
    }

    public var localAddress: SocketAddress? { self.channel.localAddress }

    /// The URL to open in a browser.
    public var url: String {
        guard let address = self.channel.localAddress, let port = address.port else { return "http://?" }
        let host = address.ipAddress ?? "127.0.0.1"
        return host.contains(":") ? "http://[\(host)]:\(port)/" : "http://\(host):\(port)/"
    }

    public func close() async throws {
        try await self.channel.close()
    }
}

/// A browser names this listener in `Host` (`127.0.0.1:PORT`, `localhost:PORT`, `[::1]`, with or without the port); the connector only
/// accepts a Host naming the component, so that one is rewritten to the component's name. Any
/// other Host goes on unchanged, for the connector to refuse.
final class LocalHostRewriter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    let component: String

    init(component: String) { self.component = component }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(var head) = self.unwrapInboundIn(data), let port = context.channel.localAddress?.port else {
            context.fireChannelRead(data)
            return
        }
        let own = ["127.0.0.1", "localhost", "[::1]"].flatMap { [$0, "\($0):\(port)"] }
        let hosts = head.headers["host"]
        if hosts.count == 1, own.contains(hosts[0].lowercased()) {
            head.headers.replaceOrAdd(name: "host", value: self.component)
        }
        context.fireChannelRead(self.wrapInboundOut(.head(head)))
    }
}
