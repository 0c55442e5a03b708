import NIOCore
import NIOHTTP1
import NIOPosix
import TunnelCore

/// The engineer's local HTTP/1.1 port (loopback by default): a browser or curl uses it unchanged;
/// every request is carried to a cluster component through the relay, chosen by the host name
/// the request names (`LocalAccess`).
public final class LocalListener: Sendable {
    public let channel: Channel
    public let access: LocalAccess

    private init(channel: Channel, access: LocalAccess) {
        self.channel = channel
        self.access = access
    }

    /// One port for every component of `sessions` (one session each, all of one cluster).
    public static func start(
        host: String, port: Int, sessions: [SessionClient], access: LocalAccess, group: EventLoopGroup,
        onComplete: (@Sendable (ProxyExchangeRecord) -> Void)? = nil
    ) async throws -> LocalListener {
        let byComponent = Dictionary(sessions.map { ($0.target.component, $0) }, uniquingKeysWith: { first, _ in first })
        let limits = sessions[0].target.limits
        // The gate has put the component's name in Host (a conduit's single component may keep a
        // foreign one, for the connector to judge).
        let only = sessions.count == 1 ? sessions[0] : nil
        let opener: UpstreamOpener = { head, upstream in
            guard let session = only ?? head.headers.first(name: "host").flatMap({ byComponent[$0] }) else {
                return upstream.downstreamEventLoop.makeFailedFuture(ProxyRefusal(.misdirectedRequest, code: "unknown_host", message: "no session for this host"))
            }
            return session.open(head, upstream)
        }
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    let gate = LocalGateHandler(access: access)
                    try channel.pipeline.syncOperations.addHandler(gate)
                    try channel.pipeline.syncOperations.addHandler(LocalWebSocketBridge(httpOnly: [gate]))
                    try channel.pipeline.syncOperations.addHandler(
                        ProxyServerHandler(
                            opener: opener,
                            limits: .init(
                                requestHeaders: .sessionRequest(limits), requestTrailers: .session(limits), drainLimit: limits.refusedBodyDrainLimit),
                            onComplete: onComplete))
                }
            }
            .bind(host: host, port: port)
            .get()
        return LocalListener(channel: channel, access: access)
    }

    /// One component on the port as a plain conduit (`LocalAccess.Checks.conduit`): for in-process
    /// use, where what is tested is the connector's own checks. relayctl always signs in.
    public static func start(
        host: String, port: Int, session: SessionClient, group: EventLoopGroup,
        onComplete: (@Sendable (ProxyExchangeRecord) -> Void)? = nil
    ) async throws -> LocalListener {
        let access = try LocalAccess(cluster: session.target.cluster, components: [session.target.component], checks: .conduit)
        return try await Self.start(host: host, port: port, sessions: [session], access: access, group: group, onComplete: onComplete)
    }

    public var localAddress: SocketAddress? { self.channel.localAddress }
    public var port: Int { self.channel.localAddress?.port ?? 0 }

    /// The plain address, for a single component and for scripts.
    public var url: String {
        guard let address = self.channel.localAddress, let port = address.port else { return "http://?" }
        let host = address.ipAddress ?? "127.0.0.1"
        return host.contains(":") ? "http://[\(host)]:\(port)/" : "http://\(host):\(port)/"
    }

    public func close() async throws {
        try await self.channel.close()
    }
}

/// Carries out `LocalAccess`'s decision for each request: passes it on (to the component its
/// host names), or answers it here (a sign-in's redirect, a refusal) and drops its body.
final class LocalGateHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let access: LocalAccess
    /// The request was answered here: its body and end go nowhere.
    private var answered = false

    init(access: LocalAccess) { self.access = access }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            switch self.access.decide(head, port: context.channel.localAddress?.port ?? 0) {
            case .forward(_, let head):
                self.answered = false
                context.fireChannelRead(self.wrapInboundOut(.head(head)))
            case .signIn(let location, let cookie):
                self.answered = true
                let headers = HTTPHeaders([("location", location), ("set-cookie", cookie), ("content-length", "0"), ("cache-control", "no-store")])
                context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .seeOther, headers: headers))), promise: nil)
                context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
            case .refuse(let refusal):
                // Closed after the answer: a refused request's body is not worth reading.
                self.answered = true
                let body = refusal.body(allocator: context.channel.allocator)
                var response = refusal.responseHead(version: head.version, bodyLength: body.readableBytes)
                response.headers.replaceOrAdd(name: "connection", value: "close")
                context.write(self.wrapOutboundOut(.head(response)), promise: nil)
                context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
                context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
            }
        case .body, .end:
            if !self.answered { context.fireChannelRead(data) }
        }
    }
}
