import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix

/// An HTTP proxy that outbound connections go through with CONNECT (customers' networks often
/// allow nothing else out). The credentials never appear in `description`.
public struct OutboundProxy: Sendable, Equatable, CustomStringConvertible, CustomReflectable {
    public var host: String
    public var port: Int
    public var username: String?
    /// Not in `description`, logs or errors.
    public var password: String?
    /// Hosts reached directly: `relay.lan` (that name and every name under it), `.lan` (the
    /// same), `*` (every host), or an exact IP address.
    public var noProxy: [String]

    public init(host: String, port: Int, username: String? = nil, password: String? = nil, noProxy: [String] = []) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.noProxy = noProxy
    }

    /// `http://host:port` (a user and password in it are taken as credentials).
    public init(url text: String, noProxy: [String] = []) throws {
        guard let url = URL(string: text), url.scheme?.lowercased() == "http", let host = url.host, !host.isEmpty else {
            throw OutboundProxyError(message: "the proxy must be an http:// URL with a host, as http://proxy.example.com:3128")
        }
        self.init(
            host: host, port: url.port ?? 80, username: url.user.flatMap { $0.removingPercentEncoding },
            password: url.password.flatMap { $0.removingPercentEncoding }, noProxy: noProxy)
    }

    /// `HTTPS_PROXY` (or `https_proxy`) and `NO_PROXY` (or `no_proxy`) from `environment`; nil
    /// when no proxy is set there.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> OutboundProxy? {
        guard let text = environment["HTTPS_PROXY"] ?? environment["https_proxy"], !text.isEmpty else { return nil }
        let noProxy = (environment["NO_PROXY"] ?? environment["no_proxy"] ?? "")
            .split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        do {
            return try OutboundProxy(url: text, noProxy: noProxy)
        } catch let error as OutboundProxyError {
            throw OutboundProxyError(message: "HTTPS_PROXY: \(error.message)")
        }
    }

    public var description: String {
        "http://\(self.host):\(self.port)" + (self.username.map { " (basic auth as \($0))" } ?? "")
    }

    /// `dump()` and debuggers show no password either.
    public var customMirror: Mirror {
        Mirror(self, children: ["host": self.host, "port": self.port, "username": self.username as Any, "noProxy": self.noProxy])
    }

    /// Whether connections to `host` go through the proxy (false: `no_proxy` names it).
    public func applies(to host: String) -> Bool {
        let host = host.lowercased()
        for entry in self.noProxy.map({ $0.lowercased() }) {
            if entry == "*" || entry == host { return false }
            let suffix = entry.hasPrefix("*.") ? String(entry.dropFirst()) : entry.hasPrefix(".") ? entry : "." + entry
            if host.hasSuffix(suffix) { return false }
        }
        return true
    }

    var authorization: String? {
        guard let username = self.username else { return nil }
        return "Basic " + Data("\(username):\(self.password ?? "")".utf8).base64EncodedString()
    }
}

/// Why a connection through the proxy failed, naming the proxy (never its credentials).
public struct OutboundProxyError: Error, CustomStringConvertible, Equatable {
    public var message: String
    public var description: String { self.message }
    public init(message: String) { self.message = message }
}

/// Opens outbound TCP connections, directly or through an `OutboundProxy`.
public enum OutboundConnection {
    /// A TCP connection to `host:port` (through `proxy` with CONNECT unless its `no_proxy` names
    /// the host), with `configure` run on it before any byte of the caller's flows: directly, as
    /// the channel is created; through a proxy, once it has said 200 to the CONNECT.
    public static func open(
        host: String, port: Int, proxy: OutboundProxy?, loop: EventLoop, timeout: TimeAmount,
        options: @escaping @Sendable (ClientBootstrap) -> ClientBootstrap = { $0 },
        configure: @escaping @Sendable (Channel) throws -> Void
    ) -> EventLoopFuture<Channel> {
        guard let proxy, proxy.applies(to: host) else {
            return options(ClientBootstrap(group: loop).connectTimeout(timeout))
                .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try configure(channel) } }
                .connect(host: host, port: port)
        }
        let target = "\(host):\(port)"
        var headers = HTTPHeaders()
        headers.add(name: "host", value: target)
        if let authorization = proxy.authorization { headers.add(name: "proxy-authorization", value: authorization) }
        let deadline = NIODeadline.now() + timeout
        return options(ClientBootstrap(group: loop).connectTimeout(timeout))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // One answer per connection attempt (a proxy name with several addresses is
                    // tried on each; only the attempt that connects is used).
                    let recorder = ProxyAnswerRecorder(answered: channel.eventLoop.makePromise())
                    try channel.pipeline.syncOperations.addHandlers([
                        HTTPRequestEncoder(), ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes)), recorder,
                        NIOHTTP1ProxyConnectHandler(
                            targetHost: host, targetPort: port, headers: headers, deadline: deadline, promise: recorder.answered),
                    ])
                }
            }
            .connect(host: proxy.host, port: proxy.port)
            .flatMapError { error in
                loop.makeFailedFuture(OutboundProxyError(message: "cannot reach the proxy \(proxy): \(describeConnectionError(error))"))
            }
            .flatMap { channel in
                let recorder: ProxyAnswerRecorder
                do {
                    recorder = try channel.pipeline.syncOperations.handler(type: ProxyAnswerRecorder.self)
                } catch {
                    channel.close(promise: nil)
                    return channel.eventLoop.makeFailedFuture(OutboundProxyError(message: "the proxy \(proxy) closed the connection at once"))
                }
                return recorder.answered.futureResult.flatMap {
                    // The proxy's HTTP is done: from here the bytes are the relay's. The HTTP
                    // decoder leaves once the read that ended the answer is over: wait for it.
                    let sync = channel.pipeline.syncOperations
                    let removed = [
                        (try? sync.context(handlerType: ProxyAnswerRecorder.self)).map { sync.removeHandler(context: $0) },
                        (try? sync.context(handlerType: ByteToMessageHandler<HTTPResponseDecoder>.self)).map { sync.removeHandler(context: $0) },
                        (try? sync.context(handlerType: HTTPRequestEncoder.self)).map { sync.removeHandler(context: $0) },
                    ].compactMap { $0 }
                    return EventLoopFuture.andAllSucceed(removed, on: channel.eventLoop).flatMapThrowing {
                        try configure(channel)
                        return channel
                    }
                }.flatMapError { error in
                    channel.close(promise: nil)
                    let message: String
                    switch recorder.status {
                    case .some(let status) where status == .proxyAuthenticationRequired || status == .unauthorized:
                        // 407 by the standard; some proxies (tinyproxy) say 401 to wrong credentials.
                        message = proxy.username == nil
                            ? "the proxy \(proxy) requires authentication (\(status.code)): set relay.proxy's username and password_file"
                            : "the proxy \(proxy) refused the credentials (\(status.code)): check relay.proxy's username and password"
                    case .some(let status):
                        message = "the proxy \(proxy) refused CONNECT to \(target): \(status.code) \(status.reasonPhrase)"
                    case nil:
                        message = "the proxy \(proxy) did not open a tunnel to \(target): \(error)"
                    }
                    return channel.eventLoop.makeFailedFuture(OutboundProxyError(message: message))
                }
            }
    }
}

/// Notes the status of the proxy's answer to CONNECT (NIOExtras' handler reports only that it
/// failed), and holds the promise of that answer for its connection.
private final class ProxyAnswerRecorder: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias InboundOut = HTTPClientResponsePart
    let answered: EventLoopPromise<Void>
    private let box = NIOLockedValueBox<HTTPResponseStatus?>(nil)

    init(answered: EventLoopPromise<Void>) { self.answered = answered }

    var status: HTTPResponseStatus? { self.box.withLockedValue { $0 } }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = self.unwrapInboundIn(data) { self.box.withLockedValue { $0 = head.status } }
        context.fireChannelRead(data)
    }
}
