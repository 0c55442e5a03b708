import NIOCore
import NIOHTTP1
import NIOPosix
import TunnelCore

/// Opens the connection to a component `PrivacyGuard` let a stream through to. The relay can only
/// name a component; the address comes from the connector's own config, never from the request.
struct ComponentOpener: Sendable {
    let connectTimeout: TimeAmount
    let pool: ComponentConnectionPool
    /// How long a component may take to start answering a request it accepted.
    let responseTimeout: TimeAmount
    let deadlines: Deadlines

    init(
        connectTimeout: TimeAmount = .seconds(5), pool: ComponentConnectionPool = ComponentConnectionPool(),
        responseTimeout: TimeAmount = .seconds(60), deadlines: Deadlines = .eventLoop
    ) {
        self.connectTimeout = connectTimeout
        self.pool = pool
        self.responseTimeout = responseTimeout
        self.deadlines = deadlines
    }

    /// `head.uri` is the policy's normalised origin-form target.
    func open(_ head: HTTPRequestHead, _ upstream: ProxyUpstreamHandler, component: Component) -> EventLoopFuture<HTTPRequestHead> {
        let loop = upstream.downstreamEventLoop
        var forwarded = head
        forwarded.version = .http1_1
        forwarded.uri = component.basePath + head.uri
        forwarded.headers.replaceOrAdd(name: "host", value: component.authority)
        self.prepare(upstream, component: component)
        if let idle = self.pool.take(component: Self.poolKey(component), loop: loop) {
            do {
                try idle.pipeline.syncOperations.addHandler(upstream)
                // The component may be closing this idle connection right now (its keep-alive
                // timeout): a request it never answers goes once more on a fresh one.
                let sent = forwarded
                upstream.freshRetry = { fresh in
                    self.prepare(fresh, component: component)
                    return self.connect(sent, fresh, component: component)
                }
                return loop.makeSucceededFuture(forwarded)
            } catch {
                idle.close(promise: nil)
            }
        }
        return self.connect(forwarded, upstream, component: component)
    }

    /// A websocket: always a new connection, upgraded with the component's own handshake, never
    /// pooled; the component must answer the upgrade within the response timeout. `head` is the
    /// upgrade's GET with what the engineer's browser offered (version, subprotocols, extensions).
    func openWebSocket(_ head: HTTPRequestHead, _ upstream: ProxyUpstreamHandler, component: Component) -> EventLoopFuture<HTTPRequestHead> {
        var forwarded = head
        forwarded.version = .http1_1
        forwarded.uri = component.basePath + head.uri
        forwarded.headers.replaceOrAdd(name: "host", value: component.authority)
        forwarded.headers.remove(name: "sec-websocket-key")  // the connector's own handshake with the component
        // The upgrade's GET has no body: nothing may frame the websocket's bytes as one.
        forwarded.headers.remove(name: "content-length")
        forwarded.headers.remove(name: "transfer-encoding")
        self.prepare(upstream, component: component)
        upstream.whenDone = .close
        upstream.responseDeadlineFromHead = true
        upstream.expectsUpgrade = true
        return self.connect(forwarded, upstream, component: component) { pipeline in
            // The component's frames can come in the same read as its 101: forwarded, never dropped.
            try pipeline.addHTTPClientHandlers(
                leftOverBytesStrategy: .forwardBytes,
                withClientUpgrade: (upgraders: [ComponentWebSocketUpgrader(upstream: upstream)], completionHandler: { _ in }))
        }
    }

    /// Pooled connections are per address: a reload that moves a component never reuses the old one.
    private static func poolKey(_ component: Component) -> String { "\(component.name) \(component.authority)" }

    /// What every connection to a component does with its request's end, its response and its errors.
    private func prepare(_ upstream: ProxyUpstreamHandler, component: Component) {
        let pool = self.pool
        let key = Self.poolKey(component)
        upstream.whenDone = .release { channel in pool.release(channel, component: key) }
        upstream.stripsRelayOwnedResponseHeaders = true
        upstream.nextHop = "component \"\(component.name)\""
        upstream.responseDeadline = .init(deadlines: self.deadlines, timeout: self.responseTimeout, what: "component \"\(component.name)\"")
    }

    /// A new connection to the component, carrying `upstream` behind the HTTP/1 client handlers
    /// `http` adds.
    private func connect(
        _ forwarded: HTTPRequestHead, _ upstream: ProxyUpstreamHandler, component: Component,
        http: @escaping @Sendable (ChannelPipeline.SynchronousOperations) throws -> Void = { try $0.addHTTPClientHandlers() }
    ) -> EventLoopFuture<HTTPRequestHead> {
        let name = component.name
        return ClientBootstrap(group: upstream.downstreamEventLoop)
            .connectTimeout(self.connectTimeout)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try http(channel.pipeline.syncOperations)
                    try channel.pipeline.syncOperations.addHandler(upstream)
                }
            }
            .connect(host: component.host, port: component.port)
            .map { _ in forwarded }
            .flatMapErrorThrowing { _ in
                // The component's address stays on the customer's side: the expert sees the name only.
                throw ProxyRefusal.badGateway("component \"\(name)\" is not reachable from the connector")
            }
    }
}

extension HTTPHeaders {
    /// The connector's own X-Forwarded-* (any the expert sent were stripped by the policy): the
    /// expert's address as the relay saw it, the HTTPS the request arrived by, the component name
    /// the expert addressed.
    mutating func addForwardedFor(expertAddress: String?, component: String) {
        if let address = expertAddress, (try? SocketAddress(ipAddress: address, port: 0)) != nil {
            self.add(name: "x-forwarded-for", value: address)
        }
        self.add(name: "x-forwarded-proto", value: "https")
        self.add(name: "x-forwarded-host", value: component)
    }
}

/// The connector's side of a component's websocket handshake (RFC 6455 4.1): its own key, the
/// component's `Sec-WebSocket-Accept` checked. Once upgraded, the connection carries bytes
/// (`UpgradedClientBytes`) and the proxy sees a `200` with what the component chose.
final class ComponentWebSocketUpgrader: NIOHTTPClientProtocolUpgrader {
    let supportedProtocol = "websocket"
    let requiredUpgradeHeaders: [String] = []
    private let key = WebSocketHandshake.newKey()
    private let upstream: ProxyUpstreamHandler

    init(upstream: ProxyUpstreamHandler) { self.upstream = upstream }

    func addCustom(upgradeRequestHeaders: inout HTTPHeaders) {
        upgradeRequestHeaders.replaceOrAdd(name: "sec-websocket-key", value: self.key)
        upgradeRequestHeaders.replaceOrAdd(name: "sec-websocket-version", value: "13")
    }

    func shouldAllowUpgrade(upgradeResponse: HTTPResponseHead) -> Bool {
        upgradeResponse.headers["sec-websocket-accept"] == [WebSocketHandshake.acceptValue(for: self.key)]
    }

    func upgrade(context: ChannelHandlerContext, upgradeResponse: HTTPResponseHead) -> EventLoopFuture<Void> {
        context.eventLoop.makeCompletedFuture {
            let bytes = UpgradedClientBytes()
            try context.pipeline.syncOperations.addHandler(bytes, position: .before(self.upstream))
            // From here a close of the component's side ends the websocket's output only (before
            // the 101 it ends the connection: no answer is coming).
            try context.channel.syncOptions?.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            self.upstream.upgraded()
            var headers = HTTPHeaders()
            for name in ["sec-websocket-protocol", "sec-websocket-extensions"] {
                for value in upgradeResponse.headers[name] { headers.add(name: name, value: value) }
            }
            bytes.deliver(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))
        }
    }
}
