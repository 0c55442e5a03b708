import Foundation
import NIOCore
import NIOHTTP1
import NIOHPACK
import NIOHTTP2
import Relay
import TunnelCore

/// Plays a relay that is wrong or compromised: opens streams in the connector's real tunnel with
/// any method, target and headers, identity headers included. What the connector lets through
/// here is what it would let through if the relay stopped checking anything.
enum RogueRelay {
    struct Answer: Sendable {
        /// nil when the stream was reset instead of answered.
        var status: Int?
        var error: String?
        var text: String
    }

    static func identity(request: Int64, role: String = "admin", component: String = "ui", session: String = "rogue") -> [(String, String)] {
        [
            (WireHeader.component, component), (WireHeader.expert, "alice"), (WireHeader.session, session),
            (WireHeader.role, role), (WireHeader.accessRequest, String(request)),
            (WireHeader.accessExpires, String(Int64(Date().timeIntervalSince1970) + 3600)),
            (WireHeader.requestID, UUID().uuidString),
        ]
    }

    /// A CONNECT as HTTP/2 has it (`:method` and `:authority` only), which no HTTP/1 codec produces.
    static func connect(_ stack: TestStack, authority: String, identity: [(String, String)]) async throws -> Answer {
        guard let tunnel = stack.relay.registry.pick(cluster: "demo") else { throw TestFailure("no tunnel") }
        let loop = tunnel.channel.eventLoop
        let answer = loop.makePromise(of: Answer.self)
        let collector = FrameCollector(promise: answer)
        let created = loop.makePromise(of: Channel.self)
        tunnel.multiplexer.createStreamChannel(promise: created) { stream in
            stream.eventLoop.makeCompletedFuture { try stream.pipeline.syncOperations.addHandler(collector) }
        }
        let stream = try await created.futureResult.get()
        let headers = HPACKHeaders([(":method", "CONNECT"), (":authority", authority)] + identity)
        stream.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: headers, endStream: true)), promise: nil)
        let timeout = loop.scheduleTask(in: .seconds(10)) { answer.fail(TestFailure("no answer within 10 s")) }
        defer { timeout.cancel() }
        return try await answer.futureResult.get()
    }

    static func send(
        _ stack: TestStack, method: HTTPMethod, target: String, headers: [(String, String)], body: [UInt8]? = nil
    ) async throws -> Answer {
        guard let tunnel = stack.relay.registry.pick(cluster: "demo") else { throw TestFailure("no tunnel") }
        return try await self.send(on: tunnel.multiplexer, loop: tunnel.channel.eventLoop, method: method, target: target, headers: headers, body: body)
    }

    /// One request on a new stream of any HTTP/2 client connection (a tunnel, or a session).
    static func send(
        on multiplexer: NIOHTTP2Handler.StreamMultiplexer, loop: EventLoop, method: HTTPMethod, target: String, headers: [(String, String)],
        body: [UInt8]? = nil
    ) async throws -> Answer {
        let answer = loop.makePromise(of: Answer.self)
        let collector = AnswerCollector(promise: answer)
        let created = loop.makePromise(of: Channel.self)
        multiplexer.createStreamChannel(promise: created) { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandlers([HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .https), collector])
            }
        }
        let stream = try await created.futureResult.get()
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: target)
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        if !head.headers.contains(name: "host") { head.headers.add(name: "host", value: head.headers.first(name: WireHeader.component) ?? "ui") }
        stream.write(HTTPClientRequestPart.head(head), promise: nil)
        if let body { stream.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil) }
        stream.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        let timeout = loop.scheduleTask(in: .seconds(10)) { answer.fail(TestFailure("no answer within 10 s")) }
        defer { timeout.cancel() }
        return try await answer.futureResult.get()
    }
}

/// Plays a relayctl or a connector that skips its own checks: a websocket dialed by hand to the
/// relay, HTTP/2 on it, requests sent as they are.
enum RogueSession {
    static func dial(_ stack: TestStack) async throws -> (Channel, NIOHTTP2Handler.StreamMultiplexer) {
        try await self.dial(
            port: stack.relayPort, path: WirePath.session, link: .session,
            headers: [("authorization", "Bearer \(stack.expertToken)"), (WireHeader.cluster, "demo"), (WireHeader.component, "ui")])
    }

    /// - Parameter host: the relay's name to dial; `localhost` is another relay URL to the same relay.
    static func dial(
        host: String = "127.0.0.1", port: Int, path: String, link: TunnelLink, headers: [(String, String)], caDirectory: String = TestCerts.trusted
    ) async throws -> (Channel, NIOHTTP2Handler.StreamMultiplexer) {
        let tls = try TLSFiles.clientContext(caFile: caDirectory + "/ca.pem")
        return try await WebSocketDialer.dial(
            url: try WebSocketURL(parsing: "wss://\(host):\(port)\(path)"), headers: HTTPHeaders(headers), tls: tls, limits: TestStack.limits,
            group: TestStack.group
        ) { channel in
            try TunnelPipeline.configure(
                channel: channel, websocketRole: .client, http2Mode: link == .session ? .client : .server, link: link, limits: TestStack.limits,
                inboundStreamInitializer: TunnelPipeline.refuseInboundStreams)
        }.get()
    }
}

private final class AnswerCollector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    let promise: EventLoopPromise<RogueRelay.Answer>
    var head: HTTPResponseHead?
    var text = ""
    var done = false

    init(promise: EventLoopPromise<RogueRelay.Answer>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body(let buffer): self.text += String(buffer: buffer)
        case .end:
            self.finish(.init(status: self.head.map { Int($0.status.code) }, error: self.head?.headers.first(name: WireHeader.error), text: self.text))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.finish(.init(status: nil, error: nil, text: "stream closed"))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.finish(.init(status: nil, error: nil, text: "\(error)"))
        context.close(promise: nil)
    }

    private func finish(_ answer: RogueRelay.Answer) {
        guard !self.done else { return }
        self.done = true
        self.promise.succeed(answer)
    }
}

private final class FrameCollector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTP2Frame.FramePayload
    let promise: EventLoopPromise<RogueRelay.Answer>
    var done = false

    init(promise: EventLoopPromise<RogueRelay.Answer>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .headers(let headers) = self.unwrapInboundIn(data), !self.done {
            self.done = true
            self.promise.succeed(
                .init(status: headers.headers.first(name: ":status").flatMap { Int($0) }, error: headers.headers.first(name: WireHeader.error), text: ""))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        guard !self.done else { return }
        self.done = true
        self.promise.succeed(.init(status: nil, error: nil, text: "stream closed"))
    }
}
