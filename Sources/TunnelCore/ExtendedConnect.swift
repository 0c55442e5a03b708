import NIOConcurrencyHelpers
import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2

// A component's websocket crosses both HTTP/2 links as one stream opened by an extended CONNECT
// (RFC 8441: `:method CONNECT`, `:protocol websocket`), whose DATA carries the websocket's bytes
// untouched both ways. NIO's HTTP/2 <-> HTTP/1 codecs do not carry `:protocol`, so on each side of
// a link it becomes an internal header (`WireHeader.connectProtocol`) between the codec and the
// proxy handlers, and back. The header never crosses a wire: every entry point drops copies of it.

extension WireHeader {
    /// Inside one process only: the `:protocol` of an extended CONNECT (`websocket`).
    public static let connectProtocol = "x-relay-connect-protocol"
}

extension HTTPRequestHead {
    /// An extended CONNECT opening a websocket (as the HTTP/2 server adapter presents it).
    public var opensWebSocket: Bool {
        self.method == .CONNECT && self.headers.first(name: WireHeader.connectProtocol)?.lowercased() == "websocket"
    }
}

/// In a stream's pipeline before `HTTP2FramePayloadToHTTP1ServerCodec`: the request's `:protocol`
/// becomes `WireHeader.connectProtocol`, and a copy of that header sent by the peer is dropped.
public final class ExtendedConnectServerAdapter: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = HTTP2Frame.FramePayload
    public typealias InboundOut = HTTP2Frame.FramePayload
    private var seenHead = false

    public init() {}

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.seenHead, case .headers(var headers) = self.unwrapInboundIn(data) else {
            context.fireChannelRead(data)
            return
        }
        self.seenHead = true
        let value = headers.headers.first(name: ":protocol")
        headers.headers.remove(name: WireHeader.connectProtocol)
        if let value {
            headers.headers.remove(name: ":protocol")
            headers.headers.add(name: WireHeader.connectProtocol, value: value)
        }
        context.fireChannelRead(self.wrapInboundOut(.headers(headers)))
    }
}

/// In a stream's pipeline after `HTTP2FramePayloadToHTTP1ClientCodec`: a request head carrying
/// `WireHeader.connectProtocol` leaves as an extended CONNECT with that `:protocol`.
public final class ExtendedConnectClientAdapter: ChannelOutboundHandler, RemovableChannelHandler {
    public typealias OutboundIn = HTTP2Frame.FramePayload
    public typealias OutboundOut = HTTP2Frame.FramePayload
    private var seenHead = false

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !self.seenHead, case .headers(var headers) = self.unwrapOutboundIn(data) else {
            context.write(data, promise: promise)
            return
        }
        self.seenHead = true
        if let value = headers.headers.first(name: WireHeader.connectProtocol) {
            // Pseudo-headers come first: `:protocol` goes right after the codec's.
            var rebuilt = HPACKHeaders()
            for (name, field, indexing) in headers.headers where name.hasPrefix(":") { rebuilt.add(name: name, value: field, indexing: indexing) }
            rebuilt.add(name: ":protocol", value: value)
            for (name, field, indexing) in headers.headers where !name.hasPrefix(":") && name != WireHeader.connectProtocol {
                rebuilt.add(name: name, value: field, indexing: indexing)
            }
            headers.headers = rebuilt
        }
        context.write(self.wrapOutboundOut(.headers(headers)), promise: promise)
    }
}

/// What the peer of an HTTP/2 connection announced in its first SETTINGS: whether it takes
/// extended CONNECT (RFC 8441). A client must not send `:protocol` before it knows.
public final class PeerSettings: Sendable {
    public enum Answer: Sendable, Equatable {
        case supported
        /// Its SETTINGS did not say so: an older version.
        case unsupported
        /// The connection closed before any SETTINGS came.
        case closed
        /// No SETTINGS within the wait (a peer must send them first; one that does not is broken).
        case silent
    }

    private let state = NIOLockedValueBox<(known: Answer?, waiting: [EventLoopPromise<Answer>])>((nil, []))

    public init() {}

    /// The peer's answer, once known; `.silent` after `wait` without one (its SETTINGS come with
    /// its preface, at once on a live connection).
    public func extendedConnect(on loop: EventLoop, wait: TimeAmount = .seconds(10)) -> EventLoopFuture<Answer> {
        let promise = loop.makePromise(of: Answer.self)
        let known = self.state.withLockedValue { state -> Answer? in
            if state.known == nil { state.waiting.append(promise) }
            return state.known
        }
        if let known {
            promise.succeed(known)
        } else {
            let timeout = loop.scheduleTask(in: wait) {
                let stillWaiting = self.state.withLockedValue { state in
                    guard let index = state.waiting.firstIndex(where: { $0.futureResult === promise.futureResult }) else { return false }
                    state.waiting.remove(at: index)
                    return true
                }
                if stillWaiting { promise.succeed(.silent) }
            }
            promise.futureResult.whenComplete { _ in timeout.cancel() }
        }
        return promise.futureResult
    }

    func learned(_ answer: Answer) {
        let waiting = self.state.withLockedValue { state -> [EventLoopPromise<Answer>] in
            guard state.known == nil else { return [] }
            state.known = answer
            defer { state.waiting = [] }
            return state.waiting
        }
        waiting.forEach { $0.succeed(answer) }
    }

    /// Reads the first SETTINGS frame on the connection (root-stream frames reach the handlers
    /// after NIOHTTP2's, once it has applied them).
    func observe(_ frame: HTTP2Frame) {
        guard case .settings(.settings(let settings)) = frame.payload else { return }
        self.learned(settings.contains { $0.parameter == .enableConnectProtocol && $0.value == 1 } ? .supported : .unsupported)
    }

    /// The refusal for a websocket the peer cannot take (nil when it can). `peer` names it for the
    /// engineer ("the relay", "the connector on node n1 of cluster "demo"").
    public static func refusal(_ answer: Answer, peer: String) -> ProxyRefusal? {
        switch answer {
        case .supported:
            return nil
        case .unsupported:
            return ProxyRefusal(stream: .websocketUnsupported, "\(peer) does not carry websockets (too old a version)")
        case .closed:
            return ProxyRefusal.badGateway("the connection to \(peer) closed before it said whether it carries websockets; try again")
        case .silent:
            return ProxyRefusal.badGateway("\(peer) sent no HTTP/2 settings within 10 s; try again")
        }
    }
}

/// After an HTTP/1 websocket upgrade on a TCP connection, in place of the HTTP codec: the
/// connection's bytes become body parts for the proxy handler and its body parts become bytes; the
/// end of the input (the peer's half-close) ends the message, the end of ours half-closes the
/// output. On relayctl's local port the parts are a request's (`UpgradedServerBytes`); on the
/// connector's connection to a component, after its `101`, a response's (`UpgradedClientBytes`).
public final class UpgradedBytes<InboundHead: Equatable, OutboundHead: Equatable>: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = HTTPPart<InboundHead, ByteBuffer>
    public typealias OutboundIn = HTTPPart<OutboundHead, IOData>
    public typealias OutboundOut = ByteBuffer
    private var inputEnded = false
    private var context: ChannelHandlerContext?

    public init() {}

    public func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    public func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// Hands the proxy the head that stands for the upgrade's answer (the connector's `200` for
    /// the component's `101`); call once, after adding this handler.
    public func deliver(_ head: InboundHead) {
        self.context?.fireChannelRead(self.wrapInboundOut(.head(head)))
        self.context?.fireChannelReadComplete()  // the proxy flushes what it wrote on a read's completion
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(self.wrapInboundOut(.body(self.unwrapInboundIn(data))))
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event, !self.inputEnded {
            self.inputEnded = true
            context.fireChannelRead(self.wrapInboundOut(.end(nil)))
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch self.unwrapOutboundIn(data) {
        case .head: promise?.succeed(())  // the handshake went out before this handler came in
        case .body(.byteBuffer(let bytes)): context.write(self.wrapOutboundOut(bytes), promise: promise)
        case .body: promise?.fail(ChannelError.operationUnsupported)
        case .end: context.close(mode: .output, promise: promise)
        }
    }
}

public typealias UpgradedServerBytes = UpgradedBytes<HTTPRequestHead, HTTPResponseHead>
public typealias UpgradedClientBytes = UpgradedBytes<HTTPResponseHead, HTTPRequestHead>
