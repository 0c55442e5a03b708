import Crypto
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

/// A small cluster "component" for the demo, the tests and the benchmarks: an HTML page, a JSON
/// API, downloads of any size (`/bytes/N`, generated, honouring backpressure) and uploads answered
/// with their SHA-256 (`/upload`). It counts what it receives, so tests can assert what got through.
public final class DemoComponent: Sendable {
    public let channel: Channel
    private let countersBox: NIOLockedValueBox<Counters>

    public struct Counters: Sendable {
        public var requests = 0
        /// Websockets opened (`/ws/echo`, `/ws/live`) and closed.
        public var webSocketsOpened = 0
        public var webSocketsClosed = 0
        /// Bytes of websocket messages the component has handed to the network (writes completed).
        public var webSocketBytesSent = 0
        /// TCP connections accepted.
        public var connections = 0
    }

    private init(channel: Channel, counters: NIOLockedValueBox<Counters>) {
        self.channel = channel
        self.countersBox = counters
    }

    public static func start(host: String = "127.0.0.1", port: Int = 0, name: String = "demo", group: EventLoopGroup) async throws
        -> DemoComponent
    {
        let counters = NIOLockedValueBox(Counters())
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 512)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                counters.withLockedValue { $0.connections += 1 }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withServerUpgrade: (upgraders: [DemoWebSocket.upgrader(counters: counters)], completionHandler: { _ in }),
                        withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(DemoHandler(name: name, counters: counters))
                }
            }
            .bind(host: host, port: port)
            .get()
        return DemoComponent(channel: channel, counters: counters)
    }

    public var port: Int { self.channel.localAddress?.port ?? 0 }
    /// Where it listens (loopback unless started on another address; an address it listens on
    /// every interface with stays loopback here).
    public var url: String {
        let host = self.channel.localAddress?.ipAddress.flatMap { ["0.0.0.0", "::"].contains($0) ? nil : $0 } ?? "127.0.0.1"
        return host.contains(":") ? "http://[\(host)]:\(self.port)" : "http://\(host):\(self.port)"
    }
    public var counters: Counters { self.countersBox.withLockedValue { $0 } }
    /// What `/ws/flood` sends.
    public static var floodBytes: Int { DemoWebSocket.floodMessages * DemoWebSocket.floodMessageSize }

    public func close() async throws { try await self.channel.close() }

    /// The bytes `/bytes/N` serves: a fixed pattern, so both ends can check a SHA-256.
    public static func patternByte(at offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: (offset &* 31) ^ (offset >> 8)) }

    public static func sha256OfPattern(size: Int) -> String {
        var hasher = SHA256()
        var offset = 0
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while offset < size {
            let count = min(chunk.count, size - offset)
            for index in 0..<count { chunk[index] = patternByte(at: offset + index) }
            hasher.update(data: chunk[0..<count])
            offset += count
        }
        return hex(hasher.finalize())
    }
}

public func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
    digest.map { String(format: "%02x", $0) }.joined()
}

final class DemoHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let name: String
    private let countersBox: NIOLockedValueBox<Counters>
    typealias Counters = DemoComponent.Counters
    private var head: HTTPRequestHead?
    private var uploadHash: SHA256?
    private var uploadBytes = 0
    private var download: (remaining: Int, offset: Int, keepAlive: Bool)?

    init(name: String, counters: NIOLockedValueBox<Counters>) {
        self.name = name
        self.countersBox = counters
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            self.countersBox.withLockedValue { $0.requests += 1 }
            self.uploadHash = SHA256()
            self.uploadBytes = 0
        case .body(let bytes):
            self.uploadBytes += bytes.readableBytes
            bytes.withUnsafeReadableBytes { self.uploadHash?.update(bufferPointer: $0) }
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            self.route(context: context, head)
        }
    }

    private func route(context: ChannelHandlerContext, _ head: HTTPRequestHead) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        if path.hasPrefix("/bytes/"), let size = Int(path.dropFirst("/bytes/".count)), size >= 0 {
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "application/octet-stream")
            headers.add(name: "content-length", value: String(size))
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
            self.download = (head.method == .HEAD ? 0 : size, 0, head.isKeepAlive)
            self.pump(context: context)
            return
        }
        switch path {
        case "/":
            self.respond(context, head, .ok, "text/html; charset=utf-8", Self.page(name: self.name))
        case "/api/status":
            self.respond(context, head, .ok, "application/json", "{\"component\":\"\(self.name)\",\"healthy\":true}\n")
        case "/upload", "/echo":
            let digest = hex(self.uploadHash!.finalize())
            self.respond(context, head, .ok, "application/json", "{\"bytes\":\(self.uploadBytes),\"sha256\":\"\(digest)\"}\n")
        case "/response-headers":
            // Sets each query parameter as a response header (as httpbin does): lets tests check
            // what the connector lets a component say.
            var extra = HTTPHeaders()
            for pair in (head.uri.split(separator: "?", maxSplits: 1).dropFirst().first ?? "").split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
                if parts.count == 2 { extra.add(name: parts[0], value: parts[1].removingPercentEncoding ?? parts[1]) }
            }
            self.respond(context, head, .ok, "text/plain", "ok\n", extra: extra)
        case "/headers":
            let fields = head.headers.map { "\"\($0.name.lowercased())\":\"\($0.value.replacingOccurrences(of: "\"", with: "'"))\"" }
            self.respond(context, head, .ok, "application/json", "{\"method\":\"\(head.method)\",\"uri\":\"\(head.uri)\",\"headers\":{\(fields.joined(separator: ","))}}\n")
        default:
            self.respond(context, head, .notFound, "text/plain", "not found\n")
        }
    }

    /// Writes the download while the connection is writable; resumes on writability changes.
    /// The progress lives in `self.download` and is updated before each write: a write or flush can
    /// change writability and call `pump` re-entrantly, which must continue, not repeat, the body.
    private func pump(context: ChannelHandlerContext) {
        while let download = self.download, download.remaining > 0, context.channel.isWritable {
            let count = min(64 * 1024, download.remaining)
            var buffer = context.channel.allocator.buffer(capacity: count)
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { pointer in
                for index in 0..<count { pointer[index] = DemoComponent.patternByte(at: download.offset + index) }
                return count
            }
            self.download = (download.remaining - count, download.offset + count, download.keepAlive)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        guard let download = self.download else { return }
        if download.remaining == 0 {
            self.download = nil
            context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in
                if !download.keepAlive { context.close(promise: nil) }
            }
        } else {
            context.flush()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.pump(context: context) }
        context.fireChannelWritabilityChanged()
    }

    private func respond(
        _ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ status: HTTPResponseStatus, _ type: String, _ body: String,
        extra: HTTPHeaders = HTTPHeaders()
    ) {
        var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
        buffer.writeString(body)
        var headers = extra
        headers.add(name: "content-type", value: type)
        headers.add(name: "content-length", value: String(buffer.readableBytes))
        if !head.isKeepAlive { headers.add(name: "connection", value: "close") }
        context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD { context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil) }
        let keepAlive = head.isKeepAlive
        context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }

    /// The component's page. Its script opens `/ws/live` on the host the page came from and shows
    /// each value as it arrives, as a cluster UI's live view does (Scripts/browser-check.sh reads it).
    static func page(name: String) -> String {
        """
        <!doctype html>
        <html><head><title>\(name) - cluster UI</title>
        <style>body { font-family: sans-serif; margin: 2em; } #live { font-size: 2em; }</style></head>
        <body>
        <h1>Cluster component "\(name)"</h1>
        <p>You are looking at this page through relayctl, the relay and the cluster's connector.</p>
        <p>Live view (a websocket to /ws/live): <strong id="live">connecting</strong> <span id="state"></span></p>
        <ul>
        <li><a href="/api/status">/api/status</a>: a small JSON API</li>
        <li><a href="/bytes/10485760">/bytes/10485760</a>: a 10 MiB download</li>
        <li><a href="/headers">/headers</a>: the request as the component received it</li>
        </ul>
        <script>
        const live = document.getElementById("live"), state = document.getElementById("state");
        const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/live");
        socket.onopen = () => { state.textContent = "(websocket open)"; };
        socket.onmessage = (event) => { live.textContent = "tick " + JSON.parse(event.data).tick; };
        socket.onclose = (event) => { state.textContent = "(websocket closed, code " + event.code + ")"; };
        </script>
        </body></html>

        """
    }
}
