import Foundation
import NIOHTTP1
import RelayAPI
import RelayModel
import RelayStore
import TunnelCore

/// One API request, fully read.
public struct APIRequest: Sendable {
    public var method: HTTPMethod
    public var path: String
    public var query: [String: String]
    public var bearer: String?
    public var body: Data
    /// The caller's IP address (audited with refusals of unauthenticated callers).
    public var source: String?

    public init(method: HTTPMethod, uri: String, bearer: String?, body: Data, source: String? = nil) {
        self.source = source
        self.method = method
        let parts = uri.split(separator: "?", maxSplits: 1)
        self.path = parts.first.map(String.init) ?? uri
        var query: [String: String] = [:]
        if parts.count == 2 {
            for pair in parts[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                let key = String(kv[0]).removingPercentEncoding ?? String(kv[0])
                let value = kv.count == 2 ? (String(kv[1]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? "") : ""
                query[key] = value
            }
        }
        self.query = query
        self.bearer = bearer
        self.body = body
    }
}

/// Matches `/v1/...` paths against patterns such as `clusters/*/enroll`.
struct Route {
    static let patterns = [
        "register", "heartbeat", "whoami", "clusters", "clusters/*", "clusters/*/enroll", "requests", "requests/*/revoke",
        "sessions", "sessions/*/kill", "tokens", "tokens/*/revoke", "audit", "relay-nodes",
    ]
    let method: HTTPMethod
    let segments: [String]

    init(_ request: APIRequest) {
        self.method = request.method
        let all = request.path.split(separator: "/").map(String.init)
        self.segments = all.first == "v1" ? Array(all.dropFirst()) : []
    }

    /// Whether some pattern has this path (whatever the method): unknown paths get 404 before authentication.
    var isKnown: Bool { Self.patterns.contains { self.captures($0) != nil } }

    /// `GET /v1/clusters/*`: what metrics label a call with (a path would make a series per ID).
    var label: String {
        guard let pattern = Self.patterns.first(where: { self.captures($0) != nil }) else { return "other" }
        return "\(self.method) /v1/\(pattern)"
    }

    /// The `*` segments, when method and path match.
    func match(_ method: HTTPMethod, _ pattern: String) -> [String]? {
        guard method == self.method else { return nil }
        return self.captures(pattern)
    }

    private func captures(_ pattern: String) -> [String]? {
        let parts = pattern.split(separator: "/").map(String.init)
        guard parts.count == self.segments.count, !parts.isEmpty else { return nil }
        var captured: [String] = []
        for (part, segment) in zip(parts, self.segments) {
            if part == "*" {
                guard let decoded = segment.removingPercentEncoding, !decoded.isEmpty else { return nil }
                captured.append(decoded)
            } else if part != segment {
                return nil
            }
        }
        return captured
    }
}

/// One API answer: status, JSON body, and the error code for `x-relay-error` on failures.
public struct APIResponse: Sendable {
    public var status: HTTPResponseStatus
    public var body: Data
    public var errorCode: String?
}

/// Routes the relay's JSON API (docs/API.md) to `MissionControl`. Errors become
/// `{"error", "message"}` with their status; nothing here touches a socket.
public struct RelayAPIRouter: Sendable {
    let control: MissionControl
    let registry: TunnelRegistry

    public init(control: MissionControl, registry: TunnelRegistry) {
        self.control = control
        self.registry = registry
    }

    public func handle(_ request: APIRequest) async -> APIResponse {
        let clock = ContinuousClock()
        let start = clock.now
        let response = await self.answer(request)
        let route = Route(request)
        let took = clock.now - start
        self.control.metrics.apiRequest(route: route.label, status: response.status.code, took: took)
        // Heartbeats come every minute from every node: their lines are for debugging.
        self.control.logger.log(
            level: route.label == "POST /v1/heartbeat" && response.errorCode == nil ? .debug : .info, "api call",
            metadata: [
                "route": "\(route.label)", "status": "\(response.status.code)", "error": "\(response.errorCode ?? "-")",
                "duration_ms": "\(took.components.seconds * 1000 + took.components.attoseconds / 1_000_000_000_000_000)",
                "source": "\(request.source ?? "-")", "request_id": "\(RequestID.current ?? "-")",
            ])
        if route.match(.POST, "heartbeat") != nil {
            let outcome: String
            switch response.errorCode {
            case nil: outcome = "ok"
            case "unauthorized", "store_unavailable": outcome = response.errorCode!
            case "internal": outcome = "error"
            default: outcome = "refused"
            }
            self.control.metrics.heartbeat(outcome: outcome)
        }
        return response
    }

    private func answer(_ request: APIRequest) async -> APIResponse {
        let refusal: ProxyRefusal
        do {
            return APIResponse(status: .ok, body: try await self.route(request), errorCode: nil)
        } catch let error as ProxyRefusal {
            refusal = error
        } catch let error as DecodingError {
            refusal = ProxyRefusal(.badRequest, code: "bad_request", message: "the request body is not valid: \(Self.describe(error))")
        } catch let error as StoreUnavailable {
            refusal = .storeUnavailable(error)
        } catch {
            self.control.logger.error("API request failed", metadata: ["path": "\(request.path)", "error": "\(error)"])
            refusal = ProxyRefusal(.internalServerError, code: "internal", message: "the relay failed to answer; try again")
        }
        return APIResponse(status: refusal.status, body: Self.errorBody(refusal), errorCode: refusal.code)
    }

    private func route(_ request: APIRequest) async throws -> Data {
        let route = Route(request)
        let control = self.control
        if route.match(.POST, "register") != nil {
            return try Self.encode(try await control.register(try Self.decode(RegisterRequest.self, request.body), source: request.source))
        }
        if route.match(.POST, "heartbeat") != nil {
            let body = try Self.decode(HeartbeatRequest.self, request.body)
            return try Self.encode(try await control.heartbeat(body, bearer: request.bearer, source: request.source))
        }
        guard route.isKnown else { throw Self.notFound }
        let action = "api \(request.method) \(request.path)"
        let caller = try await control.authenticateUser(bearer: request.bearer, action: action, source: request.source)
        // Every refusal of an authenticated caller is in the audit trail too (docs/API.md).
        do {
            return try await self.route(route, request, caller: caller)
        } catch let refusal as ProxyRefusal {
            if refusal.code == "ops_only" { control.metrics.authFailed(.role) }
            await control.deny(caller: caller, action, source: request.source, reason: "\(refusal.code): \(refusal.message)")
            throw refusal
        } catch let error as DecodingError {
            let refusal = ProxyRefusal(.badRequest, code: "bad_request", message: "the request body is not valid: \(Self.describe(error))")
            await control.deny(caller: caller, action, source: request.source, reason: "\(refusal.code): \(refusal.message)")
            throw refusal
        }
    }

    private func route(_ route: Route, _ request: APIRequest, caller: TokenRecord) async throws -> Data {
        let control = self.control
        if route.match(.GET, "whoami") != nil {
            return try Self.encode(WhoAmI(name: caller.name, role: caller.role))
        } else if route.match(.GET, "relay-nodes") != nil {
            // Any token: relayctl finds the other nodes from the one it was given.
            return try Self.encode(try await control.relayNodes())
        } else if route.match(.GET, "clusters") != nil {
            var details: [ClusterDetail] = []
            for cluster in try await control.clusters() { details.append(try await self.detail(cluster)) }
            return try Self.encode(details)
        } else if route.match(.POST, "clusters") != nil {
            return try Self.encode(try await control.addCluster(try Self.decode(CreateClusterRequest.self, request.body), by: caller))
        } else if let captured = route.match(.GET, "clusters/*") {
            let id = captured[0]
            guard let cluster = try await control.cluster(id: id) else { throw MissionControl.unknownCluster(id) }
            return try Self.encode(try await self.detail(cluster))
        } else if let captured = route.match(.POST, "clusters/*/enroll") {
            let id = captured[0]
            return try Self.encode(try await control.enroll(cluster: id, by: caller))
        } else if route.match(.GET, "requests") != nil {
            var states: Set<RequestState>?
            if let text = request.query["state"], !text.isEmpty {
                states = Set(try text.split(separator: ",").map { name in
                    guard let state = RequestState(rawValue: String(name)) else {
                        throw ProxyRefusal(.badRequest, code: "bad_request", message: "state must be pending, approved, expired, revoked or rejected")
                    }
                    return state
                })
            }
            return try Self.encode(try await control.requests(for: caller, cluster: request.query["cluster"], states: states))
        } else if route.match(.POST, "requests") != nil {
            return try Self.encode(try await control.createRequest(try Self.decode(CreateAccessRequest.self, request.body), by: caller))
        } else if let captured = route.match(.POST, "requests/*/revoke") {
            let id = captured[0]
            guard let id = Int64(id) else { throw Self.notFound }
            let body = request.body.isEmpty ? RevokeRequest(reason: nil) : try Self.decode(RevokeRequest.self, request.body)
            return try Self.encode(try await control.revokeRequest(id: id, reason: body.reason, by: caller))
        } else if route.match(.GET, "sessions") != nil {
            let all = try await control.store.sessions(live: request.query["all"] != "true")
            return try Self.encode(caller.role == .ops ? all : all.filter { $0.expert == caller.name })
        } else if let captured = route.match(.POST, "sessions/*/kill") {
            let id = captured[0]
            return try Self.encode(try await control.killSession(id: id, by: caller))
        } else if route.match(.GET, "tokens") != nil {
            try MissionControl.requireOps(caller)
            return try Self.encode(try await control.store.tokens().map(TokenView.init))
        } else if route.match(.POST, "tokens") != nil {
            return try Self.encode(try await control.createToken(try Self.decode(CreateTokenRequest.self, request.body), by: caller))
        } else if let captured = route.match(.POST, "tokens/*/revoke") {
            let name = captured[0]
            return try Self.encode(try await control.revokeToken(name: name, by: caller))
        } else if route.match(.GET, "audit") != nil {
            try MissionControl.requireOps(caller)
            var since: Date?
            if let text = request.query["since"], !text.isEmpty {
                guard let date = ISO8601DateFormatter().date(from: text) else {
                    throw ProxyRefusal(.badRequest, code: "bad_request", message: "since must be an ISO 8601 time such as 2026-11-21T09:00:00Z")
                }
                since = date
            }
            let after = Int64(request.query["after"] ?? "") ?? 0
            let limit = min(max(Int(request.query["limit"] ?? "") ?? 500, 1), 5000)
            let records = try await control.store.audit(since: since, afterID: after, limit: limit)
            return try Self.encode(AuditPage(records: records, nextAfter: records.count == limit ? records.last?.id : nil))
        }
        throw Self.notFound
    }

    private func detail(_ cluster: ClusterRecord) async throws -> ClusterDetail {
        let now = self.control.now
        let active = try await self.control.store.requests(clusterID: cluster.id, states: [.approved]).filter { $0.isActive(at: now) }
        let tunnels = self.registry.tunnels(cluster: cluster.id)
        let nodes = try await self.control.nodes(clusterID: cluster.id).map { node in
            ClusterDetail.Node(
                record: node, health: try? APIJSON.decoder().decode(NodeHealth.self, from: Data(node.healthJSON.utf8)),
                tunnelsHere: tunnels.filter { $0.node == node.nodeID }.count)
        }
        // The flag a connector sees: off while the customer turned remote access off on every node.
        let disabled = !nodes.isEmpty && nodes.allSatisfy { $0.record.privacyMode == .disabled }
        return ClusterDetail(cluster: cluster, remoteUIRequested: !active.isEmpty && !disabled, nodes: nodes, activeRequests: active)
    }

    static let notFound = ProxyRefusal(.notFound, code: "not_found", message: "no such API endpoint; see docs/API.md")

    static func decode<T: Decodable>(_ type: T.Type, _ body: Data) throws -> T {
        try APIJSON.decoder().decode(type, from: body)
    }

    static func encode<T: Encodable>(_ value: T) throws -> Data {
        try APIJSON.encoder().encode(value)
    }

    static func errorBody(_ refusal: ProxyRefusal) -> Data {
        (try? APIJSON.encoder().encode(APIErrorBody(error: refusal.code, message: refusal.message, requestID: RequestID.current))) ?? Data()
    }

    private static func describe(_ error: DecodingError) -> String {
        switch error {
        case .keyNotFound(let key, _): return "missing \"\(key.stringValue)\""
        case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            return path.isEmpty ? "not JSON of the expected shape" : "bad value at \"\(path)\""
        @unknown default: return "not JSON of the expected shape"
        }
    }
}
