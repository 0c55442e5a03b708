import Foundation

/// What a token lets its holder do on the relay's API.
public enum TokenRole: String, Codable, Sendable, CaseIterable {
    /// A support engineer: asks for access for themselves and opens sessions.
    case expert
    /// An operator: enrolls clusters, manages tokens, creates and revokes requests for anyone.
    case ops
}

/// The role an access request grants inside the cluster's components (the connector enforces it).
public enum AccessRole: String, Codable, Sendable, CaseIterable, Comparable {
    case viewer, user, admin

    private var rank: Int {
        switch self {
        case .viewer: 0
        case .user: 1
        case .admin: 2
        }
    }

    public static func < (lhs: AccessRole, rhs: AccessRole) -> Bool { lhs.rank < rhs.rank }
}

/// pending -> approved -> expired | revoked; pending -> rejected | revoked.
public enum RequestState: String, Codable, Sendable, CaseIterable {
    case pending, approved, expired, revoked, rejected

    public var isFinal: Bool { self != .pending && self != .approved }
}

/// The customer's remote-access setting, as the connector reports it in each heartbeat.
public enum PrivacyMode: String, Codable, Sendable, CaseIterable {
    case disabled, all, readOnly, approvedOnly

    /// Whether the relay may approve requests without asking the customer.
    public var approvesAutomatically: Bool { self == .all || self == .readOnly }
}

public struct ClusterRecord: Codable, Sendable, Equatable {
    public var id: String
    public var description: String
    public var createdAt: Date
    public var createdBy: String
    /// Last mode a connector of this cluster reported; nil before the first heartbeat.
    public var privacyMode: PrivacyMode?
    public var lastHeartbeatAt: Date?

    public init(id: String, description: String, createdAt: Date, createdBy: String, privacyMode: PrivacyMode? = nil, lastHeartbeatAt: Date? = nil) {
        self.id = id
        self.description = description
        self.createdAt = createdAt
        self.createdBy = createdBy
        self.privacyMode = privacyMode
        self.lastHeartbeatAt = lastHeartbeatAt
    }
}

/// A one-time enrollment token (stored as a keyed hash only).
public struct EnrollmentRecord: Codable, Sendable, Equatable {
    public var tokenHash: String
    public var clusterID: String
    public var createdAt: Date
    public var createdBy: String
    public var expiresAt: Date
    public var usedAt: Date?
    public var usedByNode: String?

    public init(tokenHash: String, clusterID: String, createdAt: Date, createdBy: String, expiresAt: Date, usedAt: Date? = nil, usedByNode: String? = nil) {
        self.tokenHash = tokenHash
        self.clusterID = clusterID
        self.createdAt = createdAt
        self.createdBy = createdBy
        self.expiresAt = expiresAt
        self.usedAt = usedAt
        self.usedByNode = usedByNode
    }
}

/// One node's credential: issued at registration, bound to cluster and node (stored as a keyed hash).
public struct CredentialRecord: Codable, Sendable, Equatable {
    public var credentialHash: String
    public var clusterID: String
    public var nodeID: String
    public var createdAt: Date
    public var revokedAt: Date?

    public init(credentialHash: String, clusterID: String, nodeID: String, createdAt: Date, revokedAt: Date? = nil) {
        self.credentialHash = credentialHash
        self.clusterID = clusterID
        self.nodeID = nodeID
        self.createdAt = createdAt
        self.revokedAt = revokedAt
    }

    /// Whether this credential, unrevoked, speaks for exactly this cluster and node.
    public func authenticates(cluster: String?, node: String?) -> Bool {
        self.revokedAt == nil && self.clusterID == cluster && self.nodeID == node
    }
}

/// What the latest heartbeat of one node said.
public struct NodeRecord: Codable, Sendable, Equatable {
    public var clusterID: String
    public var nodeID: String
    public var sourceType: String
    public var connectorVersion: String
    public var privacyMode: PrivacyMode
    /// The privacy settings in force, as JSON the connector sent.
    public var privacyJSON: String
    /// Node health as JSON the connector sent ("{}" when it sent none).
    public var healthJSON: String
    public var lastHeartbeatAt: Date
    public var registeredAt: Date
    /// What the last heartbeat answer told this node (changes are audited).
    public var remoteUIRequested: Bool

    public init(
        clusterID: String, nodeID: String, sourceType: String, connectorVersion: String, privacyMode: PrivacyMode,
        privacyJSON: String, healthJSON: String, lastHeartbeatAt: Date, registeredAt: Date, remoteUIRequested: Bool
    ) {
        self.remoteUIRequested = remoteUIRequested
        self.clusterID = clusterID
        self.nodeID = nodeID
        self.sourceType = sourceType
        self.connectorVersion = connectorVersion
        self.privacyMode = privacyMode
        self.privacyJSON = privacyJSON
        self.healthJSON = healthJSON
        self.lastHeartbeatAt = lastHeartbeatAt
        self.registeredAt = registeredAt
    }
}

public struct TokenRecord: Codable, Sendable, Equatable {
    public var name: String
    public var role: TokenRole
    public var tokenHash: String
    public var createdAt: Date
    public var createdBy: String
    public var expiresAt: Date?
    public var revokedAt: Date?
    public var revokedBy: String?

    public init(
        name: String, role: TokenRole, tokenHash: String, createdAt: Date, createdBy: String, expiresAt: Date? = nil,
        revokedAt: Date? = nil, revokedBy: String? = nil
    ) {
        self.name = name
        self.role = role
        self.tokenHash = tokenHash
        self.createdAt = createdAt
        self.createdBy = createdBy
        self.expiresAt = expiresAt
        self.revokedAt = revokedAt
        self.revokedBy = revokedBy
    }

    /// Usable now: not revoked and not past its expiry.
    public func isValid(at now: Date) -> Bool {
        self.revokedAt == nil && (self.expiresAt.map { now < $0 } ?? true)
    }
}

public struct AccessRequestRecord: Codable, Sendable, Equatable {
    public var id: Int64
    public var clusterID: String
    public var expert: String
    public var reason: String
    public var role: AccessRole
    public var durationSeconds: Int64
    public var state: RequestState
    public var createdAt: Date
    public var createdBy: String
    /// Who moved it to its current state, and when (the creator and creation time while pending).
    public var changedAt: Date
    public var changedBy: String
    public var approvedAt: Date?
    /// approvedAt + duration; set on approval.
    public var expiresAt: Date?
    /// Why it ended (revoke reason, rejection, expiry), for messages and audit.
    public var endReason: String?

    public init(
        id: Int64, clusterID: String, expert: String, reason: String, role: AccessRole, durationSeconds: Int64,
        state: RequestState, createdAt: Date, createdBy: String, changedAt: Date, changedBy: String,
        approvedAt: Date? = nil, expiresAt: Date? = nil, endReason: String? = nil
    ) {
        self.id = id
        self.clusterID = clusterID
        self.expert = expert
        self.reason = reason
        self.role = role
        self.durationSeconds = durationSeconds
        self.state = state
        self.createdAt = createdAt
        self.createdBy = createdBy
        self.changedAt = changedAt
        self.changedBy = changedBy
        self.approvedAt = approvedAt
        self.expiresAt = expiresAt
        self.endReason = endReason
    }

    /// Approved and not yet past its window: the cluster's flag is set while one of these exists.
    public func isActive(at now: Date) -> Bool {
        self.state == .approved && (self.expiresAt.map { now < $0 } ?? false)
    }
}

public struct SessionRecord: Codable, Sendable, Equatable {
    public var id: String
    public var expert: String
    public var clusterID: String
    public var node: String?
    public var component: String
    public var requestID: Int64
    public var role: AccessRole
    /// The relay node that carries it.
    public var relayNode: String
    public var startedAt: Date
    public var endedAt: Date?
    public var requests: Int64
    public var bytesIn: Int64
    public var bytesOut: Int64
    public var endReason: String?
    /// Set by `sessions kill`; the relay node carrying the session closes it.
    public var killRequestedBy: String?

    public init(
        id: String, expert: String, clusterID: String, node: String?, component: String, requestID: Int64, role: AccessRole,
        relayNode: String, startedAt: Date, endedAt: Date? = nil, requests: Int64 = 0, bytesIn: Int64 = 0, bytesOut: Int64 = 0,
        endReason: String? = nil, killRequestedBy: String? = nil
    ) {
        self.id = id
        self.expert = expert
        self.clusterID = clusterID
        self.node = node
        self.component = component
        self.requestID = requestID
        self.role = role
        self.relayNode = relayNode
        self.startedAt = startedAt
        self.endedAt = endedAt
        self.requests = requests
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
        self.endReason = endReason
        self.killRequestedBy = killRequestedBy
    }
}

/// A relay node as it announces itself in the shared store: connectors are sent the tunnel URL of
/// every node seen within the liveness deadline, and the survivors end a silent node's sessions.
public struct RelayNodeRecord: Codable, Sendable, Equatable {
    /// The node's `node_name`.
    public var id: String
    /// Where connectors dial this node (`wss://HOST:PORT/v1/tunnel`); engineers' sessions use the same listener.
    public var tunnelURL: String
    public var startedAt: Date
    public var lastSeenAt: Date
    /// Tunnels and sessions the node carried when it last announced itself (the status page).
    public var tunnels: Int
    public var sessions: Int

    public init(id: String, tunnelURL: String, startedAt: Date, lastSeenAt: Date, tunnels: Int = 0, sessions: Int = 0) {
        self.tunnels = tunnels
        self.sessions = sessions
        self.id = id
        self.tunnelURL = tunnelURL
        self.startedAt = startedAt
        self.lastSeenAt = lastSeenAt
    }
}

/// One line of the relay's audit trail.
public struct AuditRecord: Codable, Sendable, Equatable {
    public enum Outcome: String, Codable, Sendable { case ok, denied }

    public var id: Int64
    public var time: Date
    /// "ops:NAME", "expert:NAME", "connector:CLUSTER/NODE", "relay" (timers), or "anonymous".
    public var actor: String
    /// Dotted verb: cluster.enroll, node.register, heartbeat.flag, request.create, request.approve,
    /// session.start, session.end, tunnel.open, token.create, ...
    public var action: String
    public var clusterID: String?
    /// The object acted on (request ID, session ID, token name, node ID).
    public var subject: String?
    public var outcome: Outcome
    public var reason: String?
    /// The API call or upgrade this was recorded while answering (`x-request-id`): the same ID is
    /// in the relay's log and, for a call the connector made, in the customer's audit log.
    public var requestID: String?

    public init(
        id: Int64 = 0, time: Date, actor: String, action: String, clusterID: String? = nil, subject: String? = nil,
        outcome: Outcome = .ok, reason: String? = nil, requestID: String? = nil
    ) {
        self.requestID = requestID
        self.id = id
        self.time = time
        self.actor = actor
        self.action = action
        self.clusterID = clusterID
        self.subject = subject
        self.outcome = outcome
        self.reason = reason
    }
}

public enum Timestamp {
    /// ISO 8601 in UTC, to the second: how times appear in messages and tables.
    public static func text(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }
}

/// A duration in the largest unit that divides it: "30d", "8h", "5m", "10s", "250ms".
public func formatMilliseconds(_ millis: Int64) -> String {
    if millis >= 86_400_000 && millis % 86_400_000 == 0 { return "\(millis / 86_400_000)d" }
    if millis % 3_600_000 == 0 { return "\(millis / 3_600_000)h" }
    if millis % 60_000 == 0 { return "\(millis / 60_000)m" }
    if millis % 1000 == 0 { return "\(millis / 1000)s" }
    return "\(millis)ms"
}

/// `text` with every control character written out (`\n`, `\t`, `\u{1b}`, and backslash as `\\`):
/// what a person or a line-oriented log shows of text someone else chose (an expert's reason, a
/// name), so that it cannot forge lines, colours or cursor moves.
public func visibleText(_ text: String) -> String {
    var out = ""
    for scalar in text.unicodeScalars {
        switch scalar.value {
        case 0x0A: out += "\\n"
        case 0x0D: out += "\\r"
        case 0x09: out += "\\t"
        case 0x5C: out += "\\\\"
        case 0..<0x20, 0x7F, 0x80..<0xA0, 0x2028, 0x2029, 0x202A...0x202E, 0x2066...0x2069:
            out += "\\u{\(String(scalar.value, radix: 16))}"
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out
}

/// Whether `text` holds a control character (or a bidirectional override) that `visibleText` would escape.
public func hasControlCharacters(_ text: String) -> Bool {
    text.unicodeScalars.contains { scalar in
        switch scalar.value {
        case 0..<0x20, 0x7F, 0x80..<0xA0, 0x2028, 0x2029, 0x202A...0x202E, 0x2066...0x2069: true
        default: false
        }
    }
}
