/// Every code a refusal of one expert request inside a session carries (`x-relay-error` and the
/// JSON body of the answer), whichever hop refused it: relayctl's local port, the relay's tunnel
/// switch or the customer's connector. Each with its HTTP status: the one place that mapping lives.
/// The relay's own API has its own table (`APIErrorCode`, docs/API.md).
public enum StreamErrorCode: String, Codable, Sendable, CaseIterable {
    // The request itself (the connector's checks, relayctl's local port).
    case absoluteForm = "absolute_form"
    case badFraming = "bad_framing"
    case badHost = "bad_host"
    case badMethod = "bad_method"
    case badTarget = "bad_target"
    case methodOverride = "method_override"
    case badWebSocketUpgrade = "bad_websocket_upgrade"
    // The customer's settings and decisions (the connector).
    case accessExpired = "access_expired"
    case approvalExpired = "approval_expired"
    case deniedPath = "denied_path"
    case missingIdentity = "missing_identity"
    case rejectedByCustomer = "rejected_by_customer"
    case remoteAccessDisabled = "remote_access_disabled"
    case revokedByCustomer = "revoked_by_customer"
    case roleForbidsMethod = "role_forbids_method"
    case roleForbidsWebSocket = "role_forbids_websocket"
    case notApproved = "not_approved"
    case methodNotAllowed = "method_not_allowed"
    case sessionEnded = "session_ended"
    case unknownComponent = "unknown_component"
    case auditUnavailable = "audit_unavailable"
    case connectorStopping = "connector_stopping"
    // relayctl's local port.
    case localSignInRequired = "local_sign_in_required"
    case signInLinkUsed = "sign_in_link_used"
    case crossSiteRequest = "cross_site_request"
    case chooseComponent = "choose_component"
    case unknownHost = "unknown_host"
    // Any hop.
    case requestHeadersTooLarge = "request_headers_too_large"
    case unsupportedProtocol = "unsupported_protocol"
    case websocketUnsupported = "websocket_unsupported"
    case upstreamUnavailable = "upstream_unavailable"
    case upstreamTimeout = "upstream_timeout"

    public var status: Int {
        switch self {
        case .absoluteForm, .badFraming, .badHost, .badMethod, .badTarget, .methodOverride, .badWebSocketUpgrade: 400
        case .localSignInRequired, .signInLinkUsed: 401
        case .accessExpired, .approvalExpired, .deniedPath, .missingIdentity, .rejectedByCustomer, .remoteAccessDisabled, .revokedByCustomer,
            .roleForbidsMethod, .roleForbidsWebSocket, .notApproved, .sessionEnded, .crossSiteRequest:
            403
        case .unknownComponent, .chooseComponent: 404
        case .methodNotAllowed: 405
        case .unknownHost: 421
        case .requestHeadersTooLarge: 431
        case .unsupportedProtocol, .websocketUnsupported: 501
        case .upstreamUnavailable: 502
        case .auditUnavailable, .connectorStopping: 503
        case .upstreamTimeout: 504
        }
    }
}
