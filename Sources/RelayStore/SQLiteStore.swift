import Foundation
import RelayModel
import GRDB

/// The embedded store: one SQLite file (WAL mode) in the relay's data directory.
public final class SQLiteStore: Store {
    private let pool: DatabasePool
    /// Never yields; finished when the store closes.
    private let noChanges = AsyncStream<Void>.makeStream()

    /// Opens (creating if needed) `path` and applies any migrations not yet applied.
    public init(path: String) throws {
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        self.pool = try DatabasePool(path: path, configuration: configuration)
        try Self.migrator.migrate(self.pool)
    }

    /// Copies the database at `path` to `destination` with SQLite's online backup: consistent even
    /// while a relay writes to it. `destination` must not exist.
    public static func backup(path: String, to destination: String) throws {
        guard FileManager.default.fileExists(atPath: path) else { throw StoreError.notFound("the database \(path)") }
        guard !FileManager.default.fileExists(atPath: destination) else { throw StoreError.conflict("\(destination)") }
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(5)
        let source = try DatabasePool(path: path, configuration: configuration)
        let copy = try DatabaseQueue(path: destination)
        try source.backup(to: copy)
        try copy.close()
        try source.close()
        chmod(destination, 0o600)
    }

    public func close() async throws {
        self.noChanges.continuation.finish()
        try self.pool.close()
    }

    public func ping() async throws {
        _ = try await self.pool.read { try Int.fetchOne($0, sql: "SELECT 1") }
    }

    /// Versioned schema. Never edit a shipped migration: add the next one.
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "clusters") { t in
                t.primaryKey("id", .text)
                t.column("description", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("createdBy", .text).notNull()
                t.column("privacyMode", .text)
                t.column("lastHeartbeatAt", .datetime)
            }
            try db.create(table: "enrollments") { t in
                t.primaryKey("tokenHash", .text)
                t.column("clusterID", .text).notNull().references("clusters")
                t.column("createdAt", .datetime).notNull()
                t.column("createdBy", .text).notNull()
                t.column("expiresAt", .datetime).notNull()
                t.column("usedAt", .datetime)
                t.column("usedByNode", .text)
            }
            try db.create(table: "credentials") { t in
                t.primaryKey("credentialHash", .text)
                t.column("clusterID", .text).notNull().references("clusters")
                t.column("nodeID", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("revokedAt", .datetime)
            }
            try db.create(table: "nodes") { t in
                t.column("clusterID", .text).notNull().references("clusters")
                t.column("nodeID", .text).notNull()
                t.column("sourceType", .text).notNull()
                t.column("connectorVersion", .text).notNull()
                t.column("privacyMode", .text).notNull()
                t.column("privacyJSON", .text).notNull()
                t.column("healthJSON", .text).notNull()
                t.column("lastHeartbeatAt", .datetime).notNull()
                t.column("registeredAt", .datetime).notNull()
                t.column("remoteUIRequested", .boolean).notNull()
                t.primaryKey(["clusterID", "nodeID"])
            }
            try db.create(table: "tokens") { t in
                t.primaryKey("name", .text)
                t.column("role", .text).notNull()
                t.column("tokenHash", .text).notNull().unique()
                t.column("createdAt", .datetime).notNull()
                t.column("createdBy", .text).notNull()
                t.column("expiresAt", .datetime)
                t.column("revokedAt", .datetime)
                t.column("revokedBy", .text)
            }
            try db.create(table: "accessRequests") { t in
                t.primaryKey("id", .integer)
                t.column("clusterID", .text).notNull().references("clusters").indexed()
                t.column("expert", .text).notNull()
                t.column("reason", .text).notNull()
                t.column("role", .text).notNull()
                t.column("durationSeconds", .integer).notNull()
                t.column("state", .text).notNull().indexed()
                t.column("createdAt", .datetime).notNull()
                t.column("createdBy", .text).notNull()
                t.column("changedAt", .datetime).notNull()
                t.column("changedBy", .text).notNull()
                t.column("approvedAt", .datetime)
                t.column("expiresAt", .datetime)
                t.column("endReason", .text)
            }
            try db.create(table: "sessions") { t in
                t.primaryKey("id", .text)
                t.column("expert", .text).notNull()
                t.column("clusterID", .text).notNull()
                t.column("node", .text)
                t.column("component", .text).notNull()
                t.column("requestID", .integer).notNull()
                t.column("role", .text).notNull()
                t.column("relayNode", .text).notNull()
                t.column("startedAt", .datetime).notNull()
                t.column("endedAt", .datetime).indexed()
                t.column("requests", .integer).notNull()
                t.column("bytesIn", .integer).notNull()
                t.column("bytesOut", .integer).notNull()
                t.column("endReason", .text)
                t.column("killRequestedBy", .text)
            }
            try db.create(table: "audit") { t in
                t.primaryKey("id", .integer)
                t.column("time", .datetime).notNull().indexed()
                t.column("actor", .text).notNull()
                t.column("action", .text).notNull()
                t.column("clusterID", .text)
                t.column("subject", .text)
                t.column("outcome", .text).notNull()
                t.column("reason", .text)
            }
        }
        migrator.registerMigration("v2") { db in
            try db.create(table: "relayNodes") { t in
                t.primaryKey("id", .text)
                t.column("tunnelURL", .text).notNull()
                t.column("startedAt", .datetime).notNull()
                t.column("lastSeenAt", .datetime).notNull()
            }
            try db.create(table: "settings") { t in
                t.primaryKey("name", .text)
                t.column("value", .text).notNull()
            }
            // A sweep finds a silent node's live sessions.
            try db.create(index: "sessions_relayNode", on: "sessions", columns: ["relayNode", "endedAt"])
        }
        migrator.registerMigration("v3") { db in
            // The call each record was made while answering (`AuditRecord.requestID`).
            try db.alter(table: "audit") { t in t.add(column: "requestID", .text) }
            // What each node carries, as it announces itself (the status page).
            try db.alter(table: "relayNodes") { t in
                t.add(column: "tunnels", .integer).notNull().defaults(to: 0)
                t.add(column: "sessions", .integer).notNull().defaults(to: 0)
            }
        }
        return migrator
    }

    /// The migrations `migrator` would apply to the database at `path`, without applying them.
    public static func pendingMigrations(path: String) throws -> [String] {
        guard FileManager.default.fileExists(atPath: path) else { return Self.migrator.migrations }
        let queue = try DatabaseQueue(path: path)
        defer { try? queue.close() }
        let applied = try queue.read { try Self.migrator.appliedMigrations($0) }
        return Self.migrator.migrations.filter { !applied.contains($0) }
    }

    /// Migration identifiers applied to this database, oldest first.
    public func appliedMigrations() throws -> [String] {
        try self.pool.read { try Self.migrator.appliedMigrations($0) }
    }

    // MARK: clusters and registration

    public func createCluster(_ cluster: ClusterRecord, enrollment: EnrollmentRecord) async throws {
        try await self.pool.write { db in
            if try ClusterRecord.fetchOne(db, key: cluster.id) != nil { throw StoreError.conflict("cluster \"\(cluster.id)\"") }
            try cluster.insert(db)
            try enrollment.insert(db)
        }
    }

    public func addEnrollment(_ enrollment: EnrollmentRecord) async throws {
        try await self.pool.write { db in
            guard try ClusterRecord.fetchOne(db, key: enrollment.clusterID) != nil else {
                throw StoreError.notFound("cluster \"\(enrollment.clusterID)\"")
            }
            try enrollment.insert(db)
        }
    }

    public func cluster(id: String) async throws -> ClusterRecord? {
        try await self.pool.read { try ClusterRecord.fetchOne($0, key: id) }
    }

    public func clusters() async throws -> [ClusterRecord] {
        try await self.pool.read { try ClusterRecord.order(Column("id")).fetchAll($0) }
    }

    public func register(enrollmentHash: String, credential: CredentialRecord, now: Date) async throws -> RegistrationOutcome {
        try await self.pool.write { db in
            guard var enrollment = try EnrollmentRecord.fetchOne(db, key: enrollmentHash) else { return .unknownToken }
            if let used = enrollment.usedAt { return .alreadyUsed(at: used) }
            if enrollment.expiresAt <= now { return .expired(at: enrollment.expiresAt) }
            enrollment.usedAt = now
            enrollment.usedByNode = credential.nodeID
            try enrollment.update(db)
            var credential = credential
            credential.clusterID = enrollment.clusterID
            // A node that registers again replaces its old credential.
            try db.execute(
                sql: "UPDATE credentials SET revokedAt = ? WHERE clusterID = ? AND nodeID = ? AND revokedAt IS NULL",
                arguments: [now, credential.clusterID, credential.nodeID])
            try credential.insert(db)
            return .registered(clusterID: enrollment.clusterID)
        }
    }

    public func credential(hash: String) async throws -> CredentialRecord? {
        try await self.pool.read { try Self.credential($0, hash: hash) }
    }

    // Prepared once per connection (every heartbeat and tunnel dial asks).
    private static func credential(_ db: Database, hash: String) throws -> CredentialRecord? {
        try CredentialRecord.fetchOne(db.cachedStatement(sql: "SELECT * FROM credentials WHERE credentialHash = ?"), arguments: [hash])
    }

    // MARK: heartbeats

    public func recordHeartbeat(_ node: NodeRecord) async throws -> NodeRecord? {
        try await self.pool.write { db in
            let previous = try NodeRecord.fetchOne(db, key: ["clusterID": node.clusterID, "nodeID": node.nodeID])
            var node = node
            if let previous { node.registeredAt = previous.registeredAt }
            try node.save(db)
            try db.execute(
                sql: "UPDATE clusters SET privacyMode = ?, lastHeartbeatAt = ? WHERE id = ?",
                arguments: [node.privacyMode.rawValue, node.lastHeartbeatAt, node.clusterID])
            return previous
        }
    }

    public func heartbeatView(credentialHash: String, clusterID: String, nodeID: String, endedSince: Date, endedLimit: Int) async throws -> HeartbeatView {
        try await self.pool.read { db in
            let credential = try Self.credential(db, hash: credentialHash)
            guard let credential, credential.authenticates(cluster: clusterID, node: nodeID) else {
                return HeartbeatView(credential: credential)
            }
            let cluster = try ClusterRecord.fetchOne(db.cachedStatement(sql: "SELECT * FROM clusters WHERE id = ?"), arguments: [clusterID])
            return HeartbeatView(
                credential: credential,
                node: try NodeRecord.fetchOne(
                    db.cachedStatement(sql: "SELECT * FROM nodes WHERE clusterID = ? AND nodeID = ?"), arguments: [clusterID, nodeID]),
                clusterMode: cluster?.privacyMode,
                open: try Self.requests(db, clusterID: clusterID, states: [.pending, .approved]),
                ended: try Self.endedRequests(db, clusterID: clusterID, since: endedSince, limit: endedLimit))
        }
    }

    public func recordLiveness(_ nodes: [NodeRecord]) async throws {
        guard !nodes.isEmpty else { return }
        try await self.pool.write { db in
            let node = try db.cachedStatement(
                sql: "UPDATE nodes SET lastHeartbeatAt = ?, healthJSON = ? WHERE clusterID = ? AND nodeID = ? AND lastHeartbeatAt < ?")
            let cluster = try db.cachedStatement(
                sql: "UPDATE clusters SET lastHeartbeatAt = ? WHERE id = ? AND (lastHeartbeatAt IS NULL OR lastHeartbeatAt < ?)")
            for record in nodes {
                try node.execute(arguments: [record.lastHeartbeatAt, record.healthJSON, record.clusterID, record.nodeID, record.lastHeartbeatAt])
                try cluster.execute(arguments: [record.lastHeartbeatAt, record.clusterID, record.lastHeartbeatAt])
            }
        }
    }

    public func nodes(clusterID: String) async throws -> [NodeRecord] {
        try await self.pool.read { try NodeRecord.filter(Column("clusterID") == clusterID).order(Column("nodeID")).fetchAll($0) }
    }

    // MARK: tokens

    public func createToken(_ token: TokenRecord) async throws {
        try await self.pool.write { db in
            if try TokenRecord.fetchOne(db, key: token.name) != nil { throw StoreError.conflict("token \"\(token.name)\"") }
            try token.insert(db)
        }
    }

    public func token(hash: String) async throws -> TokenRecord? {
        try await self.pool.read { try TokenRecord.filter(Column("tokenHash") == hash).fetchOne($0) }
    }

    public func tokens() async throws -> [TokenRecord] {
        try await self.pool.read { try TokenRecord.order(Column("name")).fetchAll($0) }
    }

    public func revokeToken(name: String, by: String, at: Date) async throws -> TokenRecord? {
        try await self.pool.write { db in
            guard var token = try TokenRecord.fetchOne(db, key: name) else { return nil }
            if token.revokedAt == nil {
                token.revokedAt = at
                token.revokedBy = by
                try token.update(db)
            }
            return token
        }
    }

    // MARK: access requests

    public func createRequest(_ request: AccessRequestRecord) async throws -> AccessRequestRecord {
        try await self.pool.write { db in
            var request = request
            request.id = try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(id), 0) + 1 FROM accessRequests") ?? 1
            try request.insert(db)
            return request
        }
    }

    public func request(id: Int64) async throws -> AccessRequestRecord? {
        try await self.pool.read { try AccessRequestRecord.fetchOne($0, key: id) }
    }

    public func requests(clusterID: String?, states: Set<RequestState>?) async throws -> [AccessRequestRecord] {
        try await self.pool.read { try Self.requests($0, clusterID: clusterID, states: states) }
    }

    // Plain SQL prepared once per connection and shape (every heartbeat asks).
    private static func requests(_ db: Database, clusterID: String?, states: Set<RequestState>?) throws -> [AccessRequestRecord] {
        var conditions: [String] = []
        var arguments = StatementArguments()
        if let clusterID {
            conditions.append("clusterID = ?")
            arguments += [clusterID]
        }
        if let states {
            conditions.append("state IN (\(Array(repeating: "?", count: states.count).joined(separator: ", ")))")
            arguments += StatementArguments(states.map(\.rawValue).sorted())
        }
        let filter = conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND ")
        return try AccessRequestRecord.fetchAll(db.cachedStatement(sql: "SELECT * FROM accessRequests\(filter) ORDER BY id"), arguments: arguments)
    }

    public func endedRequests(clusterID: String, since: Date, limit: Int) async throws -> [AccessRequestRecord] {
        try await self.pool.read { try Self.endedRequests($0, clusterID: clusterID, since: since, limit: limit) }
    }

    private static func endedRequests(_ db: Database, clusterID: String, since: Date, limit: Int) throws -> [AccessRequestRecord] {
        try AccessRequestRecord.fetchAll(
            db.cachedStatement(sql: """
                SELECT * FROM accessRequests WHERE clusterID = ? AND state IN (?, ?, ?) AND changedAt >= ?
                ORDER BY changedAt DESC LIMIT ?
                """),
            arguments: [clusterID, RequestState.expired.rawValue, RequestState.revoked.rawValue, RequestState.rejected.rawValue, since, limit])
    }

    public func updateRequest(_ request: AccessRequestRecord, expecting expected: RequestState) async throws -> Bool {
        try await self.pool.write { db in
            guard let current = try AccessRequestRecord.fetchOne(db, key: request.id), current.state == expected else { return false }
            try request.update(db)
            return true
        }
    }

    // MARK: sessions

    public func createSession(_ session: SessionRecord) async throws {
        try await self.pool.write { try session.insert($0) }
    }

    public func session(id: String) async throws -> SessionRecord? {
        try await self.pool.read { try SessionRecord.fetchOne($0, key: id) }
    }

    public func sessions(live: Bool) async throws -> [SessionRecord] {
        try await self.pool.read { db in
            var query = SessionRecord.all()
            if live { query = query.filter(Column("endedAt") == nil) }
            return try query.order(Column("startedAt")).fetchAll(db)
        }
    }

    public func updateSession(_ session: SessionRecord) async throws {
        try await self.pool.write { db in
            // The kill request may have been written by another node since this copy was read.
            var session = session
            // Not recorded (yet): nothing to update. An ended session is final: a copy read while it
            // was live (the reconciler's count update) must not reopen it.
            guard let stored = try SessionRecord.fetchOne(db, key: session.id), stored.endedAt == nil else { return }
            session.killRequestedBy = session.killRequestedBy ?? stored.killRequestedBy
            try session.update(db)
        }
    }

    public func requestKill(sessionID: String, by: String) async throws -> SessionRecord? {
        try await self.pool.write { db in
            guard var session = try SessionRecord.fetchOne(db, key: sessionID), session.endedAt == nil else { return nil }
            session.killRequestedBy = by
            try session.update(db)
            return session
        }
    }

    public func endSessions(onRelayNode relayNode: String, startedBefore: Date, unlessSeenSince: Date?, at: Date, reason: String) async throws -> [SessionRecord] {
        try await self.pool.write { db in
            if let seen = unlessSeenSince, let node = try RelayNodeRecord.fetchOne(db, key: relayNode), node.lastSeenAt >= seen { return [] }
            let live = try SessionRecord.filter(Column("relayNode") == relayNode && Column("endedAt") == nil && Column("startedAt") < startedBefore)
                .order(Column("startedAt")).fetchAll(db)
            return try live.map { session in
                var ended = session
                ended.endedAt = at
                ended.endReason = reason
                try ended.update(db)
                return ended
            }
        }
    }

    // MARK: relay nodes and settings

    public func announceRelayNode(_ node: RelayNodeRecord) async throws {
        try await self.pool.write { try node.save($0) }
    }

    public func relayNodes() async throws -> [RelayNodeRecord] {
        try await self.pool.read { try RelayNodeRecord.order(Column("id")).fetchAll($0) }
    }

    public func removeRelayNode(id: String, seenBefore: Date?) async throws {
        try await self.pool.write { db in
            if let seenBefore {
                try db.execute(sql: "DELETE FROM relayNodes WHERE id = ? AND lastSeenAt < ?", arguments: [id, seenBefore])
            } else {
                _ = try RelayNodeRecord.deleteOne(db, key: id)
            }
        }
    }

    public func claimSetting(_ name: String, value: String) async throws -> String {
        try await self.pool.write { db in
            try db.execute(sql: "INSERT OR IGNORE INTO settings (name, value) VALUES (?, ?)", arguments: [name, value])
            return try String.fetchOne(db, sql: "SELECT value FROM settings WHERE name = ?", arguments: [name]) ?? value
        }
    }

    // One file, one node: no other node to tell.
    public func announceAccessChange() async {}

    public func accessChanges() -> AsyncStream<Void> { self.noChanges.stream }

    // MARK: audit

    public func appendAudit(_ records: [AuditRecord]) async throws {
        guard !records.isEmpty else { return }
        try await self.pool.write { db in
            var next = try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(id), 0) + 1 FROM audit") ?? 1
            for var record in records {
                record.id = next
                next += 1
                try record.insert(db)
            }
        }
    }

    public func pruneAudit(before: Date) async throws -> Int {
        try await self.pool.write { db in
            try AuditRecord.filter(Column("time") < before).deleteAll(db)
        }
    }

    public func audit(since: Date?, afterID: Int64, limit: Int) async throws -> [AuditRecord] {
        try await self.pool.read { db in
            var query = AuditRecord.filter(Column("id") > afterID)
            if let since { query = query.filter(Column("time") >= since) }
            return try query.order(Column("id")).limit(limit).fetchAll(db)
        }
    }
}
