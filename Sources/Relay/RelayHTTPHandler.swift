import Logging
import NIOCore
import NIOHTTP1
import TunnelCore

/// Answers every request that was not upgraded: the health probe, and refusals of tunnel and
/// session handshakes (401, 400, 404) with a JSON body that says why.
final class RelayHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let authenticator: HandshakeAuthenticator
    private let logger: Logger
    private var head: HTTPRequestHead?

    init(authenticator: HandshakeAuthenticator, logger: Logger) {
        self.authenticator = authenticator
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            self.respond(context: context, to: head)
        }
    }

    private func respond(context: ChannelHandlerContext, to head: HTTPRequestHead) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        if path == WirePath.health {
            var body = context.channel.allocator.buffer(capacity: 16)
            body.writeString("{\"status\":\"ok\"}\n")
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "application/json")
            headers.add(name: "content-length", value: String(body.readableBytes))
            self.write(context: context, HTTPResponseHead(version: head.version, status: .ok, headers: headers), body, keepAlive: head.isKeepAlive)
            return
        }
        let refusal: ProxyRefusal
        switch self.authenticator.decide(head) {
        case .refuse(let reason):
            refusal = reason
            if path == WirePath.tunnel || path == WirePath.session {
                self.logger.notice(
                    "handshake refused",
                    metadata: ["path": "\(path)", "status": "\(reason.status.code)", "reason": "\(reason.code)",
                               "peer": "\(context.channel.remoteAddress.map { "\($0)" } ?? "?")"])
            }
        case .tunnel, .session:
            refusal = ProxyRefusal(.upgradeRequired, code: "upgrade_required", message: "this endpoint needs a websocket upgrade")
        }
        let body = refusal.body(allocator: context.channel.allocator)
        self.write(context: context, refusal.responseHead(version: head.version, bodyLength: body.readableBytes), body, keepAlive: false)
    }

    private func write(context: ChannelHandlerContext, _ head: HTTPResponseHead, _ body: ByteBuffer, keepAlive: Bool) {
        var head = head
        if !keepAlive { head.headers.replaceOrAdd(name: "connection", value: "close") }
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }
}
