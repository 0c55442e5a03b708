import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import TunnelCore

/// The admin listener (`admin_listen`, plain HTTP, 127.0.0.1:9464 by default): `/metrics` for
/// Prometheus, and `/healthz` and `/readyz` as on the main listener. Apart from the public
/// endpoint, so that a scrape never competes with connectors and firewalls can tell them apart.
/// Bound to anything but loopback, `/metrics` asks for an ops token (`Authorization: Bearer`).
final class AdminServer: Sendable {
    private let channel: Channel
    var address: SocketAddress? { self.channel.localAddress }

    private init(channel: Channel) { self.channel = channel }

    static func start(host: String, port: Int, server: RelayServer, group: EventLoopGroup, logger: Logger) async throws -> AdminServer {
        let open = AdminServer.isLoopback(host)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(server: server, requiresToken: !open))
                }
            }
            .bind(host: host, port: port).get()
        logger.info(
            "admin listener (metrics, probes)",
            metadata: ["address": "\(channel.localAddress?.display ?? "?")", "metrics_auth": "\(open ? "none (loopback)" : "ops token")"])
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
            let answer = loop.makeFutureWithTask { () -> (HTTPResponseStatus, String, [UInt8]) in
                await Self.answer(head, server: server, requiresToken: requiresToken)
            }
            answer.whenSuccess { status, type, body in
                self.write(context: context, head: head, status: status, contentType: type, body: body)
            }
        }
    }

    private static func answer(_ head: HTTPRequestHead, server: RelayServer, requiresToken: Bool) async -> (HTTPResponseStatus, String, [UInt8]) {
        let json = "application/json"
        guard head.method == .GET || head.method == .HEAD else {
            return (.methodNotAllowed, json, Array("{\"error\":\"method_not_allowed\"}\n".utf8))
        }
        switch head.path {
        case "/metrics":
            if requiresToken {
                do {
                    let caller = try await server.control.authenticateUser(bearer: head.bearer, action: "admin /metrics")
                    guard caller.role == .ops else {
                        server.control.metrics.authFailed(.role)
                        throw MissionControl.unauthorized
                    }
                } catch {
                    let code = (error as? RelayError)?.code.rawValue ?? "unauthorized"
                    return (.unauthorized, json, Array("{\"error\":\"\(code)\",\"message\":\"/metrics on this address needs an ops token\"}\n".utf8))
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
