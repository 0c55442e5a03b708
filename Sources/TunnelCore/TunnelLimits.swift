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
    /// A tunnel or session with no inbound frame for this long sends a websocket ping.
    public var keepaliveInterval: TimeAmount = .seconds(10)
    /// With no inbound frame for this long (the pong included) the peer is taken for gone (a
    /// half-open connection: it vanished without FIN or RST) and the connection closes:
    /// its streams fail, the connector redials. The socket just closes: no close frame, no TLS goodbye.
    public var keepaliveTimeout: TimeAmount = .seconds(25)
    /// Stream resets (RST_STREAM) a tunnel accepts from its peer per `resetWindow`. A tunnel carries
    /// every expert of a cluster and both ends are authenticated, so this is sized for several
    /// sessions cancelling at full rate at once (NIOHTTP2's own default, 200, let one engineer's
    /// clicking close everyone's tunnel). NIOHTTP2 keeps one time stamp per counted reset, allocated
    /// up front: 8 bytes per unit of budget per tunnel.
    public var tunnelResetBudget: Int = 10_000
    /// Stream resets one expert's session may send per `resetWindow` (a browser cancels a download
    /// on every click away). Beyond it the relay closes that session alone, with close code 4004.
    /// Several sessions at this rate fit in one tunnel's budget.
    public var sessionResetBudget: Int = 1_500
    /// The window both reset budgets count in.
    public static let resetWindow: TimeAmount = .seconds(30)
    /// Bytes of request body a hop reads and drops after it has answered (a refused upload), so
    /// that the stream ends cleanly instead of being reset; beyond this the stream is reset.
    public var refusedBodyDrainLimit: Int = 1 << 20
    /// What the relay adds to a request on its way from a session into a tunnel (identity headers,
    /// well under this): sessions get a header-list limit this much smaller than tunnels, so no
    /// expert request can exceed the tunnel's limit (an HPACK error there would close the tunnel).
    public static let relayHeaderHeadroom = 4096

    public init() {}

    /// Header-list limit of expert sessions (relayctl <-> relay).
    public var sessionHeaderListSize: Int { max(1024, self.maxHeaderListSize - Self.relayHeaderHeadroom) }

    /// HTTP/2 settings this side advertises on `link`.
    public func http2Settings(_ link: TunnelLink) -> HTTP2Settings {
        [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: self.maxConcurrentStreams),
            HTTP2Setting(parameter: .initialWindowSize, value: self.initialWindowSize),
            HTTP2Setting(parameter: .maxFrameSize, value: self.maxFrameSize),
            HTTP2Setting(parameter: .maxHeaderListSize, value: link == .tunnel ? self.maxHeaderListSize : self.sessionHeaderListSize),
            HTTP2Setting(parameter: .enablePush, value: 0),
            // Websockets cross as extended CONNECT streams (RFC 8441; ExtendedConnect.swift).
            HTTP2Setting(parameter: .enableConnectProtocol, value: 1),
        ]
    }

    public func connectionConfiguration(_ link: TunnelLink) -> NIOHTTP2Handler.ConnectionConfiguration {
        var configuration = NIOHTTP2Handler.ConnectionConfiguration()
        configuration.initialSettings = self.http2Settings(link)
        configuration.targetWindowSize = self.connectionWindowSize
        // A late frame for a stream reset more than this many resets ago is a connection error
        // in NIOHTTP2 (default 32): with hundreds of streams cancelled at once that closed tunnels.
        configuration.maximumRecentlyResetStreams = max(1024, 4 * self.maxConcurrentStreams)
        // NIOHTTP2 counts stream errors over a connection's whole life (default 200): a tunnel
        // that runs for months must not die of old, unrelated errors. Bursts are bounded below.
        configuration.maximumConnectionGlitches = Int.max
        return configuration
    }

    public func streamConfiguration(_ link: TunnelLink) -> NIOHTTP2Handler.StreamConfiguration {
        var configuration = NIOHTTP2Handler.StreamConfiguration()
        let budget = link == .tunnel ? self.tunnelResetBudget : self.sessionResetBudget
        configuration.streamResetFrameRateLimit.maximumCount = budget
        configuration.streamResetFrameRateLimit.windowLength = Self.resetWindow
        configuration.streamErrorRateLimit.maximumCount = budget
        configuration.streamErrorRateLimit.windowLength = Self.resetWindow
        configuration.targetWindowSize = self.initialWindowSize
        // Writability of a stream channel flips at these marks: the most a stream buffers before
        // the proxy stops reading from the other side.
        configuration.outboundBufferSizeHighWatermark = 64 * 1024
        configuration.outboundBufferSizeLowWatermark = 16 * 1024
        return configuration
    }
}

/// The two kinds of HTTP/2-over-websocket connection, which get different budgets.
public enum TunnelLink: Sendable, Equatable {
    /// Connector <-> relay: carries every expert of a cluster.
    case tunnel
    /// relayctl <-> relay: one expert's session.
    case session
}
