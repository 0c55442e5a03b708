import Foundation
import RelayModel

/// One request as it arrives on a tunnel stream: method, target and headers exactly as received,
/// including the identity headers the relay stamps (docs/PROTOCOL.md).
public struct StreamFacts: Sendable, Equatable {
    public struct Header: Sendable, Equatable {
        public var name: String
        public var value: String
        public init(_ name: String, _ value: String) {
            self.name = name.lowercased()
            self.value = value
        }
    }

    public var method: String
    public var target: String
    public var headers: [Header]

    public init(method: String, target: String, headers: [Header]) {
        self.method = method
        self.target = target
        self.headers = headers
    }

    public func values(_ name: String) -> [String] { self.headers.filter { $0.name == name }.map(\.value) }
    public func first(_ name: String) -> String? { self.headers.first { $0.name == name }?.value }

    public var component: String? { self.first("x-relay-component") }
    public var expert: String? { self.first("x-relay-expert") }
    public var session: String? { self.first("x-relay-session") }
    public var requestID: String? { self.first("x-relay-request-id") }
    public var role: AccessRole? { self.first("x-relay-role").flatMap(AccessRole.init(rawValue:)) }
    public var accessRequest: Int64? { self.first("x-relay-access-request").flatMap { Int64($0) } }
    /// The `:protocol` of an extended CONNECT (RFC 8441), as the connector's HTTP/2 side passes it on.
    public var connectProtocol: String? { self.first("x-relay-connect-protocol")?.lowercased() }
    /// When the access request expires, as the relay says (Unix seconds).
    public var accessExpiresAt: Date? {
        self.first("x-relay-access-expires").flatMap { Int64($0) }.map { Date(timeIntervalSince1970: TimeInterval($0)) }
    }
}

/// The customer's own decision on an access request (privacy mode `approvedOnly`), kept on the
/// connector's disk and sent to the relay on the next heartbeat.
public struct CustomerApproval: Codable, Sendable, Equatable {
    /// `revoked`: the customer took the access back (`connector requests revoke N`), in any mode.
    public enum Verdict: String, Codable, Sendable { case approved, rejected, revoked }
    public var requestID: Int64
    public var verdict: Verdict
    public var expert: String
    public var role: AccessRole
    public var reason: String
    /// The customer's user who decided.
    public var by: String
    public var decidedAt: Date
    /// decidedAt + the duration the expert asked for.
    public var expiresAt: Date
    /// Whether a heartbeat answer has shown the relay took the decision.
    public var deliveredAt: Date?
    /// The customer's own reason for the decision, if they gave one (sent to the relay).
    public var customerReason: String?

    public init(
        requestID: Int64, verdict: Verdict, expert: String, role: AccessRole, reason: String, by: String, decidedAt: Date, expiresAt: Date,
        deliveredAt: Date? = nil
    ) {
        self.requestID = requestID
        self.verdict = verdict
        self.expert = expert
        self.role = role
        self.reason = reason
        self.by = by
        self.decidedAt = decidedAt
        self.expiresAt = expiresAt
        self.deliveredAt = deliveredAt
    }
}

/// A stream the policy lets through, and how.
public struct StreamPermit: Sendable, Equatable {
    public var component: String
    public var expert: String
    public var session: String
    public var accessRequest: Int64
    /// The role the stream runs under: the relay's, lowered by `readOnly` or the customer's approval.
    public var role: AccessRole
    /// The method decided on, forwarded as is (`GET` for a websocket: the component gets an upgrade).
    public var method: String
    /// A websocket (an extended CONNECT): the component gets an HTTP/1.1 upgrade, then the bytes.
    public var webSocket: Bool = false
    public var target: NormalizedTarget
    /// The request's headers as the component gets them (before the connector adds Host and its
    /// own X-Forwarded-*): the relay's `x-relay-*` and the routing and identity headers of
    /// `PrivacyRules.isStripped` removed, unless the component passes them.
    public var headers: [StreamFacts.Header]
    /// Names of the headers removed by the rule above (for the audit log).
    public var strippedHeaders: [String]
}

/// A refused stream: HTTP status, stable code and one sentence for the expert (and the audit log).
public struct StreamDenial: Error, Sendable, Equatable, CustomStringConvertible {
    public var kind: StreamErrorCode
    public var reason: String
    public var status: Int { self.kind.status }
    public var code: String { self.kind.rawValue }

    public init(_ kind: StreamErrorCode, _ reason: String) {
        self.kind = kind
        self.reason = reason
    }

    public var description: String { "\(self.status) \(self.code): \(self.reason)" }
}

/// Decides one stream against the customer's settings: pure, default deny, first failing rule wins.
/// The relay is not trusted here: every identity header is checked, and a missing one refuses.
public enum StreamPolicy {
    public static func decide(
        _ facts: StreamFacts, rules: PrivacyRules, approvals: [Int64: CustomerApproval], now: Date
    ) -> Result<StreamPermit, StreamDenial> {
        if rules.mode == .disabled {
            return .failure(StreamDenial(.remoteAccessDisabled, "the customer has turned remote access off"))
        }
        let name = facts.component ?? ""
        guard let component = rules.components[name] else {
            return .failure(StreamDenial(.unknownComponent, "component \"\(name)\" is not offered by this cluster's connector"))
        }
        guard let stamped = facts.role, let request = facts.accessRequest, let expert = facts.expert, !expert.isEmpty,
            let session = facts.session, !session.isEmpty, let expires = facts.accessExpiresAt
        else {
            return .failure(StreamDenial(.missingIdentity, "the stream lacks the relay's identity headers (expert, session, role, access request, expiry)"))
        }
        if expires <= now {
            return .failure(StreamDenial(.accessExpired, "access request \(request) expired at \(Timestamp.text(expires))"))
        }
        if let approval = approvals[request], approval.verdict == .revoked {
            return .failure(
                StreamDenial(.revokedByCustomer, "the customer revoked access request \(request) (\(approval.by) at \(Timestamp.text(approval.decidedAt)))"))
        }

        let role: AccessRole
        // Why the role is lower than the relay's, when it is: the refusal names the customer's setting.
        var loweredBy: String?
        switch rules.mode {
        case .disabled:
            return .failure(StreamDenial(.remoteAccessDisabled, "the customer has turned remote access off"))
        case .all:
            role = stamped
        case .readOnly:
            role = min(stamped, .viewer)
            if stamped > .viewer { loweredBy = "the customer's privacy mode readOnly lets every session read only" }
        case .approvedOnly:
            guard let approval = approvals[request], approval.expert == expert else {
                return .failure(
                    StreamDenial(
                        .notApproved,
                        "access request \(request) has not been approved by the customer (privacy mode approvedOnly); the customer approves it with `connector requests approve \(request)`"))
            }
            if approval.verdict == .rejected {
                return .failure(
                    StreamDenial(.rejectedByCustomer, "access request \(request) was rejected by \(approval.by) at \(Timestamp.text(approval.decidedAt))"))
            }
            if approval.expiresAt <= now {
                return .failure(
                    StreamDenial(.approvalExpired, "the customer's approval of access request \(request) expired at \(Timestamp.text(approval.expiresAt))"))
            }
            role = min(stamped, approval.role)
            if approval.role < stamped { loweredBy = "the customer approved access request \(request) as \(approval.role.rawValue)" }
        }

        var method = facts.method
        guard Self.isUpperCaseToken(method) else {
            // A component may read "get" as GET while a rule reads it as something else: one spelling only.
            return .failure(StreamDenial(.badMethod, "the method must be an upper-case token such as GET (at most 32 characters)"))
        }
        let allowed = rules.methods[role] ?? []
        let webSocket = method == "CONNECT" && facts.connectProtocol == "websocket"
        if method == "CONNECT", let other = facts.connectProtocol, !webSocket {
            return .failure(StreamDenial(.unsupportedProtocol, "CONNECT for protocol \"\(other)\" is not carried; websocket is"))
        }
        if webSocket {
            // Reaches the component as the GET of an upgrade; the viewer's path rule follows below.
            method = "GET"
            guard allowed.contains(method) else {
                return .failure(
                    StreamDenial(.roleForbidsMethod, (loweredBy.map { "\($0): " } ?? "") + "role \(role.rawValue) may not open websockets"))
            }
        } else {
            if PrivacyRules.forbiddenMethods.contains(method) {
                return .failure(StreamDenial(.methodNotAllowed, "\(method) is never forwarded to a component"))
            }
            guard allowed.contains(method) else {
                return .failure(
                    StreamDenial(
                        .roleForbidsMethod,
                        (loweredBy.map { "\($0): " } ?? "") + "role \(role.rawValue) allows \(allowed.sorted().joined(separator: ", ")) only, not \(method)"))
            }
        }

        let target: NormalizedTarget
        switch RequestTargetNormalizer.normalize(facts.target) {
        case .success(let normalized): target = normalized
        case .failure(.absoluteForm): return .failure(StreamDenial(.absoluteForm, TargetRejection.absoluteForm.description))
        case .failure(let rejection): return .failure(StreamDenial(.badTarget, rejection.description))
        }
        if let override = methodOverride(facts, query: target.query) {
            return .failure(StreamDenial(.methodOverride, "method override (\(override)) is refused: send the real method"))
        }
        let hosts = facts.values("host")
        if hosts.count > 1 {
            return .failure(StreamDenial(.badHost, "more than one Host header"))
        }
        if let host = hosts.first, host.lowercased() != component.name.lowercased(), host.lowercased() != component.authority.lowercased() {
            return .failure(StreamDenial(.badHost, "Host \"\(host)\" does not name component \"\(component.name)\""))
        }
        if let framing = framingProblem(facts) {
            return .failure(StreamDenial(.badFraming, framing))
        }
        if let prefix = rules.deniedPrefix(for: target, component: component) {
            return .failure(StreamDenial(.deniedPath, "the customer denies paths under \(prefix) on component \"\(component.name)\""))
        }
        if webSocket && role == .viewer && !rules.viewerMayOpenWebSocket(to: target, component: component) {
            let listed = component.viewerWebSocketPaths.isEmpty ? "none" : component.viewerWebSocketPaths.joined(separator: ", ")
            return .failure(
                StreamDenial(
                    .roleForbidsWebSocket,
                    (loweredBy.map { "\($0): " } ?? "")
                        + "role viewer may open websockets on component \"\(component.name)\" only under the paths the customer lists (viewer_websocket_paths: \(listed))"))
        }
        var headers: [StreamFacts.Header] = []
        var stripped: [String] = []
        for header in facts.headers where !header.name.hasPrefix("x-relay-") {
            if PrivacyRules.isStripped(header.name) && !component.passedHeaders.contains(header.name) {
                stripped.append(header.name)
            } else {
                headers.append(header)
            }
        }
        return .success(
            StreamPermit(
                component: component.name, expert: expert, session: session, accessRequest: request, role: role, method: method,
                webSocket: webSocket, target: target, headers: headers, strippedHeaders: stripped))
    }

    /// RFC 9110 token characters without lower-case letters; GET, PROPFIND, M-SEARCH pass.
    static func isUpperCaseToken(_ method: String) -> Bool {
        let bytes = method.utf8
        guard !bytes.isEmpty, bytes.count <= 32 else { return false }
        return bytes.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
            case UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"),
                UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "^"),
                UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
                true
            default: false
            }
        }
    }

    private static func methodOverride(_ facts: StreamFacts, query: String?) -> String? {
        if let header = facts.headers.first(where: { PrivacyRules.methodOverrideNames.contains($0.name) }) { return "header \(header.name)" }
        guard let query else { return nil }
        for pair in query.split(separator: "&") {
            let key = String(pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
            let decoded = (key.removingPercentEncoding ?? key).lowercased()
            if PrivacyRules.methodOverrideNames.contains(decoded) { return "parameter \(decoded)" }
        }
        return nil
    }

    /// Request smuggling shapes: a body length two hops could read differently.
    private static func framingProblem(_ facts: StreamFacts) -> String? {
        let lengths = facts.values("content-length").flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }
        if lengths.contains(where: { $0.isEmpty || !$0.allSatisfy(\.isASCIIDigit) }) { return "Content-Length is not a number" }
        if Set(lengths).count > 1 { return "conflicting Content-Length values" }
        let encodings = facts.values("transfer-encoding")
        if !encodings.isEmpty {
            if !lengths.isEmpty { return "both Content-Length and Transfer-Encoding" }
            let codings = encodings.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            if codings != ["chunked"] { return "Transfer-Encoding other than chunked" }
        }
        return nil
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { self >= "0" && self <= "9" }
}

/// The customer's session limits, checked on every request and by a periodic sweep.
public enum SessionLimits {
    /// Why a session that started at `startedAt` and was last active at `lastActivity` must end now, if it must.
    public static func endReason(startedAt: Date, lastActivity: Date, rules: PrivacyRules, now: Date) -> String? {
        let ms = { (interval: TimeInterval) in Int64(interval * 1000) }
        if rules.maxSessionMilliseconds > 0, ms(now.timeIntervalSince(startedAt)) >= rules.maxSessionMilliseconds {
            return "the session reached the customer's maximum session length (\(formatMilliseconds(rules.maxSessionMilliseconds)))"
        }
        if rules.idleTimeoutMilliseconds > 0, ms(now.timeIntervalSince(lastActivity)) >= rules.idleTimeoutMilliseconds {
            return "the session was idle for the customer's idle timeout (\(formatMilliseconds(rules.idleTimeoutMilliseconds)))"
        }
        return nil
    }
}

