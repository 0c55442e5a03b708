import NIOCore
import TunnelCore

extension TunnelLimits {
    /// Reads the `limits:` mapping shared by relay.yaml and connector.yaml; absent keys keep the defaults.
    public static func read(from map: ConfigMap?) throws -> TunnelLimits {
        var limits = TunnelLimits()
        guard let map else { return limits }
        limits.maxWebSocketFrameSize = try map.size("max_websocket_frame_size", default: limits.maxWebSocketFrameSize, range: 125...(1 << 30))
        limits.maxOutboundWebSocketFrameSize = try map.size(
            "max_outbound_websocket_frame_size", default: limits.maxOutboundWebSocketFrameSize, range: 1024...(1 << 24))
        limits.maxConcurrentStreams = try map.int("max_concurrent_streams", default: limits.maxConcurrentStreams, range: 1...10_000)
        limits.initialWindowSize = try map.size("initial_window_size", default: limits.initialWindowSize, range: 1024...((1 << 31) - 1))
        limits.connectionWindowSize = try map.size(
            "connection_window_size", default: limits.connectionWindowSize, range: 65_535...((1 << 31) - 1))
        limits.maxFrameSize = try map.size("max_frame_size", default: limits.maxFrameSize, range: (1 << 14)...((1 << 24) - 1))
        limits.maxHeaderListSize = try map.size("max_header_list_size", default: limits.maxHeaderListSize, range: 1024...(1 << 24))
        limits.handshakeTimeout = .milliseconds(
            try map.durationMilliseconds("handshake_timeout", default: limits.handshakeTimeout.nanoseconds / 1_000_000, range: 100...600_000))
        limits.keepaliveInterval = .milliseconds(
            try map.durationMilliseconds("keepalive_interval", default: limits.keepaliveInterval.nanoseconds / 1_000_000, range: 100...3_600_000))
        limits.keepaliveTimeout = .milliseconds(
            try map.durationMilliseconds("keepalive_timeout", default: limits.keepaliveTimeout.nanoseconds / 1_000_000, range: 200...7_200_000))
        guard limits.keepaliveTimeout > limits.keepaliveInterval else {
            throw map.error("keepalive_timeout", "must be longer than keepalive_interval (the ping needs time to be answered)")
        }
        limits.tunnelResetBudget = try map.int("tunnel_reset_budget", default: limits.tunnelResetBudget, range: 200...1_000_000)
        limits.sessionResetBudget = try map.int("session_reset_budget", default: limits.sessionResetBudget, range: 10...1_000_000)
        limits.refusedBodyDrainLimit = try map.size("refused_body_drain_limit", default: limits.refusedBodyDrainLimit, range: 0...(1 << 30))
        try map.finish()
        return limits
    }
}
