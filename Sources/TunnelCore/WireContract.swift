import NIOHTTP1

/// Names shared by the three programs. The wire contract is written out in docs/PROTOCOL.md.
public enum WirePath {
    /// Connectors upgrade here (websocket, then HTTP/2 with the connector as server).
    public static let tunnel = "/v1/tunnel"
    /// relayctl upgrades here (websocket, then HTTP/2 with relayctl as client).
    public static let session = "/v1/session"
    /// Plain HTTPS liveness probe.
    public static let health = "/healthz"
    /// Readiness (relay): 200 while the node should get traffic (store reachable, listening, not draining), else 503 with reasons.
    public static let ready = "/readyz"
}

public enum WireHeader {
    /// On the connector's upgrade request: the cluster it serves.
    public static let cluster = "x-relay-cluster"
    /// On the connector's upgrade request: its node ID.
    public static let node = "x-relay-node"
    /// On relayctl's upgrade request and on every stream the relay opens in a tunnel: the component name.
    public static let component = "x-relay-component"
    /// Set by the relay on every tunnel stream: the authenticated expert.
    public static let expert = "x-relay-expert"
    /// Set by the relay on every tunnel stream: the session the stream belongs to.
    public static let session = "x-relay-session"
    /// Set by the relay on every tunnel stream: a unique request ID, echoed in responses and audit.
    public static let requestID = "x-relay-request-id"
    /// On relayctl's upgrade request (optional): the role asked for, at most the request's role.
    /// Set by the relay on every tunnel stream: the role the session runs under.
    public static let role = "x-relay-role"
    /// Set by the relay on every tunnel stream: the access request the session runs under.
    public static let accessRequest = "x-relay-access-request"
    /// Set by the relay on every tunnel stream: when the access request expires (Unix seconds).
    public static let accessExpires = "x-relay-access-expires"
    /// On the connector's refusals once it has ended a session (limits, customer kill): why. The
    /// relay then closes the expert's session with `WireCloseCode.endedByCustomer` and this reason.
    public static let sessionEnded = "x-relay-session-ended"
    /// Set by the relay on every tunnel stream: the IP address the expert's session connected from.
    /// The connector passes it to components as X-Forwarded-For.
    public static let clientAddress = "x-relay-client-address"
    /// On a session's `101`: the privacy mode the cluster's connectors last reported (a `readOnly`
    /// customer lowers every session to reading, whatever the request's role).
    public static let privacyMode = "x-relay-privacy-mode"
    /// On error responses produced by relay, connector or relayctl (not by a component): who refused and why.
    public static let error = "x-relay-error"

    /// Every header the relay owns; any copy that arrives from an expert is removed before the relay sets its own.
    /// Marks the tunnel's control stream (docs/PROTOCOL.md); never from an expert.
    public static let control = "x-relay-control"

    public static let relayOwned = [
        cluster, node, component, expert, session, requestID, role, accessRequest, accessExpires, clientAddress, sessionEnded, error, privacyMode,
        control,
    ]

    /// Hop-by-hop headers (RFC 9110 7.6.1) never forwarded across a hop.
    public static let hopByHop = [
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "proxy-authenticate", "proxy-authorization",
    ]
}

/// The version the three programs print (`--version`) and the connector reports in heartbeats.
public enum ProductVersion {
    public static let current = "0.3.0"
}

public enum WireProtocolVersion {
    /// Sent as `Sec-WebSocket-Protocol`; a peer with another version is refused at the upgrade.
    public static let current = "relay-tunnel.v1"
}

extension HTTPHeaders {
    /// Removes hop-by-hop headers, including those named in `Connection`.
    public mutating func removeHopByHop() {
        let named = self[canonicalForm: "connection"].map { String($0).lowercased() }
        for name in WireHeader.hopByHop + named { self.remove(name: name) }
    }

    public mutating func removeRelayOwned() {
        for name in WireHeader.relayOwned { self.remove(name: name) }
    }
}

/// Websocket close codes the relay sends with a reason a person can read (docs/PROTOCOL.md).
public enum WireCloseCode {
    /// The access request behind a tunnel or session ended (revoked, expired, rejected).
    public static let accessEnded: UInt16 = 4001
    /// An operator killed the session, or the expert's token was revoked.
    public static let sessionKilled: UInt16 = 4002
    /// The customer's connector ended the session (session limits, customer CLI, settings change).
    public static let endedByCustomer: UInt16 = 4003
    /// The peer flooded (cancelled requests beyond the session's reset budget, malformed frames):
    /// this session or tunnel alone is closed.
    public static let flood: UInt16 = 4004
    /// A newer tunnel from the same connector node replaced this one (the node redialed before
    /// the relay noticed the old tunnel was gone).
    public static let replaced: UInt16 = 4005
    /// The relay node drained (stopping for a restart or an upgrade): connectors redial, spread
    /// over the window the relay announced; relayctl reconnects (another node may answer).
    /// RFC 6455's "service restart".
    public static let relayDraining: UInt16 = 1012
}
