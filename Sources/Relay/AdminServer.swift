import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOConcurrencyHelpers
import RelayAPI
import RelayStore
import TunnelCore

/// The admin listener (`admin_listen`, 127.0.0.1:9464 by default): `/metrics` for Prometheus, and
/// `/healthz` and `/readyz` as on the main listener. Apart from the public endpoint, so that a
/// scrape never competes with connectors and firewalls can tell them apart. On loopback it is plain
/// HTTP and open; bound to anything else it serves TLS with the relay's certificate and `/metrics`
/// asks for an ops token (`Authorization: Bearer`), never sent in clear.
final class AdminServer: Sendable {
    /// Connections held at once; an idle one is closed after `idleTimeout`.
    static let maxConnections = 64
    static let idleTimeout = TimeAmount.seconds(10)

    private let channel: Channel
    var address: SocketAddress? { self.channel.localAddress }

    private init(channel: Channel) { self.channel = channel }

    static func start(
        host: String, port: Int, server: RelayServer, tls: @escaping @Sendable () -> NIOSSLContext, group: EventLoopGroup, logger: Logger
    ) async throws -> AdminServer {
        let open = AdminServer.isLoopback(host)
        let held = NIOLockedValueBox(0)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                guard held.withLockedValue({ count in count += 1; return count <= Self.maxConnections }) else {
                    held.withLockedValue { $0 -= 1 }
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in held.withLockedValue { $0 -= 1 } }
                return channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if !open { try sync.addHandler(NIOSSLServerHandler(context: tls())) }
                    try sync.addHandler(IdleStateHandler(allTimeout: Self.idleTimeout))
                    try sync.configureHTTPServerPipeline(withErrorHandling: true)
                    try sync.addHandler(AdminHandler(server: server, requiresToken: !open))
                }
            }
            .bind(host: host, port: port).get()
        logger.info(
            "admin listener (metrics, probes)",
            metadata: ["address": "\(channel.localAddress?.display ?? "?")", "metrics_auth": "\(open ? "none (loopback, plain HTTP)" : "ops token (TLS)")"])
        return AdminServer(channel: channel)
    }

    func close() async { try? await self.channel.close() }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}

/// One request at a time per connection; answers are small.
private final class AdminHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let server: RelayServer
    private let requiresToken: Bool
    private var head: HTTPRequestHead?

    init(server: RelayServer, requiresToken: Bool) {
        self.server = server
        self.requiresToken = requiresToken
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Idle (no request, or a request too slow to arrive): closed.
        if event is IdleStateHandler.IdleStateEvent { context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            let server = self.server
            let requiresToken = self.requiresToken
            let loop = context.eventLoop
            let source = context.channel.remoteAddress?.ipAddress
            let answer = loop.makeFutureWithTask { () -> (HTTPResponseStatus, String, [UInt8]) in
                await Self.answer(head, server: server, requiresToken: requiresToken, source: source)
            }
            answer.whenSuccess { status, type, body in
                self.write(context: context, head: head, status: status, contentType: type, body: body)
            }
        }
    }

    private static func answer(_ head: HTTPRequestHead, server: RelayServer, requiresToken: Bool, source: String?) async -> (HTTPResponseStatus, String, [UInt8]) {
        let json = "application/json"
        guard head.method == .GET || head.method == .HEAD else {
            return (.methodNotAllowed, json, Array("{\"error\":\"method_not_allowed\"}\n".utf8))
        }
        switch head.path {
        case "/metrics":
            if requiresToken {
                do {
                    let caller = try await server.control.authenticateUser(bearer: head.bearer, action: "admin /metrics", source: source)
                    guard caller.role == .ops else {
                        server.control.metrics.authFailed(.role)
                        await server.control.deny(caller: caller, "admin /metrics", source: source, reason: "ops_only: not an ops token")
                        throw MissionControl.opsOnly
                    }
                } catch {
                    let refusal = (error as? RelayError) ?? (error as? StoreUnavailable).map { .storeUnavailable($0) }
                        ?? RelayError(.internalError, "the relay failed to answer; try again")
                    return (refusal.code.status, json, Array(RelayAPIRouter.errorBody(ProxyRefusal(refusal))))
                }
            }
            return (.ok, "text/plain; version=0.0.4; charset=utf-8", await server.scrapeMetrics())
        case WirePath.health:
            return (.ok, json, Array("{\"status\":\"ok\"}\n".utf8))
        case WirePath.ready:
            let readiness = await server.readiness()
            return (readiness.status, json, Array(readiness.body))
        default:
            return (.notFound, json, Array("{\"error\":\"not_found\",\"message\":\"the admin listener serves /metrics, /healthz and /readyz\"}\n".utf8))
        }
    }

    private func write(context: ChannelHandlerContext, head request: HTTPRequestHead, status: HTTPResponseStatus, contentType: String, body: [UInt8]) {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: contentType)
        headers.add(name: "content-length", value: String(body.count))
        headers.add(name: "cache-control", value: "no-store")
        if !request.isKeepAlive { headers.add(name: "connection", value: "close") }
        context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        if request.method != .HEAD {
            context.write(self.wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let keepAlive = request.isKeepAlive
        context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }
}
