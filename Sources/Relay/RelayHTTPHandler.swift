import Foundation
import Logging
import NIOCore
import NIOHTTP1
import TunnelCore

/// Per-connection state shared by the upgrader and `RelayHTTPHandler` (used on the connection's loop only).
final class ConnectionHandshake: @unchecked Sendable {
    /// The gate's verdict on this connection's upgrade request, once decided.
    var decision: HandshakeDecision?
    /// Closes the connection if it neither upgrades nor sends a plain request in time.
    var deadline: Deadlines.Armed?
    /// The upgrade request's ID (`x-request-id`): on its audit records, its log lines and the answer.
    var requestID: String?
}

/// Answers every request that was not upgraded: the health and readiness probes, the JSON API (kept alive, one
/// request at a time, idle connections closed) and refusals of tunnel and session handshakes with a
/// JSON body that says why.
final class RelayHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// Largest API request body accepted (a heartbeat is about 1 KiB).
    static let maxBodyBytes = 1 << 20

    private let router: RelayAPIRouter
    private let tasks: OwnedTasks
    private let handshake: ConnectionHandshake
    private let idleTimeout: TimeAmount
    private let logger: Logger
    private var head: HTTPRequestHead?
    private var body = Data()
    private var tooLarge = false
    private var busy = false
    private var queued: [(HTTPRequestHead, Data, Bool)] = []
    private var idleTask: Scheduled<Void>?
    /// The ID of the request being answered (`x-request-id` on its answer).
    private var requestID: String?

    /// `/readyz`: 200 while this node should get traffic, else 503 with the reasons.
    private let readiness: @Sendable () async -> APIResponse
    /// `/ops/...`: the operators' status page.
    private let console: OpsConsole

    init(
        router: RelayAPIRouter, console: OpsConsole, tasks: OwnedTasks, handshake: ConnectionHandshake, idleTimeout: TimeAmount, logger: Logger,
        readiness: @escaping @Sendable () async -> APIResponse
    ) {
        self.console = console
        self.readiness = readiness
        self.tasks = tasks
        self.router = router
        self.handshake = handshake
        self.idleTimeout = idleTimeout
        self.logger = logger
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.idleTask?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            // A plain HTTPS client: the handshake deadline gives way to the API idle timeout.
            self.handshake.deadline?.cancel()
            self.idleTask?.cancel()
            self.head = head
            self.body = Data()
            self.tooLarge = false
        case .body(let buffer):
            if self.body.count + buffer.readableBytes > Self.maxBodyBytes {
                self.tooLarge = true
            } else {
                self.body.append(contentsOf: buffer.readableBytesView)
            }
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            self.queued.append((head, self.body, self.tooLarge))
            self.body = Data()
            if self.queued.count > 16 {
                context.close(promise: nil)
                return
            }
            self.next(context: context)
        }
    }

    private func next(context: ChannelHandlerContext) {
        guard !self.busy, !self.queued.isEmpty else {
            if !self.busy { self.armIdle(context: context) }
            return
        }
        let (head, body, tooLarge) = self.queued.removeFirst()
        // An upgrade refused here keeps the ID the gate recorded it under.
        let isHandshake = head.path == WirePath.tunnel || head.path == WirePath.session
        self.requestID = (isHandshake ? self.handshake.requestID : nil)
            ?? RequestID.accepting(head.headers.first(name: RequestID.header)) ?? RequestID.generate()
        if tooLarge {
            self.refuse(context: context, head, ProxyRefusal(.tooLarge, "request bodies are limited to 1 MiB"))
            return
        }
        switch head.path {
        case WirePath.health:
            self.write(context: context, head: head, status: .ok, body: Data("{\"status\":\"ok\"}\n".utf8), extra: nil)
        case WirePath.tunnel, WirePath.session:
            if case .refuse(let refusal) = self.handshake.decision {
                self.logger.notice(
                    "handshake refused",
                    metadata: ["path": "\(head.path)", "status": "\(refusal.status.code)", "reason": "\(refusal.code)",
                               "peer": "\(context.channel.remoteAddress?.display ?? "?")", "request_id": "\(self.requestID ?? "-")"])
                self.refuse(context: context, head, refusal, close: true)
            } else {
                self.refuse(context: context, head, ProxyRefusal(.upgradeRequired, "this endpoint needs a websocket upgrade"), close: true)
            }
        case WirePath.ready:
            self.answerLater(context: context, head: head, self.readiness)
        case let path where path == "/ops" || path.hasPrefix("/ops/"):
            let request = APIRequest(
                method: head.method, uri: head.uri, bearer: head.bearer, body: body, source: context.channel.remoteAddress?.ipAddress)
            let console = self.console
            let cookies = head.headers[canonicalForm: "cookie"].joined(separator: "; ")
            let fetchSite = head.headers.first(name: "sec-fetch-site")
            let id = self.requestID
            self.answerLater(context: context, head: head) {
                await RequestID.$current.withValue(id) { await console.handle(request, cookies: cookies, fetchSite: fetchSite) }
            }
        default:
            let request = APIRequest(
                method: head.method, uri: head.uri, bearer: head.bearer, body: body, source: context.channel.remoteAddress?.ipAddress)
            let router = self.router
            let id = self.requestID
            self.answerLater(context: context, head: head) { await RequestID.$current.withValue(id) { await router.handle(request) } }
        }
    }

    /// Answers with what `work` returns, off the event loop; the next queued request waits for it.
    private func answerLater(context: ChannelHandlerContext, head: HTTPRequestHead, _ work: @escaping @Sendable () async -> APIResponse) {
        self.busy = true
        self.tasks.submit(on: context.eventLoop) { await work() }.whenComplete { result in
            self.busy = false
            switch result {
            case .success(let response):
                var extra = HTTPHeaders()
                if let code = response.errorCode { extra.add(name: WireHeader.error, value: code) }
                for (name, value) in response.headers { extra.add(name: name, value: value) }
                self.write(context: context, head: head, status: response.status, body: response.body, extra: extra, contentType: response.contentType)
            case .failure:
                self.refuse(context: context, head, ProxyRefusal(OwnedTasks.stopping), close: true)
            }
        }
    }

    private func refuse(context: ChannelHandlerContext, _ head: HTTPRequestHead, _ refusal: ProxyRefusal, close: Bool = false) {
        let body = refusal.body(allocator: context.channel.allocator)
        var extra = HTTPHeaders()
        extra.add(name: WireHeader.error, value: refusal.code)
        self.write(context: context, head: head, status: refusal.status, body: Data(body.readableBytesView), extra: extra, forceClose: close)
    }

    private func write(
        context: ChannelHandlerContext, head request: HTTPRequestHead, status: HTTPResponseStatus, body: Data, extra: HTTPHeaders?,
        forceClose: Bool = false, contentType: String = "application/json"
    ) {
        let keepAlive = request.isKeepAlive && !forceClose
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: contentType)
        headers.add(name: "content-length", value: String(body.count))
        headers.add(name: "cache-control", value: "no-store")
        if let extra { headers.add(contentsOf: extra) }
        if let id = self.requestID { headers.add(name: RequestID.header, value: id) }
        if !keepAlive { headers.add(name: "connection", value: "close") }
        context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive {
                context.close(promise: nil)
            } else {
                self.next(context: context)
            }
        }
    }

    private func armIdle(context: ChannelHandlerContext) {
        self.idleTask?.cancel()
        self.idleTask = context.eventLoop.scheduleTask(in: self.idleTimeout) { context.close(promise: nil) }
    }
}
