import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket

/// A `wss://host:port/path` address. Plain `ws://` is refused: every network leg is TLS.
public struct WebSocketURL: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var path: String

    public init(host: String, port: Int, path: String) {
        self.host = host
        self.port = port
        self.path = path
    }

    /// - Parameter acceptHTTPS: also take `https://` (the relay's API base URL: same host and port).
    public init(parsing text: String, acceptHTTPS: Bool = false) throws(WebSocketURLError) {
        let scheme: String
        if text.hasPrefix("wss://") {
            scheme = "wss://"
        } else if acceptHTTPS && text.hasPrefix("https://") {
            scheme = "https://"
        } else if text.hasPrefix("ws://") || text.hasPrefix("http://") {
            throw .init("plain \(text.hasPrefix("ws:") ? "ws" : "http"):// is not allowed; use \(acceptHTTPS ? "https:// or wss://" : "wss://")")
        } else {
            throw .init(acceptHTTPS ? "must start with https:// or wss://" : "must start with wss://")
        }
        var rest = Substring(text.dropFirst(scheme.count))
        let pathStart = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<pathStart]
        rest = rest[pathStart...]
        if authority.contains("@") { throw .init("credentials in the URL are not allowed") }
        if rest.contains("?") || rest.contains("#") { throw .init("query strings and fragments are not allowed") }
        let host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw .init("unterminated IPv6 address") }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { throw .init("bad port") }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        guard !host.isEmpty else { throw .init("missing host") }
        var port = 443
        if let portText {
            guard let value = Int(portText), (1...65_535).contains(value) else { throw .init("bad port \"\(portText)\"") }
            port = value
        }
        self.host = String(host)
        self.port = port
        self.path = rest.isEmpty ? "/" : String(rest)
    }

    public var description: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return "wss://\(host):\(self.port)\(self.path)"
    }

    /// The same host and port as an `https://` URL (the relay's API), without the path.
    public var httpsBase: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return "https://\(host):\(self.port)"
    }

    /// The name TLS checks the certificate against (SNI is not sent for IP literals).
    public var serverHostname: String? {
        (try? SocketAddress(ipAddress: self.host, port: 0)) == nil ? self.host : nil
    }
}

public struct WebSocketURLError: Error, CustomStringConvertible, Equatable {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// Why a dial failed; `rejected` carries the relay's status and its message for a person.
public struct DialError: Error, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case rejected(status: UInt)
        case timedOut
        case failed
    }
    public var kind: Kind
    public var message: String
    /// For `.rejected`: the relay's own message (it says what to do next).
    public var relayMessage: String?
    public var description: String { self.message }

    public init(kind: Kind, message: String, relayMessage: String? = nil) {
        self.kind = kind
        self.message = message
        self.relayMessage = relayMessage
    }
}

public enum WebSocketDialer {
    /// Connects with TLS, upgrades to websocket at `url.path`, then runs `afterUpgrade` on the
    /// channel's loop (typically `TunnelPipeline.configure`). Fails with `DialError`.
    public static func dial<Result: Sendable>(
        url: WebSocketURL,
        headers: HTTPHeaders,
        tls: NIOSSLContext,
        limits: TunnelLimits,
        group: EventLoopGroup,
        proxy: OutboundProxy? = nil,
        upgraded: (@Sendable (HTTPHeaders) -> Void)? = nil,
        afterUpgrade: @escaping @Sendable (Channel) throws -> Result
    ) -> EventLoopFuture<(Channel, Result)> {
        let loop = group.next()
        let promise = loop.makePromise(of: (Channel, Result).self)
        let timeout = loop.scheduleTask(in: limits.handshakeTimeout) {
            promise.fail(DialError(kind: .timedOut, message: "\(url): no websocket upgrade within \(limits.handshakeTimeout)"))
        }
        promise.futureResult.whenComplete { _ in timeout.cancel() }

        var requestHeaders = headers
        requestHeaders.replaceOrAdd(name: "host", value: url.port == 443 ? url.host : "\(url.host):\(url.port)")
        requestHeaders.replaceOrAdd(name: "sec-websocket-protocol", value: WireProtocolVersion.current)
        requestHeaders.replaceOrAdd(name: "content-length", value: "0")
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: url.path, headers: requestHeaders)

        OutboundConnection.open(
            host: url.host, port: url.port, proxy: proxy, loop: loop, timeout: limits.handshakeTimeout,
            options: { $0.channelOption(ChannelOptions.socketOption(.so_keepalive), value: 1) }
        ) { channel in
            try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: url.serverHostname))
            try Self.configureUpgrade(
                channel: channel, head: head, url: url, limits: limits, promise: promise, upgraded: upgraded, afterUpgrade: afterUpgrade)
        }.whenComplete { result in
            switch result {
            case .success(let channel):
                promise.futureResult.whenFailure { _ in channel.close(promise: nil) }
                channel.closeFuture.whenComplete { _ in
                    promise.fail(DialError(kind: .failed, message: "\(url): connection closed during the handshake"))
                }
            case .failure(let error as OutboundProxyError):
                promise.fail(DialError(kind: .failed, message: "\(url): \(error.message)"))
            case .failure(let error):
                promise.fail(DialError(kind: .failed, message: "\(url): \(describeConnectionError(error))"))
            }
        }
        return promise.futureResult
    }

    /// The HTTP/1 upgrade stage on a connected (TLS) channel: sends `head`, and on `101` runs
    /// `afterUpgrade` and succeeds `promise`; any other answer fails it with `DialError.rejected`.
    static func configureUpgrade<Result: Sendable>(
        channel: Channel, head: HTTPRequestHead, url: WebSocketURL, limits: TunnelLimits,
        promise: EventLoopPromise<(Channel, Result)>, upgraded: (@Sendable (HTTPHeaders) -> Void)? = nil,
        afterUpgrade: @escaping @Sendable (Channel) throws -> Result
    ) throws {
        let requester = UpgradeRequester(head: head, promise: promise, url: url)
        let upgrader = TunnelWebSocketClientUpgrader(maxFrameSize: limits.maxWebSocketFrameSize) { channel, responseHeaders in
            upgraded?(responseHeaders)
            do {
                channel.pipeline.syncOperations.removeHandler(requester).whenComplete { _ in }
                let result = try afterUpgrade(channel)
                promise.succeed((channel, result))
            } catch {
                promise.fail(DialError(kind: .failed, message: "\(url): tunnel setup failed: \(error)"))
                channel.close(promise: nil)
            }
            return channel.eventLoop.makeSucceededVoidFuture()
        }
        // Tunnel bytes can arrive in the same read as the 101 response: forward them, never drop them
        // (NIO's default drops them, which silently loses the peer's HTTP/2 preface).
        try channel.pipeline.syncOperations.addHTTPClientHandlers(
            leftOverBytesStrategy: .forwardBytes,
            withClientUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
        try channel.pipeline.syncOperations.addHandler(requester)
    }
}

/// Sends the upgrade request; if the relay answers anything but 101, fails the dial with the
/// status and the relay's message.
private final class UpgradeRequester: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let head: HTTPRequestHead
    private let fail: (DialError) -> Void
    private let url: WebSocketURL
    private var status: HTTPResponseStatus?
    private var body: ByteBuffer?

    init<R>(head: HTTPRequestHead, promise: EventLoopPromise<(Channel, R)>, url: WebSocketURL) {
        self.head = head
        self.fail = { promise.fail($0) }
        self.url = url
    }

    func handlerAdded(context: ChannelHandlerContext) {
        // Added to a connection that is already up (through a proxy): send now.
        if context.channel.isActive { self.sendRequest(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.sendRequest(context: context)
        context.fireChannelActive()
    }

    private var sent = false

    private func sendRequest(context: ChannelHandlerContext) {
        guard !self.sent else { return }
        self.sent = true
        context.write(self.wrapOutboundOut(.head(self.head)), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.status = head.status
        case .body(var bytes):
            if (self.body?.readableBytes ?? 0) < 4096 {
                if self.body == nil { self.body = bytes } else { self.body!.writeBuffer(&bytes) }
            }
        case .end:
            let status = self.status ?? .badRequest
            let message = self.body.flatMap { extractMessage($0) } ?? status.reasonPhrase
            self.fail(
                DialError(
                    kind: .rejected(status: status.code),
                    message: "\(self.url): relay refused the connection: \(status.code) \(message)", relayMessage: message))
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.fail(DialError(kind: .failed, message: "\(self.url): \(describeTLSError(error))"))
        context.close(promise: nil)
    }
}

/// The `message` of a relay JSON error body, or the body itself when short.
func extractMessage(_ body: ByteBuffer) -> String? {
    let text = String(buffer: body)
    if let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
        let message = object["message"] as? String
    {
        return message
    }
    let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
    return trimmed.isEmpty || trimmed.count > 200 ? nil : trimmed
}

/// Names certificate failures plainly: they are the ones operators must act on.
public func describeTLSError(_ error: Error) -> String { describeConnectionError(error) }
