import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import TunnelCore

/// A failed API call: the relay's status and message, or why the relay could not be reached.
public struct APIError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// The relay answered with this status; `code` is its machine-readable reason.
        case status(UInt, code: String)
        case unreachable
        case badResponse
    }
    public var kind: Kind
    public var message: String
    /// The call's `x-request-id` (sent with every call): the relay's log and audit trail have it.
    public var requestID: String?
    public var description: String { self.message }

    public var status: UInt? {
        if case .status(let status, _) = self.kind { return status }
        return nil
    }

    public var code: String? {
        if case .status(_, let code) = self.kind { return code }
        return nil
    }
}

/// Calls the relay's JSON API over HTTPS, trusting only the configured CA. One connection per call:
/// callers are a heartbeat a minute and an ops CLI, where simplicity beats connection reuse.
///
/// The same client speaks to the connector's control socket (a Unix socket, no TLS, no token).
public struct APIClient: Sendable {
    public let base: WebSocketURL
    private let tls: NIOSSLContext?
    private let socketPath: String?
    private let group: EventLoopGroup
    private let bearer: String?
    private let timeout: TimeAmount
    /// How errors name the other side.
    private let peer: String
    private let proxy: OutboundProxy?

    /// - Parameter base: `https://host:port` (a `wss://` URL of the same relay works too).
    /// - Parameter proxy: the HTTP proxy to reach the relay through (CONNECT), if any.
    public init(
        base: WebSocketURL, caFile: String?, caSetting: String = "relay.ca_file", bearer: String?, group: EventLoopGroup,
        timeout: TimeAmount = .seconds(15), proxy: OutboundProxy? = nil
    ) throws {
        self.proxy = proxy
        self.base = base
        self.tls = try TLSFiles.clientContext(caFile: caFile, setting: caSetting)
        self.socketPath = nil
        self.group = group
        self.bearer = bearer
        self.timeout = timeout
        self.peer = "the relay at \(base.httpsBase)"
    }

    /// A client of the HTTP/1.1 JSON endpoint on the Unix socket at `socketPath`.
    public init(socketPath: String, peer: String, group: EventLoopGroup, timeout: TimeAmount = .seconds(15)) throws {
        self.proxy = nil
        self.base = try WebSocketURL(parsing: "https://localhost:1", acceptHTTPS: true)
        self.tls = nil
        self.socketPath = socketPath
        self.group = group
        self.bearer = nil
        self.timeout = timeout
        self.peer = peer
    }

    /// Calls `endpoint` (`RelayEndpoints`) with its path parameters in order, a query, and its body.
    public func call<Request, Response>(
        _ endpoint: Endpoint<Request, Response>, _ parameters: String..., query: [(String, String?)] = [], body: Request
    ) async throws -> Response {
        try await self.call(endpoint.method, endpoint.template.path(parameters, query: query), body: body)
    }

    /// Calls an endpoint that takes no body.
    public func call<Response>(
        _ endpoint: Endpoint<NoBody, Response>, _ parameters: String..., query: [(String, String?)] = []
    ) async throws -> Response {
        try await self.call(endpoint.method, endpoint.template.path(parameters, query: query), body: endpoint.method == .GET ? nil : NoBody())
    }

    public func get<Response: Decodable>(_ path: String, as type: Response.Type = Response.self) async throws -> Response {
        try await self.call(.GET, path, body: Optional<Empty>.none)
    }

    public func post<Body: Encodable, Response: Decodable>(_ path: String, _ body: Body, as type: Response.Type = Response.self) async throws -> Response {
        try await self.call(.POST, path, body: body)
    }

    public func call<Body: Encodable, Response: Decodable>(_ method: HTTPMethod, _ path: String, body: Body?) async throws -> Response {
        let payload = try body.map { try APIJSON.encoder().encode($0) }
        let requestID = RequestID.current ?? RequestID.generate()
        let (status, data) = try await RequestID.$current.withValue(requestID) { try await self.send(method, path, body: payload) }
        guard (200..<300).contains(status) else {
            let error = try? APIJSON.decoder().decode(APIErrorBody.self, from: data)
            throw APIError(
                kind: .status(status, code: error?.error ?? "http_\(status)"),
                message: error?.message ?? "\(self.peer) answered \(status)", requestID: requestID)
        }
        do {
            return try APIJSON.decoder().decode(Response.self, from: data)
        } catch {
            throw APIError(kind: .badResponse, message: "the answer of \(self.peer) to \(path) could not be read: \(error)")
        }
    }

    /// Raw exchange: status and body bytes.
    public func send(_ method: HTTPMethod, _ path: String, body: Data?) async throws -> (UInt, Data) {
        let collector = ResponseCollector(promise: self.group.next().makePromise())
        let url = self.base
        let tls = self.tls
        let peer = self.peer
        let channel: Channel
        do {
            let configure: @Sendable (Channel) throws -> Void = { channel in
                if let tls {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: url.serverHostname))
                }
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                try channel.pipeline.syncOperations.addHandler(collector)
            }
            if let socketPath = self.socketPath {
                channel = try await ClientBootstrap(group: self.group).connectTimeout(self.timeout)
                    .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try configure(channel) } }
                    .connect(unixDomainSocketPath: socketPath).get()
            } else {
                channel = try await OutboundConnection.open(
                    host: url.host, port: url.port, proxy: self.proxy, loop: self.group.next(), timeout: self.timeout, configure: configure
                ).get()
            }
        } catch {
            let why = (error as? OutboundProxyError)?.message ?? describeConnectionError(error)
            let failure = APIError(kind: .unreachable, message: "cannot reach \(peer): \(why)")
            collector.fail(failure)  // its promise must complete even though no channel ever used it
            throw failure
        }
        let deadline = channel.eventLoop.scheduleTask(in: self.timeout) {
            collector.fail(APIError(kind: .unreachable, message: "\(peer) did not answer within \(self.timeout.nanoseconds / 1_000_000_000) s"))
            channel.close(promise: nil)
        }
        var headers = HTTPHeaders()
        headers.add(name: "host", value: self.socketPath == nil ? url.httpsBase.dropFirst("https://".count).description : "localhost")
        headers.add(name: "accept", value: "application/json")
        headers.add(name: "connection", value: "close")
        if let bearer = self.bearer { headers.add(name: "authorization", value: "Bearer \(bearer)") }
        if let id = RequestID.current { headers.add(name: RequestID.header, value: id) }
        if let body {
            headers.add(name: "content-type", value: "application/json")
            headers.add(name: "content-length", value: String(body.count))
        }
        let head = HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers)
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if let body { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil) }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        defer {
            deadline.cancel()
            channel.close(promise: nil)
        }
        do {
            // A cancelled caller (a connector shutting down) gives up the exchange at once.
            return try await withTaskCancellationHandler {
                try await collector.result.get()
            } onCancel: {
                channel.eventLoop.execute {
                    collector.fail(CancellationError())
                    channel.close(promise: nil)
                }
            }
        } catch let error as APIError {
            throw error
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw APIError(kind: .unreachable, message: "the connection to \(peer) failed: \(describeConnectionError(error))")
        }
    }

    private struct Empty: Encodable {}
}

/// Collects one response (bounded at 16 MiB: the API pages anything larger).
private final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    private let promise: EventLoopPromise<(UInt, Data)>
    private var status: UInt = 0
    private var body = Data()
    private var done = false

    init(promise: EventLoopPromise<(UInt, Data)>) { self.promise = promise }

    var result: EventLoopFuture<(UInt, Data)> { self.promise.futureResult }

    func fail(_ error: Error) {
        guard !self.done else { return }
        self.done = true
        self.promise.fail(error)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.status = head.status.code
        case .body(let buffer):
            self.body.append(contentsOf: buffer.readableBytesView)
            if self.body.count > 16 << 20 {
                self.fail(APIError(kind: .badResponse, message: "the relay's answer is larger than 16 MiB"))
                context.close(promise: nil)
            }
        case .end:
            guard !self.done else { return }
            self.done = true
            self.promise.succeed((self.status, self.body))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.fail(APIError(kind: .unreachable, message: "the relay closed the connection before answering"))
    }
}
