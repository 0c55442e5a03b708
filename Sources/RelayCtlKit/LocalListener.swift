import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix
import TunnelCore

/// The engineer's local HTTP/1.1 port (loopback by default): a browser or curl uses it unchanged;
/// every request is carried to a cluster component through the relay, chosen by the host name
/// the request names (`LocalAccess`).
public final class LocalListener: Sendable {
    /// The listening sockets: one, or on loopback one per address family.
    public let channels: [Channel]
    public var channel: Channel { self.channels[0] }
    public let access: LocalAccess

    private init(channels: [Channel], access: LocalAccess) {
        self.channels = channels
        self.access = access
    }

    /// One port for every component of `sessions` (one session each, all of one cluster).
    ///
    /// On loopback (`127.0.0.1`, `::1`, `localhost`) the port is taken on both: browsers resolve
    /// `*.localhost` to either, so a port held on one alone would let another local user take the
    /// same number on the other and receive the sign-in link and cookie. With port 0 a number free
    /// on both is picked.
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
                return upstream.downstreamEventLoop.makeFailedFuture(ProxyRefusal(stream: .unknownHost, "no session for this host"))
            }
            return session.open(head, upstream)
        }
        let bootstrap = ServerBootstrap(group: group)
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
        guard Self.loopback.contains(host.lowercased()) else {
            return LocalListener(channels: [try await bootstrap.bind(host: host, port: port).get()], access: access)
        }
        let first = host == "::1" ? "::1" : "127.0.0.1"
        let second = first == "::1" ? "127.0.0.1" : "::1"
        for attempt in 1...20 {
            let channel = try await bootstrap.bind(host: first, port: port).get()
            do {
                let other = try await bootstrap.bind(host: second, port: channel.localAddress!.port!).get()
                return LocalListener(channels: [channel, other], access: access)
            } catch let error as IOError where error.errnoCode == EADDRNOTAVAIL || error.errnoCode == EAFNOSUPPORT {
                return LocalListener(channels: [channel], access: access)  // no such family here: nobody can take it either
            } catch let error as IOError where error.errnoCode == EADDRINUSE && port == 0 && attempt < 20 {
                try? await channel.close()  // taken on the other family: pick another number
            } catch {
                try? await channel.close()
                throw LocalListenerError(
                    "port \(channel.localAddress?.port ?? port) is free on \(first) but not on \(second) (\(error)); a browser may reach either: choose another --listen port")
            }
        }
        throw LocalListenerError("found no port free on both 127.0.0.1 and ::1")
    }

    static let loopback: Set<String> = ["127.0.0.1", "::1", "[::1]", "localhost"]

    /// One component on the port as a plain conduit (`LocalAccess.Checks.conduit`: no sign-in):
    /// for in-process use, where what is tested is the connector's own checks. relayctl always
    /// signs in.
    public static func startConduit(
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
        for channel in self.channels { try? await channel.close() }
    }
}

public struct LocalListenerError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
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
                var headers = HTTPHeaders([("location", location), ("content-length", "0"), ("cache-control", "no-store")])
                if let cookie { headers.add(name: "set-cookie", value: cookie) }
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
