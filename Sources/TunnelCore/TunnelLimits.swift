import NIOCore
import NIOHTTP2

/// Every bound on the tunnel wire, in one value type. Relay, connector and relayctl use the same
/// defaults; each can override them in its config (`limits:`). See docs/PROTOCOL.md.
public struct TunnelLimits: Sendable, Equatable {
    /// Largest websocket frame accepted from the peer (bytes). Bigger frames close the tunnel with 1009.
    public var maxWebSocketFrameSize: Int = 1 << 20
    /// Largest websocket frame this side writes (bytes); a flush of more bytes is split.
    public var maxOutboundWebSocketFrameSize: Int = 1 << 16
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS advertised by each side: requests in flight per tunnel.
    public var maxConcurrentStreams: Int = 256
    /// HTTP/2 per-stream flow-control window (bytes): what one slow reader can leave in flight.
    public var initialWindowSize: Int = 256 * 1024
    /// HTTP/2 connection-level flow-control window (bytes): what all streams of one tunnel can leave in flight.
    public var connectionWindowSize: Int = 4 << 20
    /// HTTP/2 SETTINGS_MAX_FRAME_SIZE (bytes, 16 KiB ... 16 MiB - 1).
    public var maxFrameSize: Int = 1 << 14
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE (bytes): request or response headers larger than this are refused.
    public var maxHeaderListSize: Int = 64 * 1024
    /// Time allowed for TCP connect + TLS + websocket upgrade.
    public var handshakeTimeout: TimeAmount = .seconds(10)
    /// A tunnel with no traffic sends an HTTP/2 PING after this long; no answer within the same time closes it.
    public var keepaliveInterval: TimeAmount = .seconds(20)

    public init() {}

    /// HTTP/2 settings this side advertises.
    public var http2Settings: HTTP2Settings {
        [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: self.maxConcurrentStreams),
            HTTP2Setting(parameter: .initialWindowSize, value: self.initialWindowSize),
            HTTP2Setting(parameter: .maxFrameSize, value: self.maxFrameSize),
            HTTP2Setting(parameter: .maxHeaderListSize, value: self.maxHeaderListSize),
            HTTP2Setting(parameter: .enablePush, value: 0),
        ]
    }

    public var connectionConfiguration: NIOHTTP2Handler.ConnectionConfiguration {
        var configuration = NIOHTTP2Handler.ConnectionConfiguration()
        configuration.initialSettings = self.http2Settings
        configuration.targetWindowSize = self.connectionWindowSize
        return configuration
    }

    public var streamConfiguration: NIOHTTP2Handler.StreamConfiguration {
        var configuration = NIOHTTP2Handler.StreamConfiguration()
        configuration.targetWindowSize = self.initialWindowSize
        // Writability of a stream channel flips at these marks: the most a stream buffers before
        // the proxy stops reading from the other side.
        configuration.outboundBufferSizeHighWatermark = 64 * 1024
        configuration.outboundBufferSizeLowWatermark = 16 * 1024
        return configuration
    }
}
