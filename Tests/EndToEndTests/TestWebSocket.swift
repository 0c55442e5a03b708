import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import TestSupport

/// A websocket client for tests, as a browser or script would use the local port: NIO's client
/// upgrader, whole messages in (NIO's aggregator), frames out (masked, as a client must).
final class TestWebSocket: Sendable {
    /// The handshake's outcome: upgraded, or the HTTP answer that refused it.
    enum Outcome: Sendable {
        case upgraded(TestWebSocket)
        case refused(status: HTTPResponseStatus, headers: HTTPHeaders, body: String)
    }

    struct Timeout: Error, CustomStringConvertible {
        var what: String
        var description: String { "timed out waiting for \(self.what)" }
    }

    let channel: Channel
    /// The 101's headers (subprotocol, extensions).
    let response: HTTPResponseHead
    private let received: NIOLockedValueBox<[WebSocketFrame]>

    private init(channel: Channel, response: HTTPResponseHead, received: NIOLockedValueBox<[WebSocketFrame]>) {
        self.channel = channel
        self.response = response
        self.received = received
    }

    static func connect(port: Int, path: String, host: String = "127.0.0.1", headers: [(String, String)] = []) async throws -> Outcome {
        let received = NIOLockedValueBox<[WebSocketFrame]>([])
        let done = TestStack.group.any().makePromise(of: Outcome.self)
        let refusal = RefusalCollector(done: done)
        let channel = try await ClientBootstrap(group: TestStack.group)
            // A small, fixed receive buffer (no autotuning): a reader that stops reading stops the sender soon.
            .channelOption(ChannelOptions.socketOption(.so_rcvbuf), value: 64 << 10)
            .channelInitializer { channel in
                let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: 32 << 20) { channel, response in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.removeHandler(refusal).whenComplete { _ in }
                        try channel.pipeline.syncOperations.addHandler(
                            NIOWebSocketFrameAggregator(minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: 1 << 16, maxAccumulatedFrameSize: 32 << 20))
                        try channel.pipeline.syncOperations.addHandler(FrameCollector(received: received))
                        done.succeed(.upgraded(TestWebSocket(channel: channel, response: response, received: received)))
                    }
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(
                        leftOverBytesStrategy: .forwardBytes, withClientUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
                    try channel.pipeline.syncOperations.addHandler(refusal)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        channel.closeFuture.whenComplete { _ in done.fail(Timeout(what: "the handshake (the connection closed)")) }
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path)
        head.headers.add(name: "host", value: "\(host):\(port)")
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        try await channel.writeAndFlush(HTTPClientRequestPart.end(nil))
        return try await done.futureResult.get()
    }

    func send(text: String) async throws {
        try await self.send(.text, self.channel.allocator.buffer(string: text))
    }

    func send(_ opcode: WebSocketOpcode, _ data: ByteBuffer) async throws {
        let frame = WebSocketFrame(fin: true, opcode: opcode, maskKey: .random(), data: data)
        try await self.channel.writeAndFlush(frame)
    }

    /// The next message (text or binary; pings are answered by NIO), within `seconds`.
    func next(seconds: Int = 30) async throws -> WebSocketFrame {
        var message: WebSocketFrame?
        try await TestWait.poll(seconds: seconds) {
            message = self.received.withLockedValue { $0.isEmpty ? nil : $0.removeFirst() }
            return message != nil || !self.channel.isActive
        }
        guard let message else { throw Timeout(what: "a websocket message") }
        return message
    }

    /// Sends a close frame (1000) and waits for the connection to end.
    func close() async throws {
        var data = self.channel.allocator.buffer(capacity: 2)
        data.write(webSocketErrorCode: .normalClosure)
        try await self.send(.connectionClose, data)
        try await TestWait.poll { !self.channel.isActive }
    }
}

private final class FrameCollector: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    let received: NIOLockedValueBox<[WebSocketFrame]>
    init(received: NIOLockedValueBox<[WebSocketFrame]>) { self.received = received }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = self.unwrapInboundIn(data)
        self.received.withLockedValue { $0.append(frame) }
    }
}

/// Collects a refusing answer (anything but 101) whole.
private final class RefusalCollector: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    let done: EventLoopPromise<TestWebSocket.Outcome>
    private var head: HTTPResponseHead?
    private var body = ""
    init(done: EventLoopPromise<TestWebSocket.Outcome>) { self.done = done }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body(let bytes): self.body += String(buffer: bytes)
        case .end:
            if let head = self.head { self.done.succeed(.refused(status: head.status, headers: head.headers, body: self.body)) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {}
}
