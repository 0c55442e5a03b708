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

/// One API answer: status, JSON body, and the error code for `x-relay-error` on failures.
public struct APIResponse: Sendable {
    public var status: HTTPResponseStatus
    public var body: Data
    public var errorCode: String?
    public var contentType = "application/json"
    /// More headers (the status page's cookie, redirects and security headers).
    public var headers: [(String, String)] = []
}

/// Routes the relay's JSON API (docs/API.md) to `MissionControl`, by the endpoint table
/// (`RelayEndpoints`): who may call each endpoint is checked here, before it runs. What Mission
/// Control refuses (`RelayError`) becomes `{"error", "message", "requestID"}` with the code's
/// status; nothing here touches a socket.
public struct RelayAPIRouter: Sendable {
    let control: MissionControl
    let registry: TunnelRegistry
    private let routes: [APIRoute]

    public init(control: MissionControl, registry: TunnelRegistry) {
        self.control = control
        self.registry = registry
        self.routes = Self.table(control: control, registry: registry)
    }

    /// The endpoints this router answers (every one of `RelayEndpoints.all`).
    public var endpoints: [EndpointDescription] { self.routes.map(\.endpoint) }

    public func handle(_ request: APIRequest) async -> APIResponse {
        let clock = ContinuousClock()
        let start = clock.now
        let match = self.match(request)
        let route = match.found?.route
        let response = await self.answer(request, match)
        let label = route?.endpoint.label ?? "other"
        let took = clock.now - start
        self.control.metrics.apiRequest(route: label, status: response.status.code, took: took)
        let isHeartbeat = route?.endpoint == RelayEndpoints.heartbeat.description
        // Heartbeats come every minute from every node: their lines are for debugging.
        self.control.logger.log(
            level: isHeartbeat && response.errorCode == nil ? .debug : .info, "api call",
            metadata: [
                "route": "\(label)", "status": "\(response.status.code)", "error": "\(response.errorCode ?? "-")",
                "duration_ms": "\(took.components.seconds * 1000 + took.components.attoseconds / 1_000_000_000_000_000)",
                "source": "\(request.source ?? "-")", "request_id": "\(RequestID.current ?? "-")",
            ])
        if isHeartbeat {
            let outcome: String
            switch response.errorCode.flatMap(APIErrorCode.init(rawValue:)) {
            case nil where response.errorCode == nil: outcome = "ok"
            case .unauthorized: outcome = "unauthorized"
            case .storeUnavailable: outcome = "store_unavailable"
            case .internalError: outcome = "error"
            default: outcome = "refused"
            }
            self.control.metrics.heartbeat(outcome: outcome)
        }
        return response
    }

    /// The endpoint for this method and path, with the path's parameters, and whether any endpoint
    /// has this path at all (one pass over the table per call).
    private func match(_ request: APIRequest) -> (found: (route: APIRoute, parameters: [String: String])?, pathKnown: Bool) {
        var pathKnown = false
        for route in self.routes {
            guard let parameters = route.endpoint.template.match(request.path) else { continue }
            pathKnown = true
            if route.endpoint.method == request.method { return ((route, parameters), true) }
        }
        return (nil, pathKnown)
    }

    private func answer(_ request: APIRequest, _ match: (found: (route: APIRoute, parameters: [String: String])?, pathKnown: Bool)) async -> APIResponse {
        let refusal: RelayError
        do {
            return APIResponse(status: .ok, body: try await self.run(request, match), errorCode: nil)
        } catch let error as RelayError {
            refusal = error
        } catch let error as DecodingError {
            refusal = Self.badBody(error)
        } catch let error as StoreUnavailable {
            refusal = .storeUnavailable(error)
        } catch {
            self.control.logger.error("API request failed", metadata: ["path": "\(request.path)", "error": "\(error)"])
            refusal = RelayError(.internalError, "the relay failed to answer; try again")
        }
        return APIResponse(status: refusal.code.status, body: Self.errorBody(ProxyRefusal(refusal)), errorCode: refusal.code.rawValue)
    }

    private func run(_ request: APIRequest, _ match: (found: (route: APIRoute, parameters: [String: String])?, pathKnown: Bool)) async throws -> Data {
        // A path no endpoint has: 404 before any authentication.
        guard match.pathKnown else { throw Self.notFound }
        let access = match.found?.route.endpoint.access ?? .anyToken
        if let (route, parameters) = match.found, access != .anyToken, access != .ops {
            // Registration and heartbeats: Mission Control authenticates the enrollment token or the node credential.
            return try await route.run(APICall(request: request, caller: nil, parameters: parameters))
        }
        let action = "api \(request.method) \(request.path)"
        let caller = try await self.control.authenticateUser(bearer: request.bearer, action: action, source: request.source)
        // Every refusal of an authenticated caller is in the audit trail too (docs/API.md).
        do {
            guard let (route, parameters) = match.found else { throw Self.notFound }  // the path exists, not with this method
            if access == .ops, caller.role != .ops {
                self.control.metrics.authFailed(.role)
                throw MissionControl.opsOnly
            }
            return try await route.run(APICall(request: request, caller: caller, parameters: parameters))
        } catch let refusal as RelayError {
            if refusal.code == .opsOnly, access != .ops { self.control.metrics.authFailed(.role) }  // decided by Mission Control
            await self.control.deny(caller: caller, action, source: request.source, reason: "\(refusal.code.rawValue): \(refusal.message)")
            throw refusal
        } catch let error as DecodingError {
            let refusal = Self.badBody(error)
            await self.control.deny(caller: caller, action, source: request.source, reason: "\(refusal.code.rawValue): \(refusal.message)")
            throw refusal
        }
    }

    static let notFound = RelayError(.notFound, "no such API endpoint; see docs/API.md")

    static func errorBody(_ refusal: ProxyRefusal) -> Data {
        (try? APIJSON.encoder().encode(APIErrorBody(error: refusal.code, message: refusal.message, requestID: RequestID.current))) ?? Data()
    }

    private static func badBody(_ error: DecodingError) -> RelayError {
        RelayError(.badRequest, "the request body is not valid: \(Self.describe(error))")
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

/// One call as a handler sees it: the request, the authenticated caller (nil for registration and
/// heartbeats), and the path's parameters by name.
struct APICall: Sendable {
    let request: APIRequest
    let caller: TokenRecord?
    let parameters: [String: String]

    /// The caller the router authenticated (for endpoints that take a token).
    var token: TokenRecord {
        get throws {
            guard let caller = self.caller else { throw MissionControl.unauthorized }
            return caller
        }
    }

    func parameter(_ name: String) -> String { self.parameters[name] ?? "" }
}

/// An endpoint and what answers it. The body is decoded as the endpoint's request type (no body,
/// or `{}`, for `NoBody`) and the answer encoded as its response type.
struct APIRoute: Sendable {
    let endpoint: EndpointDescription
    let run: @Sendable (APICall) async throws -> Data

    init<Request, Response>(_ endpoint: Endpoint<Request, Response>, _ handler: @escaping @Sendable (APICall, Request) async throws -> Response) {
        self.endpoint = endpoint.description
        self.run = { call in
            let body: Request
            if Request.self == NoBody.self, call.request.body.isEmpty {
                body = NoBody() as! Request
            } else {
                body = try APIJSON.decoder().decode(Request.self, from: call.request.body.isEmpty ? Data("{}".utf8) : call.request.body)
            }
            return try APIJSON.encoder().encode(try await handler(call, body))
        }
    }

}
