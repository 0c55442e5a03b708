import Foundation
import RelayAPI
import RelayModel

/// Why an authenticated caller may not open a session. Every case says what to do next.
public enum SessionDenial: Error, Equatable, Sendable, CustomStringConvertible {
    case notAnExpert(tokenRole: TokenRole)
    case noRequest(cluster: String)
    case pending(requestID: Int64)
    case rejected(requestID: Int64, by: String, at: Date, reason: String?)
    case revoked(requestID: Int64, by: String, at: Date, reason: String?)
    case expired(requestID: Int64, at: Date)
    case roleNotGranted(requestID: Int64, asked: AccessRole, granted: AccessRole)

    /// Stable code for `x-relay-error` and the JSON body.
    public var code: APIErrorCode {
        switch self {
        case .notAnExpert: .notAnExpert
        case .noRequest: .noAccessRequest
        case .pending: .requestPending
        case .rejected: .requestRejected
        case .revoked: .requestRevoked
        case .expired: .requestExpired
        case .roleNotGranted: .roleNotGranted
        }
    }

    public var description: String {
        switch self {
        case .notAnExpert(let role):
            return "\(role.rawValue) tokens cannot open sessions; use an expert token"
        case .noRequest(let cluster):
            return "no access request for cluster \"\(cluster)\" names you; ask for one: relayctl requests create --cluster \(cluster) --reason ... --role viewer --duration 1h"
        case .pending(let id):
            return "request \(id) is pending customer approval; it starts once the customer approves it"
        case .rejected(let id, let by, let at, let reason):
            return "request \(id) was rejected by \(by) at \(Timestamp.text(at))\(reason.map { ": \($0)" } ?? ""); create a new request if you still need access"
        case .revoked(let id, let by, let at, let reason):
            return "request \(id) was revoked by \(by) at \(Timestamp.text(at))\(reason.map { " (\($0))" } ?? ""); create a new request if you still need access"
        case .expired(let id, let at):
            return "request \(id) expired at \(Timestamp.text(at)); create a new request if you still need access"
        case .roleNotGranted(let id, let asked, let granted):
            return "request \(id) grants \(granted.rawValue), not \(asked.rawValue); open the session with --role \(granted.rawValue) or ask for a new request"
        }
    }
}

/// What an allowed session runs under.
public struct SessionGrant: Equatable, Sendable {
    public var request: AccessRequestRecord
    public var role: AccessRole
}

/// Who may open a session: pure, so that the authorization table is tested cell by cell.
public enum AccessPolicy {
    /// - Parameters:
    ///   - caller: an authenticated, valid token.
    ///   - requests: the cluster's access requests (any expert, any state).
    ///   - role: the role asked for; nil takes the request's role.
    public static func authorizeSession(
        caller: TokenRecord, cluster: String, role asked: AccessRole?, requests: [AccessRequestRecord], now: Date
    ) -> Result<SessionGrant, SessionDenial> {
        guard caller.role == .expert else { return .failure(.notAnExpert(tokenRole: caller.role)) }
        let mine = requests.filter { $0.expert == caller.name && $0.clusterID == cluster }
        let active = mine.filter { $0.isActive(at: now) }
        // Prefer the strongest role, then the latest expiry.
        let ranked = active.sorted { ($0.role, $0.expiresAt ?? now) > ($1.role, $1.expiresAt ?? now) }
        if let best = ranked.first {
            if let asked, asked > best.role {
                return .failure(.roleNotGranted(requestID: best.id, asked: asked, granted: best.role))
            }
            return .success(SessionGrant(request: best, role: asked ?? best.role))
        }
        // Explain the most recent request.
        guard let latest = mine.max(by: { $0.id < $1.id }) else { return .failure(.noRequest(cluster: cluster)) }
        switch latest.state {
        case .pending: return .failure(.pending(requestID: latest.id))
        case .rejected: return .failure(.rejected(requestID: latest.id, by: latest.changedBy, at: latest.changedAt, reason: latest.endReason))
        case .revoked:
            return .failure(.revoked(requestID: latest.id, by: latest.changedBy, at: latest.changedAt, reason: latest.endReason))
        case .approved, .expired:
            return .failure(.expired(requestID: latest.id, at: latest.expiresAt ?? latest.changedAt))
        }
    }

    /// The cluster's remote-UI flag: set exactly while an approved, unexpired request exists.
    public static func flag(requests: [AccessRequestRecord], now: Date) -> Bool {
        requests.contains { $0.isActive(at: now) }
    }

    /// Why a session or tunnel that was allowed must end now (nil: it may go on).
    public static func endReason(of request: AccessRequestRecord?, now: Date) -> String? {
        guard let request else { return "its access request no longer exists" }
        switch request.state {
        case .approved:
            guard let expiresAt = request.expiresAt, now >= expiresAt else { return nil }
            return "access request \(request.id) expired at \(Timestamp.text(expiresAt))"
        case .expired:
            return "access request \(request.id) expired at \(Timestamp.text(request.expiresAt ?? request.changedAt))"
        case .revoked:
            return "access request \(request.id) was revoked by \(request.changedBy) at \(Timestamp.text(request.changedAt))"
                + (request.endReason.map { " (\($0))" } ?? "")
        case .rejected:
            return "access request \(request.id) was rejected by \(request.changedBy)" + (request.endReason.map { ": \($0)" } ?? "")
        case .pending:
            return "access request \(request.id) is not approved"
        }
    }
}
