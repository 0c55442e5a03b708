import Foundation
import RelayModel

/// JSON bodies of the relay's HTTPS API (docs/API.md). Keys are camelCase, like the store's records,
/// which the ops endpoints return as they are. The endpoints themselves are `RelayEndpoints`.
///
/// Paths without parameters, from the endpoint table: for raw calls (tests sending odd input).
public enum APIPath {
    public static let register = RelayEndpoints.register.template.description
    public static let heartbeat = RelayEndpoints.heartbeat.template.description
    public static let clusters = RelayEndpoints.clusters.template.description
    public static let requests = RelayEndpoints.requests.template.description
    public static let sessions = RelayEndpoints.sessions.template.description
    public static let tokens = RelayEndpoints.tokens.template.description
    public static let audit = RelayEndpoints.audit.template.description
    public static let whoami = RelayEndpoints.whoami.template.description
    public static let relayNodes = RelayEndpoints.relayNodes.template.description
}

// MARK: connector <-> relay

public struct RegisterRequest: Codable, Sendable, Equatable {
    public var enrollmentToken: String
    public var nodeID: String
    public init(enrollmentToken: String, nodeID: String) {
        self.enrollmentToken = enrollmentToken
        self.nodeID = nodeID
    }
}

public struct RegisterResponse: Codable, Sendable, Equatable {
    public var clusterID: String
    public var nodeID: String
    /// The node's credential: shown once, kept by the connector in a 0600 file.
    public var credential: String
    public init(clusterID: String, nodeID: String, credential: String) {
        self.clusterID = clusterID
        self.nodeID = nodeID
        self.credential = credential
    }
}

/// The customer's settings in force, as far as the relay needs to know them. Never addresses.
public struct PrivacySettings: Codable, Sendable, Equatable {
    public var mode: PrivacyMode
    /// Component names the connector allows (names only; their addresses never leave the cluster).
    public var components: [String]
    public init(mode: PrivacyMode, components: [String]) {
        self.mode = mode
        self.components = components
    }
}

/// A node's health, as in the vendor's health-check data exchange. Nothing that identifies or
/// locates a machine: no host names, addresses, users or paths.
public struct NodeHealth: Codable, Sendable, Equatable {
    public var osName: String
    public var osVersion: String
    public var cpuCores: Int
    /// 1-minute load average.
    public var cpuLoad: Double
    public var ramTotalBytes: Int64
    public var ramFreeBytes: Int64
    public var diskTotalBytes: Int64
    public var diskUsedBytes: Int64
    /// "running", "starting", "degraded" or "stopping".
    public var serverState: String
    public var masterNode: Bool
    public var startedAt: Date

    public init(
        osName: String, osVersion: String, cpuCores: Int, cpuLoad: Double, ramTotalBytes: Int64, ramFreeBytes: Int64,
        diskTotalBytes: Int64, diskUsedBytes: Int64, serverState: String, masterNode: Bool, startedAt: Date
    ) {
        self.osName = osName
        self.osVersion = osVersion
        self.cpuCores = cpuCores
        self.cpuLoad = cpuLoad
        self.ramTotalBytes = ramTotalBytes
        self.ramFreeBytes = ramFreeBytes
        self.diskTotalBytes = diskTotalBytes
        self.diskUsedBytes = diskUsedBytes
        self.serverState = serverState
        self.masterNode = masterNode
        self.startedAt = startedAt
    }
}

/// The customer's answer to a pending request, carried by the next heartbeat.
public struct ApprovalDecision: Codable, Sendable, Equatable {
    /// `revoke`: the customer takes back an approval (or the relay's own approval in modes `all`,
    /// `readOnly`); the relay revokes the request.
    public enum Verdict: String, Codable, Sendable { case approve, reject, revoke }
    public var requestID: Int64
    public var verdict: Verdict
    /// The customer's user who decided (recorded in the relay's audit trail).
    public var by: String
    /// The customer's own words, if any (a rejection's reason is shown to the engineer).
    public var reason: String?
    public init(requestID: Int64, verdict: Verdict, by: String, reason: String? = nil) {
        self.requestID = requestID
        self.verdict = verdict
        self.by = by
        self.reason = reason
    }
}

public struct HeartbeatRequest: Codable, Sendable, Equatable {
    public var clusterID: String
    public var nodeID: String
    /// What kind of installation sends it, for example "server".
    public var sourceType: String
    public var connectorVersion: String
    public var privacy: PrivacySettings
    public var health: NodeHealth?
    public var decisions: [ApprovalDecision]

    public init(
        clusterID: String, nodeID: String, sourceType: String, connectorVersion: String, privacy: PrivacySettings,
        health: NodeHealth?, decisions: [ApprovalDecision] = []
    ) {
        self.clusterID = clusterID
        self.nodeID = nodeID
        self.sourceType = sourceType
        self.connectorVersion = connectorVersion
        self.privacy = privacy
        self.health = health
        self.decisions = decisions
    }
}

/// A request waiting for the customer's approval, as shown to the customer.
public struct PendingApproval: Codable, Sendable, Equatable {
    public var requestID: Int64
    public var expert: String
    public var reason: String
    public var role: AccessRole
    public var durationSeconds: Int64
    public var createdAt: Date

    public init(_ request: AccessRequestRecord) {
        self.requestID = request.id
        self.expert = request.expert
        self.reason = request.reason
        self.role = request.role
        self.durationSeconds = request.durationSeconds
        self.createdAt = request.createdAt
    }
}

public struct HeartbeatResponse: Codable, Sendable, Equatable {
    /// Set exactly while an approved, unexpired access request exists for the cluster.
    public var remoteUIRequested: Bool
    /// One wss:// URL per relay node; dial each while the flag is set.
    public var websocketURLs: [String]
    /// The relay's wish for the next interval (nil: use the connector's configured interval).
    public var nextHeartbeatSeconds: Int?
    public var pendingApprovals: [PendingApproval]
    /// The role of the approved request in force (the strongest, when there are several); nil without one.
    public var activeRole: AccessRole?
    /// The cluster's requests that ended in the last day (revoked, expired, rejected) and why:
    /// what a connector without a tunnel up (or whose tunnel closed first) did not hear at once.
    public var endedRequests: [EndedAccessRequest]?
    /// When a tunnel drops without warning or because its relay node drained, redial after a
    /// random delay within this window, so that a relay node's connectors do not all come back in
    /// the same second after it restarts (nil: the connector's own default).
    public var reconnectSpreadMilliseconds: Int64?

    public init(
        remoteUIRequested: Bool, websocketURLs: [String], nextHeartbeatSeconds: Int?, pendingApprovals: [PendingApproval],
        activeRole: AccessRole?, endedRequests: [EndedAccessRequest]? = nil, reconnectSpreadMilliseconds: Int64? = nil
    ) {
        self.reconnectSpreadMilliseconds = reconnectSpreadMilliseconds
        self.remoteUIRequested = remoteUIRequested
        self.websocketURLs = websocketURLs
        self.nextHeartbeatSeconds = nextHeartbeatSeconds
        self.pendingApprovals = pendingApprovals
        self.activeRole = activeRole
        self.endedRequests = endedRequests
    }
}

public struct EndedAccessRequest: Codable, Sendable, Equatable {
    public var requestID: Int64
    public var expert: String
    /// revoked, expired or rejected.
    public var state: String
    public var reason: String
    public init(requestID: Int64, expert: String, state: String, reason: String) {
        self.requestID = requestID
        self.expert = expert
        self.state = state
        self.reason = reason
    }
}

// MARK: ops and experts

public struct CreateClusterRequest: Codable, Sendable {
    public var id: String
    public var description: String
    public init(id: String, description: String) {
        self.id = id
        self.description = description
    }
}

public struct EnrollmentResponse: Codable, Sendable {
    public var clusterID: String
    /// Shown once; the relay keeps only its hash.
    public var enrollmentToken: String
    public var expiresAt: Date
    public init(clusterID: String, enrollmentToken: String, expiresAt: Date) {
        self.clusterID = clusterID
        self.enrollmentToken = enrollmentToken
        self.expiresAt = expiresAt
    }
}

public struct ClusterDetail: Codable, Sendable {
    public struct Node: Codable, Sendable {
        public var record: NodeRecord
        public var health: NodeHealth?
        /// Tunnels this node keeps to the relay node that answered.
        public var tunnelsHere: Int
        /// The component names this node's connector offers (names only, from its last heartbeat).
        public var components: [String]
        public init(record: NodeRecord, health: NodeHealth?, tunnelsHere: Int) {
            self.record = record
            self.health = health
            self.tunnelsHere = tunnelsHere
            self.components = record.privacySettings?.components ?? []
        }
    }
    public var cluster: ClusterRecord
    public var remoteUIRequested: Bool
    public var nodes: [Node]
    public var activeRequests: [AccessRequestRecord]
    /// Components any node offers: what `relayctl session open --component` can name.
    public var components: [String]
    public init(cluster: ClusterRecord, remoteUIRequested: Bool, nodes: [Node], activeRequests: [AccessRequestRecord]) {
        self.cluster = cluster
        self.remoteUIRequested = remoteUIRequested
        self.nodes = nodes
        self.activeRequests = activeRequests
        self.components = Array(Set(nodes.flatMap(\.components))).sorted()
    }
}

public struct CreateAccessRequest: Codable, Sendable {
    public var clusterID: String
    /// Defaults to the caller for experts; operators name the expert they act for.
    public var expert: String?
    public var reason: String
    public var role: AccessRole
    public var durationSeconds: Int64
    public init(clusterID: String, expert: String?, reason: String, role: AccessRole, durationSeconds: Int64) {
        self.clusterID = clusterID
        self.expert = expert
        self.reason = reason
        self.role = role
        self.durationSeconds = durationSeconds
    }
}

public struct RevokeRequest: Codable, Sendable {
    public var reason: String?
    public init(reason: String?) { self.reason = reason }
}

public struct CreateTokenRequest: Codable, Sendable {
    public var name: String
    public var role: TokenRole
    public var ttlSeconds: Int64?
    public init(name: String, role: TokenRole, ttlSeconds: Int64?) {
        self.name = name
        self.role = role
        self.ttlSeconds = ttlSeconds
    }
}

/// A token as listed: never the hash, never the secret.
public struct TokenView: Codable, Sendable, Equatable {
    public var name: String
    public var role: TokenRole
    public var createdAt: Date
    public var createdBy: String
    public var expiresAt: Date?
    public var revokedAt: Date?
    public var revokedBy: String?
    public init(_ record: TokenRecord) {
        self.name = record.name
        self.role = record.role
        self.createdAt = record.createdAt
        self.createdBy = record.createdBy
        self.expiresAt = record.expiresAt
        self.revokedAt = record.revokedAt
        self.revokedBy = record.revokedBy
    }
}

public struct TokenCreated: Codable, Sendable {
    public var token: TokenView
    /// Shown once.
    public var secret: String
    public init(token: TokenView, secret: String) {
        self.token = token
        self.secret = secret
    }
}

public struct AuditPage: Codable, Sendable {
    public var records: [AuditRecord]
    /// Pass as `after` to read on; nil at the end.
    public var nextAfter: Int64?
    public init(records: [AuditRecord], nextAfter: Int64?) {
        self.records = records
        self.nextAfter = nextAfter
    }
}

/// `GET /v1/relay-nodes`: the relay nodes sharing this store, as connectors are sent them.
public struct RelayNodeView: Codable, Sendable, Equatable {
    public var id: String
    /// Where connectors dial it; relayctl opens sessions on the same host and port.
    public var tunnelURL: String
    public var startedAt: Date
    public var lastSeenAt: Date
    /// Seen within `node_ttl`: listed in heartbeat answers.
    public var live: Bool
    /// Tunnels and sessions it carried when it last announced itself.
    public var tunnels: Int
    public var sessions: Int

    /// A node of an earlier version sends no counts: 0.
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.id = try container.decode(String.self, forKey: .id)
        self.tunnelURL = try container.decode(String.self, forKey: .tunnelURL)
        self.startedAt = try container.decode(Date.self, forKey: .startedAt)
        self.lastSeenAt = try container.decode(Date.self, forKey: .lastSeenAt)
        self.live = try container.decode(Bool.self, forKey: .live)
        self.tunnels = try container.decodeIfPresent(Int.self, forKey: .tunnels) ?? 0
        self.sessions = try container.decodeIfPresent(Int.self, forKey: .sessions) ?? 0
    }

    public init(id: String, tunnelURL: String, startedAt: Date, lastSeenAt: Date, live: Bool, tunnels: Int = 0, sessions: Int = 0) {
        self.tunnels = tunnels
        self.sessions = sessions
        self.id = id
        self.tunnelURL = tunnelURL
        self.startedAt = startedAt
        self.lastSeenAt = lastSeenAt
        self.live = live
    }
}

/// `GET /v1/status`: what the operators' status page shows, from the node that answers (its
/// tunnels; the others' counts as they last announced them).
public struct RelayStatus: Codable, Sendable {
    /// The node that answered, and when.
    public var node: String
    public var generatedAt: Date
    public var relayNodes: [RelayNodeView]
    /// Clusters with their nodes (last heartbeat, mode, health, tunnels to the answering node) and active requests.
    public var clusters: [ClusterDetail]
    /// Live sessions on every node.
    public var sessions: [SessionRecord]
    public var pendingRequests: [AccessRequestRecord]
    public var activeRequests: [AccessRequestRecord]

    public init(
        node: String, generatedAt: Date, relayNodes: [RelayNodeView], clusters: [ClusterDetail], sessions: [SessionRecord],
        pendingRequests: [AccessRequestRecord], activeRequests: [AccessRequestRecord]
    ) {
        self.node = node
        self.generatedAt = generatedAt
        self.relayNodes = relayNodes
        self.clusters = clusters
        self.sessions = sessions
        self.pendingRequests = pendingRequests
        self.activeRequests = activeRequests
    }
}

public struct WhoAmI: Codable, Sendable {
    public var name: String
    public var role: TokenRole
    public init(name: String, role: TokenRole) {
        self.name = name
        self.role = role
    }
}

/// Every error the API returns: `{"error": code, "message": text}` with the status.
public struct APIErrorBody: Codable, Sendable, Equatable {
    public var error: String
    public var message: String
    /// The call's `x-request-id`: what to quote to the relay's operators (their log and audit have it).
    public var requestID: String?
    public init(error: String, message: String, requestID: String? = nil) {
        self.error = error
        self.message = message
        self.requestID = requestID
    }
}

public enum APIJSON {
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}

extension NodeRecord {
    /// The privacy settings the node's connector reported (nil before its first heartbeat).
    public var privacySettings: PrivacySettings? {
        try? APIJSON.decoder().decode(PrivacySettings.self, from: Data(self.privacyJSON.utf8))
    }
}
