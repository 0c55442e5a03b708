import NIOCore
import NIOHTTP1
import TunnelCore

/// Carries a browser's websocket through the session. On the local port it is an HTTP/1.1
/// upgrade; towards the relay it is an extended CONNECT (`WireHeader.connectProtocol`) whose
/// bodies carry the websocket's bytes untouched. When the relay answers 2xx (the component
/// accepted), this answers the browser `101` with its own `Sec-WebSocket-Accept` and swaps the
/// HTTP codec for `UpgradedServerBytes`; any other answer goes to the browser as it is, and the
/// connection closes after it (NIO's HTTP decoder reads nothing after an upgrade request).
///
/// A web page the engineer visits could open `ws://127.0.0.1:PORT` and ride the session
/// (websockets have no CORS): `LocalAccess`, in front, refuses an `Origin` that is not this port's.
final class LocalWebSocketBridge: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case plain
        /// The upgrade went to the relay; the browser's key answers the 101.
        case opening(key: String, heldEnd: Bool)
        /// The relay refused: the response passes, the request's end is released.
        case refused
        case upgraded
    }

    private var state = State.plain
    /// Handlers of ours in front of this one that only know HTTP parts, removed with NIO's
    /// HTTP/1 server handlers once the browser has its 101.
    private let httpOnly: [RemovableChannelHandler]

    init(httpOnly: [RemovableChannelHandler]) {
        self.httpOnly = httpOnly
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch (self.unwrapInboundIn(data), self.state) {
        case (.head(var head), .plain):
            // Only this handler may mark a request as a websocket.
            head.headers.remove(name: WireHeader.connectProtocol)
            guard Self.isUpgrade(head) else {
                context.fireChannelRead(self.wrapInboundOut(.head(head)))
                return
            }
            guard head.method == .GET, head.version == .http1_1, head.headers.first(name: "sec-websocket-version") == "13",
                let key = head.headers.first(name: "sec-websocket-key"), !key.isEmpty
            else {
                return self.refuse(context, ProxyRefusal(stream: .badWebSocketUpgrade, "a websocket upgrade needs GET, HTTP/1.1, Sec-WebSocket-Version 13 and a Sec-WebSocket-Key"))
            }
            self.state = .opening(key: key, heldEnd: false)
            head.method = .CONNECT
            head.headers.remove(name: "sec-websocket-key")
            head.headers.remove(name: "upgrade")
            head.headers.replaceOrAdd(name: "connection", value: "close")  // hop-by-hop: ends this connection with the websocket
            head.headers.add(name: WireHeader.connectProtocol, value: "websocket")
            context.fireChannelRead(self.wrapInboundOut(.head(head)))
        case (.end, .opening(let key, _)):
            // The decoder ends an upgrade request at once; the websocket's input ends when the browser closes it.
            self.state = .opening(key: key, heldEnd: true)
        case (.body, .opening):
            break  // a browser sends nothing before its 101
        default:
            context.fireChannelRead(data)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .opening(let key, let heldEnd) = self.state, case .head(let answer) = self.unwrapOutboundIn(data) else {
            context.write(data, promise: promise)
            return
        }
        guard (200..<300).contains(answer.status.code) else {
            self.state = .refused
            var head = answer
            head.headers.replaceOrAdd(name: "connection", value: "close")
            context.write(self.wrapOutboundOut(.head(head)), promise: promise)
            if heldEnd {
                let loop = context.eventLoop
                loop.execute { context.fireChannelRead(self.wrapInboundOut(.end(nil))) }
            }
            return
        }
        var headers = HTTPHeaders([
            ("upgrade", "websocket"), ("connection", "upgrade"),
            ("sec-websocket-accept", WebSocketHandshake.acceptValue(for: key)),
        ])
        // What the component chose of what the browser offered; the frames pass untouched, so it holds end to end.
        for name in ["sec-websocket-protocol", "sec-websocket-extensions"] {
            for value in answer.headers[name] { headers.add(name: name, value: value) }
        }
        self.state = .upgraded
        context.writeAndFlush(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .switchingProtocols, headers: headers))), promise: promise)
        do {
            let pipeline = context.pipeline.syncOperations
            // What `configureHTTPServerPipeline` added (found by type: it does not hand them out).
            let http: [RemovableChannelHandler?] = [
                try? pipeline.handler(type: HTTPResponseEncoder.self), try? pipeline.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self),
                try? pipeline.handler(type: HTTPServerPipelineHandler.self), try? pipeline.handler(type: NIOHTTPResponseHeadersValidator.self),
                try? pipeline.handler(type: HTTPServerProtocolErrorHandler.self),
            ]
            for handler in http.compactMap({ $0 }) + self.httpOnly { pipeline.removeHandler(handler, promise: nil) }
            try pipeline.addHandler(UpgradedServerBytes(), position: .first)
            // The browser's close of its side ends the request; the rest of the answer still goes out.
            _ = context.channel.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
        } catch {
            context.close(promise: nil)
        }
    }

    /// An HTTP/1.1 request asking to become a websocket (RFC 6455 4.1).
    static func isUpgrade(_ head: HTTPRequestHead) -> Bool {
        let upgrade = head.headers[canonicalForm: "upgrade"].contains { $0.lowercased() == "websocket" }
        let connection = head.headers[canonicalForm: "connection"].contains { $0.lowercased() == "upgrade" }
        return upgrade && connection
    }

    private func refuse(_ context: ChannelHandlerContext, _ refusal: ProxyRefusal) {
        self.state = .refused
        let body = refusal.body(allocator: context.channel.allocator)
        var head = refusal.responseHead(version: .http1_1, bodyLength: body.readableBytes)
        head.headers.replaceOrAdd(name: "connection", value: "close")
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }
}
