import Logging
import NIOCore
import NIOHTTP2
import NIOSSL
import NIOWebSocket

/// Sets up a tunnel on a channel whose websocket upgrade just completed: the byte-stream adapter,
/// then HTTP/2 with the limits both sides agreed to configure.
public enum TunnelPipeline {
    /// Must run on the channel's event loop (websocket upgrade callbacks do).
    public static func configure(
        channel: Channel,
        websocketRole: WebSocketByteStreamHandler.Role,
        http2Mode: NIOHTTP2Handler.ParserMode,
        link: TunnelLink,
        limits: TunnelLimits,
        logger: Logger? = nil,
        drains: Bool = false,
        onPeerClosed: (@Sendable (WebSocketPeerClosed) -> Void)? = nil,
        onFlood: (@Sendable (String) -> Void)? = nil,
        onGoAway: (@Sendable () -> Void)? = nil,
        peerSettings: PeerSettings? = nil,
        inboundStreamInitializer: @escaping NIOChannelInitializer
    ) throws -> NIOHTTP2Handler.StreamMultiplexer {
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(
            WebSocketByteStreamHandler(
                role: websocketRole, maxOutboundFrameSize: limits.maxOutboundWebSocketFrameSize,
                keepaliveInterval: limits.keepaliveInterval, keepaliveTimeout: limits.keepaliveTimeout))
        // A server's graceful drain (ChannelShouldQuiesceEvent): GOAWAY, a PING to learn which
        // streams the peer opened meanwhile, a second GOAWAY naming the last one served, then close
        // once they end. It counts streams through the stream delegate (the inline multiplexer
        // fires no stream events down the pipeline). The bound on the drain is the caller's.
        let drainer = drains ? NIOHTTP2ServerConnectionManagementHandler(
            eventLoop: channel.eventLoop, configuration: .init(maxIdleTime: nil, maxAge: nil, maxGraceTime: nil, keepalive: nil)) : nil
        precondition(!drains || http2Mode == .server, "only the side that accepts streams drains them")
        let multiplexer = try sync.configureHTTP2Pipeline(
            mode: http2Mode,
            connectionConfiguration: limits.connectionConfiguration(link),
            streamConfiguration: limits.streamConfiguration(link),
            streamDelegate: drainer?.http2StreamDelegate,
            inboundStreamInitializer: inboundStreamInitializer)
        if let drainer { try sync.addHandler(drainer) }
        try sync.addHandler(
            TunnelErrorHandler(link: link, logger: logger, onPeerClosed: onPeerClosed, onFlood: onFlood, onGoAway: onGoAway, peerSettings: peerSettings))
        return multiplexer
    }

    /// Tells the peer, with an HTTP/2 GOAWAY, that this side opens no more streams of its own
    /// accord and takes none of the peer's: for the side that opens streams (the relay on a
    /// tunnel), a notice that it is draining. Call on the channel's event loop.
    public static func sayGoingAway(_ channel: Channel) {
        let frame = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: .rootStream, errorCode: .noError, opaqueData: nil))
        channel.writeAndFlush(frame, promise: nil)
    }

    /// Opens one request stream on an HTTP/2 client connection, carrying `upstream` (one proxied
    /// request). Call on the connection's event loop.
    public static func openRequestStream(
        on multiplexer: NIOHTTP2Handler.StreamMultiplexer, loop: EventLoop, upstream: ProxyUpstreamHandler
    ) -> EventLoopFuture<Void> {
        let promise = loop.makePromise(of: Channel.self)
        multiplexer.createStreamChannel(promise: promise) { stream in
            stream.eventLoop.makeCompletedFuture {
                upstream.whenDone = .leaveOpen
                try stream.pipeline.syncOperations.addHandlers([
                    ExtendedConnectClientAdapter(), HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .https), upstream,
                ])
            }
        }
        return promise.futureResult.map { _ in }
    }

    /// For the side that never accepts streams from its peer: the stream is reset at once.
    public static let refuseInboundStreams: NIOChannelInitializer = { channel in
        channel.close(promise: nil)
        return channel.eventLoop.makeSucceededVoidFuture()
    }
}

/// Last in a tunnel's connection pipeline. NIOHTTP2 reports a bad stream here too, after resetting
/// that stream (RST_STREAM): such errors are logged and the tunnel goes on, so one malformed request
/// fails alone (NIOHTTP2 escalates a flood of them to a connection error itself). Anything else is
/// a connection error (NIOHTTP2 has sent GOAWAY, or the websocket or TLS failed): close the tunnel
/// rather than leave a connection that will never carry a request again. Also reports the peer's
/// close code and reason (for example: why the relay ended a session).
final class TunnelErrorHandler: ChannelInboundHandler {
    typealias InboundIn = Any
    private let link: TunnelLink
    private let logger: Logger?
    private let onPeerClosed: (@Sendable (WebSocketPeerClosed) -> Void)?
    private let onFlood: (@Sendable (String) -> Void)?
    private let onGoAway: (@Sendable () -> Void)?
    private let peerSettings: PeerSettings?

    init(
        link: TunnelLink, logger: Logger?, onPeerClosed: (@Sendable (WebSocketPeerClosed) -> Void)?, onFlood: (@Sendable (String) -> Void)?,
        onGoAway: (@Sendable () -> Void)?, peerSettings: PeerSettings?
    ) {
        self.link = link
        self.logger = logger
        self.onPeerClosed = onPeerClosed
        self.onFlood = onFlood
        self.onGoAway = onGoAway
        self.peerSettings = peerSettings
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Connection-level frames end here; a GOAWAY means the peer is draining this connection.
        if let frame = self.unwrapInboundIn(data) as? HTTP2Frame {
            if case .goAway = frame.payload { self.onGoAway?() }
            self.peerSettings?.observe(frame)
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.peerSettings?.learned(.closed)
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let closed = event as? WebSocketPeerClosed { self.onPeerClosed?(closed) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if Self.isStreamScoped(error) {
            self.logger?.info("stream reset after a protocol error", metadata: ["error": "\(error)"])
            return
        }
        let what = self.link == .tunnel ? "tunnel" : "session"
        let peer = context.channel.remoteAddress?.display ?? "?"
        if case NIOSSLError.uncleanShutdown = error {
            // The peer went away without TLS's goodbye (a killed process, a dropped network): not a protocol error.
            self.logger?.info("\(what) peer went away without closing", metadata: ["peer": "\(peer)"])
            context.close(promise: nil)
            return
        }
        if let gone = error as? WebSocketByteStreamError, gone.code == .goingAway {
            // The keepalive gave up on a silent peer (half-open): not a protocol error.
            // WebSocketByteStreamHandler closes the socket itself, skipping TLS's goodbye.
            self.logger?.notice("\(what) peer taken for gone", metadata: ["peer": "\(peer)", "why": "\(gone.reason)"])
            return
        }
        self.logger?.notice("closing \(what) after a protocol error", metadata: ["peer": "\(peer)", "error": "\(error)"])
        if let flood = Self.floodDescription(error) {
            // Say why in the close frame (4004), so the peer's user learns what they did.
            let reason = "closed for flooding: \(flood)"
            if let onFlood = self.onFlood {
                onFlood(reason)
            } else {
                context.channel.triggerUserOutboundEvent(WebSocketCloseRequest(code: WireCloseCode.flood, reason: reason), promise: nil)
            }
            return
        }
        context.close(promise: nil)
    }

    /// NIOHTTP2's denial-of-service verdicts (it has sent GOAWAY ENHANCE_YOUR_CALM), in words.
    static func floodDescription(_ error: Error) -> String? {
        switch error {
        case is NIOHTTP2Errors.ExcessiveRSTFrames: "too many cancelled requests (stream resets) in \(TunnelLimits.resetWindow.nanoseconds / 1_000_000_000) s"
        case is NIOHTTP2Errors.ExcessiveStreamErrors: "too many malformed requests in \(TunnelLimits.resetWindow.nanoseconds / 1_000_000_000) s"
        case is NIOHTTP2Errors.ExcessiveControlFrames: "too many HTTP/2 control frames"
        case is NIOHTTP2Errors.ExcessiveEmptyDataFrames: "too many empty data frames"
        default: nil
        }
    }
}

extension TunnelErrorHandler {
    /// NIOHTTP2's errors that concern one stream only (header validation, content length, a frame
    /// for a closed stream). Unknown errors count as connection errors: closing is the safe default.
    static func isStreamScoped(_ error: Error) -> Bool {
        switch error {
        case is NIOHTTP2Errors.StreamError, is NIOHTTP2Errors.InvalidPseudoHeaders, is NIOHTTP2Errors.MissingPseudoHeader,
            is NIOHTTP2Errors.DuplicatePseudoHeader, is NIOHTTP2Errors.PseudoHeaderAfterRegularHeader, is NIOHTTP2Errors.ForbiddenHeaderField,
            is NIOHTTP2Errors.InvalidHTTP2HeaderFieldName, is NIOHTTP2Errors.UnsupportedPseudoHeader, is NIOHTTP2Errors.InvalidStatusValue,
            is NIOHTTP2Errors.ContentLengthHeadersMismatch, is NIOHTTP2Errors.ContentLengthViolated,
            is NIOHTTP2Errors.ContentLengthHeaderNegative, is NIOHTTP2Errors.ContentLengthHeaderMalformedValue,
            is NIOHTTP2Errors.TrailersWithoutEndStream, is NIOHTTP2Errors.StreamClosed, is NIOHTTP2Errors.NoSuchStream,
            is NIOHTTP2Errors.MissingHostHeader, is NIOHTTP2Errors.CreatedStreamAfterGoaway:
            return true
        default:
            return false
        }
    }
}
