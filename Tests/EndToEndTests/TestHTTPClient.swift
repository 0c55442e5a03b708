import Crypto
import DemoComponentKit
import NIOCore
import NIOHTTP1
import NIOPosix

/// What a test checks of a response: status, headers, size and SHA-256 of the body, and its start as text.
struct TestResponse: Sendable {
    var status: HTTPResponseStatus
    var headers: HTTPHeaders
    var bodyBytes: Int
    var sha256: String
    var text: String
    var trailers: HTTPHeaders? = nil
}

/// A bare HTTP/1.1 client on one keep-alive connection: requests go one after the other.
final class TestHTTPConnection: @unchecked Sendable {
    private let channel: Channel
    private let collector: ResponseCollector

    static func connect(host: String = "127.0.0.1", port: Int, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> TestHTTPConnection {
        let collector = ResponseCollector()
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(collector)
                }
            }
            .connect(host: host, port: port).get()
        return TestHTTPConnection(channel: channel, collector: collector)
    }

    private init(channel: Channel, collector: ResponseCollector) {
        self.channel = channel
        self.collector = collector
    }

    /// Sends a request; `body` is sent in chunks of 64 KiB; `chunked` omits Content-Length (and
    /// lets `trailers` follow the body).
    func request(
        _ method: HTTPMethod = .GET, _ path: String, headers: [(String, String)] = [], body: [UInt8]? = nil, chunked: Bool = false,
        trailers: HTTPHeaders? = nil
    ) async throws -> TestResponse {
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        if !head.headers.contains(name: "host") { head.headers.add(name: "host", value: "localhost") }
        if let body {
            if chunked { head.headers.add(name: "transfer-encoding", value: "chunked") } else {
                head.headers.add(name: "content-length", value: String(body.count))
            }
        }
        let channel = self.channel
        let promise = channel.eventLoop.makePromise(of: TestResponse.self)
        let collector = self.collector
        channel.eventLoop.execute {
            collector.expect(promise)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if let body {
                var offset = 0
                while offset < body.count {
                    let end = min(offset + 65536, body.count)
                    channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body[offset..<end]))), promise: nil)
                    offset = end
                }
            }
            channel.writeAndFlush(HTTPClientRequestPart.end(trailers), promise: nil)
        }
        return try await promise.futureResult.get()
    }

    func close() async { try? await self.channel.close() }

    /// One request on its own connection.
    static func request(port: Int, _ method: HTTPMethod = .GET, _ path: String, headers: [(String, String)] = [], body: [UInt8]? = nil,
                        chunked: Bool = false) async throws -> TestResponse {
        let connection = try await TestHTTPConnection.connect(port: port)
        defer { Task { await connection.close() } }
        return try await connection.request(method, path, headers: headers, body: body, chunked: chunked)
    }
}

private final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart

    private var promise: EventLoopPromise<TestResponse>?
    private var head: HTTPResponseHead?
    private var hasher = SHA256()
    private var count = 0
    private var text = ByteBuffer()

    func expect(_ promise: EventLoopPromise<TestResponse>) {
        self.promise = promise
        self.head = nil
        self.hasher = SHA256()
        self.count = 0
        self.text = ByteBuffer()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body(var bytes):
            self.count += bytes.readableBytes
            bytes.withUnsafeReadableBytes { self.hasher.update(bufferPointer: $0) }
            if self.text.readableBytes < 65536 { self.text.writeBuffer(&bytes) }
        case .end(let trailers):
            guard let head = self.head else { return }
            let response = TestResponse(
                status: head.status, headers: head.headers, bodyBytes: self.count, sha256: hex(self.hasher.finalize()),
                text: String(buffer: self.text), trailers: trailers)
            self.promise?.succeed(response)
            self.promise = nil
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.promise?.fail(ChannelError.eof)
        self.promise = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.promise?.fail(error)
        self.promise = nil
        context.close(promise: nil)
    }
}

func sha256Hex(_ bytes: [UInt8]) -> String { hex(SHA256.hash(data: bytes)) }
