import Foundation
import NIOHTTP1
import RelayModel
import TunnelCore

/// Who may call an endpoint: the relay's router checks it before the call runs.
public enum EndpointAccess: Sendable, Equatable {
    /// A one-time enrollment token in the body (`register`).
    case enrollmentToken
    /// A connector node's credential (`heartbeat`).
    case connectorCredential
    /// Any valid API token (an expert sees their own records).
    case anyToken
    /// An ops token; others get 403 `ops_only`.
    case ops
}

/// The body of a call that sends none (and accepts `{}`, as older clients send).
public struct NoBody: Codable, Sendable, Equatable {
    public init() {}
}

/// `/v1/clusters/{id}/enroll`: literal segments and named parameters, matched and filled with
/// percent-encoding (an ID never changes which endpoint is called).
public struct PathTemplate: Sendable, Equatable, CustomStringConvertible, ExpressibleByStringLiteral {
    enum Segment: Sendable, Equatable {
        case literal(String)
        case parameter(String)
    }
    let segments: [Segment]
    public let description: String

    public init(stringLiteral text: String) {
        self.description = text
        self.segments = text.split(separator: "/").map { part in
            part.hasPrefix("{") && part.hasSuffix("}") ? .parameter(String(part.dropFirst().dropLast())) : .literal(String(part))
        }
    }

    /// The parameters, if `path` (without its query) is this template's.
    public func match(_ path: String) -> [String: String]? {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        guard parts.count == self.segments.count else { return nil }
        var found: [String: String] = [:]
        for (segment, part) in zip(self.segments, parts) {
            switch segment {
            case .literal(let text):
                guard part == text else { return nil }
            case .parameter(let name):
                guard let decoded = part.removingPercentEncoding, !decoded.isEmpty else { return nil }
                found[name] = decoded
            }
        }
        return found
    }

    /// The path with `parameters` in order, percent-encoded, and `query` (nil values left out).
    public func path(_ parameters: [String], query: [(String, String?)] = []) -> String {
        var values = parameters.makeIterator()
        var path = ""
        for segment in self.segments {
            switch segment {
            case .literal(let text): path += "/" + text
            case .parameter(let name):
                guard let value = values.next() else { preconditionFailure("\(self) needs {\(name)}") }
                path += "/" + (value.addingPercentEncoding(withAllowedCharacters: .pathSegment) ?? value)
            }
        }
        let pairs = query.compactMap { name, value in
            value.map { "\(name)=\($0.addingPercentEncoding(withAllowedCharacters: .queryValue) ?? $0)" }
        }
        return pairs.isEmpty ? path : path + "?" + pairs.joined(separator: "&")
    }
}

extension CharacterSet {
    fileprivate static let pathSegment = CharacterSet.urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))
    fileprivate static let queryValue = CharacterSet.urlQueryAllowed.subtracting(CharacterSet(charactersIn: "&=+?#"))
}

/// One endpoint of the relay's API: method, path, body and answer types, and who may call it.
/// The relay's router dispatches on it and the clients (relayctl, the connector) call through it,
/// so the two cannot disagree.
public struct Endpoint<Request: Codable & Sendable, Response: Codable & Sendable>: Sendable {
    public let method: HTTPMethod
    public let template: PathTemplate
    public let access: EndpointAccess

    public init(_ method: HTTPMethod, _ template: PathTemplate, access: EndpointAccess) {
        self.method = method
        self.template = template
        self.access = access
    }

    public var description: EndpointDescription { EndpointDescription(method: self.method, template: self.template, access: self.access) }
}

/// An endpoint without its types: for tables and checks.
public struct EndpointDescription: Sendable, Equatable {
    public let method: HTTPMethod
    public let template: PathTemplate
    public let access: EndpointAccess

    /// `POST /v1/clusters/{id}/enroll`: metrics and logs label calls with it (an ID in a label
    /// would make a series per ID).
    public var label: String { "\(self.method.rawValue) \(self.template)" }
}

/// The relay's API (docs/API.md).
public enum RelayEndpoints {
    public static let register = Endpoint<RegisterRequest, RegisterResponse>(.POST, "/v1/register", access: .enrollmentToken)
    public static let heartbeat = Endpoint<HeartbeatRequest, HeartbeatResponse>(.POST, "/v1/heartbeat", access: .connectorCredential)
    public static let whoami = Endpoint<NoBody, WhoAmI>(.GET, "/v1/whoami", access: .anyToken)
    public static let relayNodes = Endpoint<NoBody, [RelayNodeView]>(.GET, "/v1/relay-nodes", access: .anyToken)
    public static let clusters = Endpoint<NoBody, [ClusterDetail]>(.GET, "/v1/clusters", access: .anyToken)
    public static let createCluster = Endpoint<CreateClusterRequest, EnrollmentResponse>(.POST, "/v1/clusters", access: .ops)
    public static let cluster = Endpoint<NoBody, ClusterDetail>(.GET, "/v1/clusters/{id}", access: .anyToken)
    public static let enroll = Endpoint<NoBody, EnrollmentResponse>(.POST, "/v1/clusters/{id}/enroll", access: .ops)
    /// Query: `cluster`, `state` (comma-separated states).
    public static let requests = Endpoint<NoBody, [AccessRequestRecord]>(.GET, "/v1/requests", access: .anyToken)
    public static let createRequest = Endpoint<CreateAccessRequest, AccessRequestRecord>(.POST, "/v1/requests", access: .anyToken)
    /// Ops, or the expert the request names (decided by Mission Control).
    public static let revokeRequest = Endpoint<RevokeRequest, AccessRequestRecord>(.POST, "/v1/requests/{id}/revoke", access: .anyToken)
    /// Query: `all=true` for ended sessions too. Experts see their own.
    public static let sessions = Endpoint<NoBody, [SessionRecord]>(.GET, "/v1/sessions", access: .anyToken)
    public static let killSession = Endpoint<NoBody, SessionRecord>(.POST, "/v1/sessions/{id}/kill", access: .ops)
    public static let tokens = Endpoint<NoBody, [TokenView]>(.GET, "/v1/tokens", access: .ops)
    public static let createToken = Endpoint<CreateTokenRequest, TokenCreated>(.POST, "/v1/tokens", access: .ops)
    public static let revokeToken = Endpoint<NoBody, TokenView>(.POST, "/v1/tokens/{name}/revoke", access: .ops)
    /// Query: `since` (ISO 8601), `after` (an ID), `limit` (1...5000, 500).
    public static let audit = Endpoint<NoBody, AuditPage>(.GET, "/v1/audit", access: .ops)
    /// What the operators' status page shows, as JSON.
    public static let status = Endpoint<NoBody, RelayStatus>(.GET, "/v1/status", access: .ops)

    public static let all: [EndpointDescription] = [
        register.description, heartbeat.description, whoami.description, relayNodes.description, clusters.description,
        createCluster.description, cluster.description, enroll.description, requests.description, createRequest.description,
        revokeRequest.description, sessions.description, killSession.description, tokens.description, createToken.description,
        revokeToken.description, audit.description, status.description,
    ]
}

/// Every error code the relay's API and its upgrades answer with (`error` in the body and
/// `x-relay-error`), each with its HTTP status: the one place that mapping lives.
public enum APIErrorCode: String, Codable, Sendable, CaseIterable {
    case badRequest = "bad_request"
    case unsupportedProtocol = "unsupported_protocol"
    case unauthorized
    case enrollmentInvalid = "enrollment_invalid"
    case enrollmentUsed = "enrollment_used"
    case enrollmentExpired = "enrollment_expired"
    case opsOnly = "ops_only"
    case noAccessRequest = "no_access_request"
    case notAnExpert = "not_an_expert"
    case requestPending = "request_pending"
    case requestRejected = "request_rejected"
    case requestRevoked = "request_revoked"
    case requestExpired = "request_expired"
    case roleNotGranted = "role_not_granted"
    case notFound = "not_found"
    case unknownCluster = "unknown_cluster"
    case unknownRequest = "unknown_request"
    case unknownSession = "unknown_session"
    case unknownToken = "unknown_token"
    case unknownExpert = "unknown_expert"
    case unknownComponent = "unknown_component"
    case clusterExists = "cluster_exists"
    case tokenExists = "token_exists"
    case requestEnded = "request_ended"
    case requestChanged = "request_changed"
    case tooLarge = "too_large"
    case upgradeRequired = "upgrade_required"
    case internalError = "internal"
    case noTunnel = "no_tunnel"
    case storeUnavailable = "store_unavailable"
    case relayStopping = "relay_stopping"
    case notReady = "not_ready"

    public var status: HTTPResponseStatus {
        switch self {
        case .badRequest, .unsupportedProtocol: .badRequest
        case .unauthorized, .enrollmentInvalid, .enrollmentUsed, .enrollmentExpired: .unauthorized
        case .opsOnly, .noAccessRequest, .notAnExpert, .requestPending, .requestRejected, .requestRevoked, .requestExpired, .roleNotGranted: .forbidden
        case .notFound, .unknownCluster, .unknownRequest, .unknownSession, .unknownToken, .unknownExpert, .unknownComponent: .notFound
        case .clusterExists, .tokenExists, .requestEnded, .requestChanged: .conflict
        case .tooLarge: .payloadTooLarge
        case .upgradeRequired: .upgradeRequired
        case .internalError: .internalServerError
        case .noTunnel, .storeUnavailable, .relayStopping, .notReady: .serviceUnavailable
        }
    }
}

extension ProxyRefusal {
    /// A refusal with one of the API's codes, its status from `APIErrorCode.status`.
    public init(_ code: APIErrorCode, _ message: String) {
        self.init(code.status, code: code.rawValue, message: message)
    }
}

extension APIError {
    /// The relay's code, when it is one of the API's.
    public var apiCode: APIErrorCode? { self.code.flatMap(APIErrorCode.init(rawValue:)) }
}
