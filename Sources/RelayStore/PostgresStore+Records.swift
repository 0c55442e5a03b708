import Foundation
import PostgresNIO
import RelayModel

// The `Store` methods on PostgreSQL. What SQLiteStore does in one write transaction is one
// statement here where it can be (compare and set, RETURNING), else a transaction with the rows it
// decides on locked (FOR UPDATE), so several nodes writing at once agree.

extension PostgresStore {
    public func ping() async throws {
        _ = try await self.fetch("ping", "SELECT 1 AS one") { try $0.value("one", as: Int64.self) }
    }

    // MARK: clusters and registration

    public func createCluster(_ cluster: ClusterRecord, enrollment: EnrollmentRecord) async throws {
        let logger = self.logger
        try await self.transaction("cluster create") { db in
            let inserted = try await db.query(
                """
                INSERT INTO clusters (id, description, created_at, created_by, privacy_mode, last_heartbeat_at)
                VALUES (\(cluster.id), \(cluster.description), \(cluster.createdAt), \(cluster.createdBy), \(cluster.privacyMode?.rawValue),
                \(cluster.lastHeartbeatAt)) ON CONFLICT (id) DO NOTHING RETURNING id
                """, logger: logger
            ).collect()
            guard !inserted.isEmpty else { throw StoreError.conflict("cluster \"\(cluster.id)\"") }
            try await Self.insert(enrollment, db)
        }
    }

    private static func insert(_ enrollment: EnrollmentRecord, _ db: PostgresConnection) async throws {
        try await db.query(
            """
            INSERT INTO enrollments (token_hash, cluster_id, created_at, created_by, expires_at, used_at, used_by_node)
            VALUES (\(enrollment.tokenHash), \(enrollment.clusterID), \(enrollment.createdAt), \(enrollment.createdBy),
            \(enrollment.expiresAt), \(enrollment.usedAt), \(enrollment.usedByNode))
            """, logger: db.logger)
    }

    public func addEnrollment(_ enrollment: EnrollmentRecord) async throws {
        let logger = self.logger
        try await self.transaction("enrollment add") { db in
            let cluster = try await db.query("SELECT id FROM clusters WHERE id = \(enrollment.clusterID) FOR SHARE", logger: logger).collect()
            guard !cluster.isEmpty else { throw StoreError.notFound("cluster \"\(enrollment.clusterID)\"") }
            try await Self.insert(enrollment, db)
        }
    }

    public func cluster(id: String) async throws -> ClusterRecord? {
        try await self.fetch("cluster", "SELECT * FROM clusters WHERE id = \(id)", PostgresRows.cluster).first
    }

    public func clusters() async throws -> [ClusterRecord] {
        try await self.fetch("clusters", "SELECT * FROM clusters ORDER BY id", PostgresRows.cluster)
    }

    public func register(enrollmentHash: String, credential: CredentialRecord, now: Date) async throws -> RegistrationOutcome {
        let logger = self.logger
        return try await self.transaction("register") { db in
            let found = try await db.query("SELECT * FROM enrollments WHERE token_hash = \(enrollmentHash) FOR UPDATE", logger: logger)
                .records(PostgresRows.enrollment)
            guard let enrollment = found.first else { return .unknownToken }
            if let used = enrollment.usedAt { return .alreadyUsed(at: used) }
            if enrollment.expiresAt <= now { return .expired(at: enrollment.expiresAt) }
            try await db.query(
                "UPDATE enrollments SET used_at = \(now), used_by_node = \(credential.nodeID) WHERE token_hash = \(enrollmentHash)", logger: logger)
            // A node that registers again replaces its old credential.
            try await db.query(
                """
                UPDATE credentials SET revoked_at = \(now)
                WHERE cluster_id = \(enrollment.clusterID) AND node_id = \(credential.nodeID) AND revoked_at IS NULL
                """, logger: logger)
            try await db.query(
                """
                INSERT INTO credentials (credential_hash, cluster_id, node_id, created_at, revoked_at)
                VALUES (\(credential.credentialHash), \(enrollment.clusterID), \(credential.nodeID), \(credential.createdAt), \(credential.revokedAt))
                """, logger: logger)
            return .registered(clusterID: enrollment.clusterID)
        }
    }

    public func credential(hash: String) async throws -> CredentialRecord? {
        try await self.fetch("credential", "SELECT * FROM credentials WHERE credential_hash = \(hash)", PostgresRows.credential).first
    }

    // MARK: heartbeats

    public func recordHeartbeat(_ node: NodeRecord) async throws -> NodeRecord? {
        let logger = self.logger
        return try await self.transaction("heartbeat write") { db in
            let previous = try await db.query(
                "SELECT * FROM nodes WHERE cluster_id = \(node.clusterID) AND node_id = \(node.nodeID) FOR UPDATE", logger: logger
            ).records(PostgresRows.node).first
            try await db.query(
                """
                INSERT INTO nodes (cluster_id, node_id, source_type, connector_version, privacy_mode, privacy_json, health_json,
                  last_heartbeat_at, registered_at, remote_ui_requested)
                VALUES (\(node.clusterID), \(node.nodeID), \(node.sourceType), \(node.connectorVersion), \(node.privacyMode.rawValue),
                  \(node.privacyJSON), \(node.healthJSON), \(node.lastHeartbeatAt), \(node.registeredAt), \(node.remoteUIRequested))
                ON CONFLICT (cluster_id, node_id) DO UPDATE SET source_type = EXCLUDED.source_type,
                  connector_version = EXCLUDED.connector_version, privacy_mode = EXCLUDED.privacy_mode, privacy_json = EXCLUDED.privacy_json,
                  health_json = EXCLUDED.health_json, last_heartbeat_at = EXCLUDED.last_heartbeat_at,
                  remote_ui_requested = EXCLUDED.remote_ui_requested
                """, logger: logger)
            try await db.query(
                "UPDATE clusters SET privacy_mode = \(node.privacyMode.rawValue), last_heartbeat_at = \(node.lastHeartbeatAt) WHERE id = \(node.clusterID)",
                logger: logger)
            return previous
        }
    }

    public func recordLiveness(_ nodes: [NodeRecord]) async throws {
        guard !nodes.isEmpty else { return }
        // Two statements whatever the number of nodes; rows locked in one order (sorted input, and
        // clusters locked by ID) so that two relay nodes flushing at once cannot deadlock.
        let sorted = nodes.sorted { ($0.clusterID, $0.nodeID) < ($1.clusterID, $1.nodeID) }
        let clusters = sorted.map(\.clusterID)
        let ids = sorted.map(\.nodeID)
        let times = sorted.map(\.lastHeartbeatAt)
        let health = sorted.map(\.healthJSON)
        let logger = self.logger
        try await self.withConnection("liveness write") { db in
            try await db.query(
                """
                UPDATE nodes AS nd SET last_heartbeat_at = v.t, health_json = v.h
                FROM unnest(\(clusters)::text[], \(ids)::text[], \(times)::timestamptz[], \(health)::text[]) AS v(c, n, t, h)
                WHERE nd.cluster_id = v.c AND nd.node_id = v.n AND nd.last_heartbeat_at < v.t
                """, logger: logger)
            try await db.query(
                """
                WITH v AS (SELECT c, max(t) AS t FROM unnest(\(clusters)::text[], \(times)::timestamptz[]) AS u(c, t) GROUP BY c),
                locked AS (SELECT cl.id FROM clusters cl JOIN v ON cl.id = v.c ORDER BY cl.id FOR UPDATE OF cl)
                UPDATE clusters AS cl SET last_heartbeat_at = v.t FROM v, locked
                WHERE cl.id = v.c AND locked.id = cl.id AND (cl.last_heartbeat_at IS NULL OR cl.last_heartbeat_at < v.t)
                """, logger: logger)
        }
    }

    public func heartbeatView(credentialHash: String, clusterID: String, nodeID: String, endedSince: Date, endedLimit: Int) async throws -> HeartbeatView {
        let logger = self.logger
        let open = [RequestState.pending, .approved].map(\.rawValue)
        let ended = [RequestState.expired, .revoked, .rejected].map(\.rawValue)
        // Two round trips on one connection, the rate every heartbeat pays: the credential with the
        // cluster's mode and the node's row, then (only for a credential of this cluster and node)
        // the open requests and the recently ended ones. Not one snapshot, as SQLite's read is: a
        // request decided between the two reads is seen by the next heartbeat.
        return try await self.withConnection("heartbeat read") { db in
            let first = try await db.query(
                """
                SELECT c.credential_hash, c.cluster_id, c.node_id, c.created_at, c.revoked_at, cl.privacy_mode AS cluster_mode,
                  n.source_type, n.connector_version, n.privacy_mode, n.privacy_json, n.health_json, n.last_heartbeat_at,
                  n.registered_at, n.remote_ui_requested
                FROM credentials c LEFT JOIN clusters cl ON cl.id = \(clusterID)
                  LEFT JOIN nodes n ON n.cluster_id = \(clusterID) AND n.node_id = \(nodeID)
                WHERE c.credential_hash = \(credentialHash)
                """, logger: logger
            ).records { row -> (CredentialRecord, PrivacyMode?, NodeRecord?) in
                let credential = try PostgresRows.credential(row)
                let mode = try row.rawIfPresent("cluster_mode", as: PrivacyMode.self)
                guard try row["source_type"].decode(String?.self) != nil else { return (credential, mode, nil) }
                let node = NodeRecord(
                    clusterID: clusterID, nodeID: nodeID, sourceType: try row.value("source_type"),
                    connectorVersion: try row.value("connector_version"), privacyMode: try row.raw("privacy_mode", as: PrivacyMode.self),
                    privacyJSON: try row.value("privacy_json"), healthJSON: try row.value("health_json"),
                    lastHeartbeatAt: try row.value("last_heartbeat_at"), registeredAt: try row.value("registered_at"),
                    remoteUIRequested: try row.value("remote_ui_requested"))
                return (credential, mode, node)
            }.first
            guard let (credential, mode, node) = first else { return HeartbeatView(credential: nil) }
            guard credential.authenticates(cluster: clusterID, node: nodeID) else { return HeartbeatView(credential: credential) }
            let requests = try await db.query(
                """
                (SELECT * FROM access_requests WHERE cluster_id = \(clusterID) AND state = ANY(\(open)))
                UNION ALL
                (SELECT * FROM access_requests WHERE cluster_id = \(clusterID) AND state = ANY(\(ended)) AND changed_at >= \(endedSince)
                 ORDER BY changed_at DESC LIMIT \(Int64(endedLimit)))
                """, logger: logger
            ).records(PostgresRows.request)
            return HeartbeatView(
                credential: credential, node: node, clusterMode: mode,
                open: requests.filter { !$0.state.isFinal }.sorted { $0.id < $1.id },
                ended: requests.filter(\.state.isFinal).sorted { ($0.changedAt, $0.id) > ($1.changedAt, $1.id) })
        }
    }

    public func nodes(clusterID: String) async throws -> [NodeRecord] {
        try await self.fetch("nodes", "SELECT * FROM nodes WHERE cluster_id = \(clusterID) ORDER BY node_id", PostgresRows.node)
    }

    // MARK: tokens

    public func createToken(_ token: TokenRecord) async throws {
        let inserted = try await self.fetch(
            "token create",
            """
            INSERT INTO tokens (name, role, token_hash, created_at, created_by, expires_at, revoked_at, revoked_by)
            VALUES (\(token.name), \(token.role.rawValue), \(token.tokenHash), \(token.createdAt), \(token.createdBy), \(token.expiresAt),
              \(token.revokedAt), \(token.revokedBy))
            ON CONFLICT (name) DO NOTHING RETURNING name
            """
        ) { try $0.value("name", as: String.self) }
        guard !inserted.isEmpty else { throw StoreError.conflict("token \"\(token.name)\"") }
    }

    public func token(hash: String) async throws -> TokenRecord? {
        try await self.fetch("token", "SELECT * FROM tokens WHERE token_hash = \(hash)", PostgresRows.token).first
    }

    public func tokens() async throws -> [TokenRecord] {
        try await self.fetch("tokens", "SELECT * FROM tokens ORDER BY name", PostgresRows.token)
    }

    public func revokeToken(name: String, by: String, at: Date) async throws -> TokenRecord? {
        // The first revocation's time and author stay.
        try await self.fetch(
            "token revoke",
            """
            UPDATE tokens SET revoked_at = COALESCE(revoked_at, \(at)), revoked_by = CASE WHEN revoked_at IS NULL THEN \(by) ELSE revoked_by END
            WHERE name = \(name) RETURNING *
            """, PostgresRows.token
        ).first
    }

    // MARK: access requests

    public func createRequest(_ request: AccessRequestRecord) async throws -> AccessRequestRecord {
        let ids = try await self.fetch(
            "request create",
            """
            INSERT INTO access_requests (cluster_id, expert, reason, role, duration_seconds, state, created_at, created_by, changed_at,
              changed_by, approved_at, expires_at, end_reason)
            VALUES (\(request.clusterID), \(request.expert), \(request.reason), \(request.role.rawValue), \(request.durationSeconds),
              \(request.state.rawValue), \(request.createdAt), \(request.createdBy), \(request.changedAt), \(request.changedBy),
              \(request.approvedAt), \(request.expiresAt), \(request.endReason))
            RETURNING id
            """
        ) { try $0.value("id", as: Int64.self) }
        var created = request
        created.id = ids[0]
        return created
    }

    public func request(id: Int64) async throws -> AccessRequestRecord? {
        try await self.fetch("request", "SELECT * FROM access_requests WHERE id = \(id)", PostgresRows.request).first
    }

    public func requests(clusterID: String?, states: Set<RequestState>?) async throws -> [AccessRequestRecord] {
        try await self.withConnection("requests") { db in try await Self.requests(db, clusterID: clusterID, states: states) }
    }

    private static func requests(_ db: PostgresConnection, clusterID: String?, states: Set<RequestState>?) async throws -> [AccessRequestRecord] {
        // NULL matches every cluster and every state.
        let stateList = states.map { $0.map(\.rawValue).sorted() }
        return try await db.query(
            """
            SELECT * FROM access_requests WHERE (\(clusterID)::text IS NULL OR cluster_id = \(clusterID))
            AND (\(stateList)::text[] IS NULL OR state = ANY(\(stateList))) ORDER BY id
            """, logger: db.logger
        ).records(PostgresRows.request)
    }

    public func endedRequests(clusterID: String, since: Date, limit: Int) async throws -> [AccessRequestRecord] {
        try await self.withConnection("ended requests") { db in try await Self.endedRequests(db, clusterID: clusterID, since: since, limit: limit) }
    }

    private static func endedRequests(_ db: PostgresConnection, clusterID: String, since: Date, limit: Int) async throws -> [AccessRequestRecord] {
        let ended = [RequestState.expired, .revoked, .rejected].map(\.rawValue)
        return try await db.query(
            """
            SELECT * FROM access_requests WHERE cluster_id = \(clusterID) AND state = ANY(\(ended)) AND changed_at >= \(since)
            ORDER BY changed_at DESC LIMIT \(Int64(limit))
            """, logger: db.logger
        ).records(PostgresRows.request)
    }

    public func updateRequest(_ request: AccessRequestRecord, expecting expected: RequestState) async throws -> Bool {
        let updated = try await self.fetch(
            "request update",
            """
            UPDATE access_requests SET cluster_id = \(request.clusterID), expert = \(request.expert), reason = \(request.reason),
              role = \(request.role.rawValue), duration_seconds = \(request.durationSeconds), state = \(request.state.rawValue),
              created_at = \(request.createdAt), created_by = \(request.createdBy), changed_at = \(request.changedAt),
              changed_by = \(request.changedBy), approved_at = \(request.approvedAt), expires_at = \(request.expiresAt),
              end_reason = \(request.endReason)
            WHERE id = \(request.id) AND state = \(expected.rawValue) RETURNING id
            """
        ) { try $0.value("id", as: Int64.self) }
        return !updated.isEmpty
    }

    // MARK: sessions

    public func createSession(_ session: SessionRecord) async throws {
        _ = try await self.fetch(
            "session create",
            """
            INSERT INTO sessions (id, expert, cluster_id, node, component, request_id, role, relay_node, started_at, ended_at, requests,
              bytes_in, bytes_out, end_reason, kill_requested_by)
            VALUES (\(session.id), \(session.expert), \(session.clusterID), \(session.node), \(session.component), \(session.requestID),
              \(session.role.rawValue), \(session.relayNode), \(session.startedAt), \(session.endedAt), \(session.requests),
              \(session.bytesIn), \(session.bytesOut), \(session.endReason), \(session.killRequestedBy))
            """
        ) { _ in () }
    }

    public func session(id: String) async throws -> SessionRecord? {
        try await self.fetch("session", "SELECT * FROM sessions WHERE id = \(id)", PostgresRows.session).first
    }

    public func sessions(live: Bool) async throws -> [SessionRecord] {
        try await self.fetch(
            "sessions", "SELECT * FROM sessions WHERE NOT \(live) OR ended_at IS NULL ORDER BY started_at", PostgresRows.session)
    }

    public func updateSession(_ session: SessionRecord) async throws {
        // An ended session is final; a kill request written by another node meanwhile stays.
        _ = try await self.fetch(
            "session update",
            """
            UPDATE sessions SET ended_at = \(session.endedAt), requests = \(session.requests), bytes_in = \(session.bytesIn),
              bytes_out = \(session.bytesOut), end_reason = \(session.endReason),
              kill_requested_by = COALESCE(\(session.killRequestedBy), kill_requested_by)
            WHERE id = \(session.id) AND ended_at IS NULL
            """
        ) { _ in () }
    }

    public func requestKill(sessionID: String, by: String) async throws -> SessionRecord? {
        try await self.fetch(
            "session kill", "UPDATE sessions SET kill_requested_by = \(by) WHERE id = \(sessionID) AND ended_at IS NULL RETURNING *",
            PostgresRows.session
        ).first
    }

    public func endSessions(onRelayNode relayNode: String, startedBefore: Date, unlessSeenSince: Date?, at: Date, reason: String) async throws -> [SessionRecord] {
        let ended = try await self.fetch(
            "sessions end",
            """
            UPDATE sessions SET ended_at = \(at), end_reason = \(reason)
            WHERE relay_node = \(relayNode) AND ended_at IS NULL AND started_at < \(startedBefore)
              AND NOT EXISTS (SELECT 1 FROM relay_nodes WHERE id = \(relayNode) AND last_seen_at >= \(unlessSeenSince))
            RETURNING *
            """, PostgresRows.session)
        return ended.sorted { $0.startedAt < $1.startedAt }
    }

    // MARK: relay nodes and settings

    public func announceRelayNode(_ node: RelayNodeRecord) async throws {
        _ = try await self.fetch(
            "relay node announce",
            """
            INSERT INTO relay_nodes (id, tunnel_url, started_at, last_seen_at, tunnels, sessions)
            VALUES (\(node.id), \(node.tunnelURL), \(node.startedAt), \(node.lastSeenAt), \(node.tunnels), \(node.sessions))
            ON CONFLICT (id) DO UPDATE SET tunnel_url = EXCLUDED.tunnel_url, started_at = EXCLUDED.started_at, last_seen_at = EXCLUDED.last_seen_at,
              tunnels = EXCLUDED.tunnels, sessions = EXCLUDED.sessions
            """
        ) { _ in () }
    }

    public func relayNodes() async throws -> [RelayNodeRecord] {
        try await self.fetch("relay nodes", "SELECT * FROM relay_nodes ORDER BY id", PostgresRows.relayNode)
    }

    public func removeRelayNode(id: String, seenBefore: Date?) async throws {
        _ = try await self.fetch(
            "relay node remove", "DELETE FROM relay_nodes WHERE id = \(id) AND (\(seenBefore)::timestamptz IS NULL OR last_seen_at < \(seenBefore))"
        ) { _ in () }
    }

    public func claimSetting(_ name: String, value: String) async throws -> String {
        let logger = self.logger
        return try await self.transaction("setting") { db in
            try await db.query("INSERT INTO settings (name, value) VALUES (\(name), \(value)) ON CONFLICT (name) DO NOTHING", logger: logger)
            let stored = try await db.query("SELECT value FROM settings WHERE name = \(name)", logger: logger).records { try $0.value("value", as: String.self) }
            return stored.first ?? value
        }
    }

    // MARK: audit

    public func appendAudit(_ records: [AuditRecord]) async throws {
        guard !records.isEmpty else { return }
        let logger = self.logger
        try await self.transaction("audit append") { db in
            // IDs in commit order (PostgresSchema.auditLock).
            _ = try await db.query("SELECT pg_advisory_xact_lock(\(PostgresSchema.auditLock))", logger: logger).collect()
            for record in records {
                try await db.query(
                    """
                    INSERT INTO audit (time, actor, action, cluster_id, subject, outcome, reason, request_id)
                    VALUES (\(record.time), \(record.actor), \(record.action), \(record.clusterID), \(record.subject), \(record.outcome.rawValue),
                      \(record.reason), \(record.requestID))
                    """, logger: logger)
            }
        }
    }

    public func audit(since: Date?, afterID: Int64, limit: Int) async throws -> [AuditRecord] {
        try await self.fetch(
            "audit",
            """
            SELECT * FROM audit WHERE id > \(afterID) AND (\(since)::timestamptz IS NULL OR time >= \(since)) ORDER BY id LIMIT \(Int64(limit))
            """, PostgresRows.audit)
    }

    public func pruneAudit(before: Date) async throws -> Int {
        let counts = try await self.fetch(
            "audit prune", "WITH pruned AS (DELETE FROM audit WHERE time < \(before) RETURNING 1) SELECT count(*) AS n FROM pruned"
        ) { try $0.value("n", as: Int64.self) }
        return Int(counts.first ?? 0)
    }
}
