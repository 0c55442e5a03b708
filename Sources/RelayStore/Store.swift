import Foundation
import RelayModel

/// The relay's persistent state, behind a small protocol: `SQLiteStore` is the embedded default,
/// `PostgresStore` lets several relay nodes share one database. Every method is one transaction.
public protocol Store: Sendable {
    /// Closes the database; nothing may call the store afterwards (the relay stops it last).
    func close() async throws
    /// One trivial query: whether the store answers now (readiness).
    func ping() async throws

    // Clusters and registration
    /// Fails with `StoreError.conflict` when the cluster exists.
    func createCluster(_ cluster: ClusterRecord, enrollment: EnrollmentRecord) async throws
    func addEnrollment(_ enrollment: EnrollmentRecord) async throws
    func cluster(id: String) async throws -> ClusterRecord?
    func clusters() async throws -> [ClusterRecord]
    /// Uses the enrollment token (once) and stores the node's credential, atomically.
    func register(enrollmentHash: String, credential: CredentialRecord, now: Date) async throws -> RegistrationOutcome
    func credential(hash: String) async throws -> CredentialRecord?

    // Heartbeats
    /// Stores the node's latest heartbeat and the cluster's reported mode; returns the node's previous record.
    @discardableResult func recordHeartbeat(_ node: NodeRecord) async throws -> NodeRecord?
    /// Writes the time and health of heartbeats kept in memory, in one transaction; a row that
    /// already holds a later heartbeat (from another writer) keeps it.
    func recordLiveness(_ nodes: [NodeRecord]) async throws
    /// What a heartbeat reads, in one read: the credential with this hash and, only if it is
    /// unrevoked and belongs to this cluster and node, the node's row, the cluster's mode, its
    /// pending and approved requests and those that ended since `endedSince` (newest first).
    func heartbeatView(credentialHash: String, clusterID: String, nodeID: String, endedSince: Date, endedLimit: Int) async throws -> HeartbeatView
    func nodes(clusterID: String) async throws -> [NodeRecord]

    // Tokens
    /// Fails with `StoreError.conflict` when a token with that name exists.
    func createToken(_ token: TokenRecord) async throws
    func token(hash: String) async throws -> TokenRecord?
    func tokens() async throws -> [TokenRecord]
    /// Marks the token revoked; nil when there is no such token.
    func revokeToken(name: String, by: String, at: Date) async throws -> TokenRecord?

    // Access requests
    /// Stores a new request; the store assigns its ID.
    func createRequest(_ request: AccessRequestRecord) async throws -> AccessRequestRecord
    func request(id: Int64) async throws -> AccessRequestRecord?
    func requests(clusterID: String?, states: Set<RequestState>?) async throws -> [AccessRequestRecord]
    /// The cluster's requests that ended (expired, revoked, rejected) at or after `since`, newest first, at most `limit`.
    func endedRequests(clusterID: String, since: Date, limit: Int) async throws -> [AccessRequestRecord]
    /// Replaces the request if its state is still `expected` (compare and set); false otherwise.
    func updateRequest(_ request: AccessRequestRecord, expecting expected: RequestState) async throws -> Bool

    // Sessions
    func createSession(_ session: SessionRecord) async throws
    func session(id: String) async throws -> SessionRecord?
    /// Live sessions only (no end time) when `live` is true.
    func sessions(live: Bool) async throws -> [SessionRecord]
    /// Replaces the session's counters, end time and end reason; once an end is recorded the
    /// record is final and later updates are ignored.
    func updateSession(_ session: SessionRecord) async throws
    /// Records a kill request for a live session; nil when there is no live session with that ID.
    func requestKill(sessionID: String, by: String) async throws -> SessionRecord?

    /// Ends the live sessions relay node `relayNode` carries that started before `startedBefore`,
    /// and, with `unlessSeenSince`, only if the node has not announced itself since then (checked in
    /// the same transaction: a node that came back keeps its sessions). Of several nodes sweeping at
    /// once, one ends each session. Returns those ended here.
    func endSessions(onRelayNode relayNode: String, startedBefore: Date, unlessSeenSince: Date?, at: Date, reason: String) async throws -> [SessionRecord]

    // Relay nodes
    /// Inserts or refreshes the node's row (its URL, start and last-seen time).
    func announceRelayNode(_ node: RelayNodeRecord) async throws
    func relayNodes() async throws -> [RelayNodeRecord]
    /// Removes the node's row: a node leaving on purpose (a drain; `seenBefore` nil), or a silent one
    /// (only if it has not announced itself since `seenBefore`).
    func removeRelayNode(id: String, seenBefore: Date?) async throws

    /// Stores `value` under `name` unless a value is stored already; returns the stored value. What
    /// every node must agree on (the token hash key's fingerprint) is checked against the first.
    func claimSetting(_ name: String, value: String) async throws -> String

    // Changes between nodes
    /// Tells every node sharing the store that access changed (a request decided or ended, a token
    /// revoked, a session killed), so that their reconcilers look now rather than at their next tick.
    /// Best effort: a lost message costs the other nodes one reconcile interval.
    func announceAccessChange() async
    /// Yields when another node (or this one) announced an access change; ends when the store closes.
    func accessChanges() -> AsyncStream<Void>

    // Audit trail (append only)
    func appendAudit(_ records: [AuditRecord]) async throws
    /// Records with `time >= since` and `id > afterID`, oldest first, at most `limit`.
    func audit(since: Date?, afterID: Int64, limit: Int) async throws -> [AuditRecord]
    /// Deletes records older than `before` (retention); returns how many.
    func pruneAudit(before: Date) async throws -> Int
}

public enum RegistrationOutcome: Sendable, Equatable {
    case registered(clusterID: String)
    case unknownToken
    case alreadyUsed(at: Date)
    case expired(at: Date)
}

public enum StoreError: Error, CustomStringConvertible, Equatable {
    case conflict(String)
    case notFound(String)

    public var description: String {
        switch self {
        case .conflict(let what): "\(what) already exists"
        case .notFound(let what): "\(what) not found"
        }
    }
}

/// What a heartbeat reads from the store (`Store.heartbeatView`).
public struct HeartbeatView: Sendable {
    public var credential: CredentialRecord?
    /// The node's row as stored (nil before its first heartbeat).
    public var node: NodeRecord?
    /// The mode the store holds for the cluster (the last one written by any of its nodes).
    public var clusterMode: PrivacyMode?
    /// Pending and approved requests, oldest first.
    public var open: [AccessRequestRecord]
    public var ended: [AccessRequestRecord]

    public init(
        credential: CredentialRecord?, node: NodeRecord? = nil, clusterMode: PrivacyMode? = nil, open: [AccessRequestRecord] = [],
        ended: [AccessRequestRecord] = []
    ) {
        self.credential = credential
        self.node = node
        self.clusterMode = clusterMode
        self.open = open
        self.ended = ended
    }
}
