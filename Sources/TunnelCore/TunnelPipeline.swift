import NIOCore
import NIOHTTP2
import NIOWebSocket

/// Sets up a tunnel on a channel whose websocket upgrade just completed: the byte-stream adapter,
/// then HTTP/2 with the limits both sides agreed to configure.
public enum TunnelPipeline {
    /// Must run on the channel's event loop (websocket upgrade callbacks do).
    public static func configure(
        channel: Channel,
        websocketRole: WebSocketByteStreamHandler.Role,
        http2Mode: NIOHTTP2Handler.ParserMode,
        limits: TunnelLimits,
        inboundStreamInitializer: @escaping NIOChannelInitializer
    ) throws -> NIOHTTP2Handler.StreamMultiplexer {
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(
            WebSocketByteStreamHandler(
                role: websocketRole, maxOutboundFrameSize: limits.maxOutboundWebSocketFrameSize,
                keepaliveInterval: limits.keepaliveInterval))
        return try sync.configureHTTP2Pipeline(
            mode: http2Mode,
            connectionConfiguration: limits.connectionConfiguration,
            streamConfiguration: limits.streamConfiguration,
            inboundStreamInitializer: inboundStreamInitializer)
    }

    /// For the side that never accepts streams from its peer: the stream is reset at once.
    public static let refuseInboundStreams: NIOChannelInitializer = { channel in
        channel.close(promise: nil)
        return channel.eventLoop.makeSucceededVoidFuture()
    }
}
