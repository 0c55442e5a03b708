import Foundation
import PostgresNIO
import RelayModel

// Rows of the PostgreSQL schema (PostgresSchema) read into the relay's records, column by name. A
// value this relay does not know (a newer relay's role, say) fails the read naming the column, as
// with SQLite (`UnreadableColumn`).

extension PostgresRandomAccessRow {
    func value<T: PostgresDecodable>(_ column: String, as type: T.Type = T.self) throws -> T {
        try self[column].decode(T.self)
    }

    func raw<Value: RawRepresentable>(_ column: String, as type: Value.Type) throws -> Value where Value.RawValue == String {
        let text = try self[column].decode(String?.self)
        guard let text, let value = Value(rawValue: text) else { throw UnreadableColumn(column: column, value: text) }
        return value
    }

    func rawIfPresent<Value: RawRepresentable>(_ column: String, as type: Value.Type) throws -> Value? where Value.RawValue == String {
        guard let text = try self[column].decode(String?.self) else { return nil }
        guard let value = Value(rawValue: text) else { throw UnreadableColumn(column: column, value: text) }
        return value
    }
}

extension PostgresRowSequence {
    /// Every row, read by `read`.
    func records<T>(_ read: (PostgresRandomAccessRow) throws -> T) async throws -> [T] {
        var records: [T] = []
        for try await row in self { records.append(try read(row.makeRandomAccess())) }
        return records
    }
}

enum PostgresRows {
    @Sendable static func cluster(_ r: PostgresRandomAccessRow) throws -> ClusterRecord {
        ClusterRecord(
            id: try r.value("id"), description: try r.value("description"), createdAt: try r.value("created_at"),
            createdBy: try r.value("created_by"), privacyMode: try r.rawIfPresent("privacy_mode", as: PrivacyMode.self),
            lastHeartbeatAt: try r.value("last_heartbeat_at"))
    }

    @Sendable static func enrollment(_ r: PostgresRandomAccessRow) throws -> EnrollmentRecord {
        EnrollmentRecord(
            tokenHash: try r.value("token_hash"), clusterID: try r.value("cluster_id"), createdAt: try r.value("created_at"),
            createdBy: try r.value("created_by"), expiresAt: try r.value("expires_at"), usedAt: try r.value("used_at"),
            usedByNode: try r.value("used_by_node"))
    }

    @Sendable static func credential(_ r: PostgresRandomAccessRow) throws -> CredentialRecord {
        CredentialRecord(
            credentialHash: try r.value("credential_hash"), clusterID: try r.value("cluster_id"), nodeID: try r.value("node_id"),
            createdAt: try r.value("created_at"), revokedAt: try r.value("revoked_at"))
    }

    @Sendable static func node(_ r: PostgresRandomAccessRow) throws -> NodeRecord {
        NodeRecord(
            clusterID: try r.value("cluster_id"), nodeID: try r.value("node_id"), sourceType: try r.value("source_type"),
            connectorVersion: try r.value("connector_version"), privacyMode: try r.raw("privacy_mode", as: PrivacyMode.self),
            privacyJSON: try r.value("privacy_json"), healthJSON: try r.value("health_json"),
            lastHeartbeatAt: try r.value("last_heartbeat_at"), registeredAt: try r.value("registered_at"),
            remoteUIRequested: try r.value("remote_ui_requested"))
    }

    @Sendable static func token(_ r: PostgresRandomAccessRow) throws -> TokenRecord {
        TokenRecord(
            name: try r.value("name"), role: try r.raw("role", as: TokenRole.self), tokenHash: try r.value("token_hash"),
            createdAt: try r.value("created_at"), createdBy: try r.value("created_by"), expiresAt: try r.value("expires_at"),
            revokedAt: try r.value("revoked_at"), revokedBy: try r.value("revoked_by"))
    }

    @Sendable static func request(_ r: PostgresRandomAccessRow) throws -> AccessRequestRecord {
        AccessRequestRecord(
            id: try r.value("id"), clusterID: try r.value("cluster_id"), expert: try r.value("expert"), reason: try r.value("reason"),
            role: try r.raw("role", as: AccessRole.self), durationSeconds: try r.value("duration_seconds"),
            state: try r.raw("state", as: RequestState.self), createdAt: try r.value("created_at"), createdBy: try r.value("created_by"),
            changedAt: try r.value("changed_at"), changedBy: try r.value("changed_by"), approvedAt: try r.value("approved_at"),
            expiresAt: try r.value("expires_at"), endReason: try r.value("end_reason"))
    }

    @Sendable static func session(_ r: PostgresRandomAccessRow) throws -> SessionRecord {
        SessionRecord(
            id: try r.value("id"), expert: try r.value("expert"), clusterID: try r.value("cluster_id"), node: try r.value("node"),
            component: try r.value("component"), requestID: try r.value("request_id"), role: try r.raw("role", as: AccessRole.self),
            relayNode: try r.value("relay_node"), startedAt: try r.value("started_at"), endedAt: try r.value("ended_at"),
            requests: try r.value("requests"), bytesIn: try r.value("bytes_in"), bytesOut: try r.value("bytes_out"),
            endReason: try r.value("end_reason"), killRequestedBy: try r.value("kill_requested_by"))
    }

    @Sendable static func audit(_ r: PostgresRandomAccessRow) throws -> AuditRecord {
        AuditRecord(
            id: try r.value("id"), time: try r.value("time"), actor: try r.value("actor"), action: try r.value("action"),
            clusterID: try r.value("cluster_id"), subject: try r.value("subject"),
            outcome: try r.raw("outcome", as: AuditRecord.Outcome.self), reason: try r.value("reason"), requestID: try r.value("request_id"))
    }

    @Sendable static func relayNode(_ r: PostgresRandomAccessRow) throws -> RelayNodeRecord {
        RelayNodeRecord(
            id: try r.value("id"), tunnelURL: try r.value("tunnel_url"), startedAt: try r.value("started_at"),
            lastSeenAt: try r.value("last_seen_at"), tunnels: try r.value("tunnels"), sessions: try r.value("sessions"))
    }
}
