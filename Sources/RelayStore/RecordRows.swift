import Foundation
import GRDB
import RelayModel

// Tables and rows. The records a heartbeat reads (credential, cluster, node, requests) are decoded
// column by column: GRDB's Codable row decoder was a quarter of the heartbeat's store read. What
// they write stays Codable, and a column read here is the one the Codable encoder wrote.

extension ClusterRecord: FetchableRecord, PersistableRecord {
    public static let databaseTableName = "clusters"

    public init(row: Row) throws {
        self.init(
            id: try row.decode(forColumn: "id"), description: try row.decode(forColumn: "description"),
            createdAt: try row.decode(forColumn: "createdAt"), createdBy: try row.decode(forColumn: "createdBy"),
            privacyMode: try row.decodeIfPresent(PrivacyMode.self, forColumn: "privacyMode"),
            lastHeartbeatAt: try row.decode(forColumn: "lastHeartbeatAt"))
    }
}

extension CredentialRecord: FetchableRecord, PersistableRecord {
    public static let databaseTableName = "credentials"

    public init(row: Row) throws {
        self.init(
            credentialHash: try row.decode(forColumn: "credentialHash"), clusterID: try row.decode(forColumn: "clusterID"),
            nodeID: try row.decode(forColumn: "nodeID"), createdAt: try row.decode(forColumn: "createdAt"),
            revokedAt: try row.decode(forColumn: "revokedAt"))
    }
}

extension NodeRecord: FetchableRecord, PersistableRecord {
    public static let databaseTableName = "nodes"

    public init(row: Row) throws {
        self.init(
            clusterID: try row.decode(forColumn: "clusterID"), nodeID: try row.decode(forColumn: "nodeID"),
            sourceType: try row.decode(forColumn: "sourceType"), connectorVersion: try row.decode(forColumn: "connectorVersion"),
            privacyMode: try row.decodeRaw(PrivacyMode.self, forColumn: "privacyMode"),
            privacyJSON: try row.decode(forColumn: "privacyJSON"), healthJSON: try row.decode(forColumn: "healthJSON"),
            lastHeartbeatAt: try row.decode(forColumn: "lastHeartbeatAt"), registeredAt: try row.decode(forColumn: "registeredAt"),
            remoteUIRequested: try row.decode(forColumn: "remoteUIRequested"))
    }
}

extension AccessRequestRecord: FetchableRecord, PersistableRecord {
    public static let databaseTableName = "accessRequests"

    public init(row: Row) throws {
        self.init(
            id: try row.decode(forColumn: "id"), clusterID: try row.decode(forColumn: "clusterID"),
            expert: try row.decode(forColumn: "expert"), reason: try row.decode(forColumn: "reason"),
            role: try row.decodeRaw(AccessRole.self, forColumn: "role"), durationSeconds: try row.decode(forColumn: "durationSeconds"),
            state: try row.decodeRaw(RequestState.self, forColumn: "state"),
            createdAt: try row.decode(forColumn: "createdAt"), createdBy: try row.decode(forColumn: "createdBy"),
            changedAt: try row.decode(forColumn: "changedAt"), changedBy: try row.decode(forColumn: "changedBy"),
            approvedAt: try row.decode(forColumn: "approvedAt"), expiresAt: try row.decode(forColumn: "expiresAt"),
            endReason: try row.decode(forColumn: "endReason"))
    }
}

extension EnrollmentRecord: FetchableRecord, PersistableRecord { public static let databaseTableName = "enrollments" }
extension TokenRecord: FetchableRecord, PersistableRecord { public static let databaseTableName = "tokens" }
extension SessionRecord: FetchableRecord, PersistableRecord { public static let databaseTableName = "sessions" }
extension AuditRecord: FetchableRecord, PersistableRecord { public static let databaseTableName = "audit" }
extension RelayNodeRecord: FetchableRecord, PersistableRecord { public static let databaseTableName = "relayNodes" }

extension Row {
    /// A string column holding an enum's raw value, as the Codable encoder wrote it.
    fileprivate func decodeRaw<Value: RawRepresentable>(_ type: Value.Type, forColumn column: String) throws -> Value where Value.RawValue == String {
        guard let value = try self.decodeIfPresent(type, forColumn: column) else { throw UnreadableColumn(column: column, value: nil) }
        return value
    }

    /// A nullable string column holding an enum's raw value; an unknown value is an error, not nil.
    fileprivate func decodeIfPresent<Value: RawRepresentable>(_ type: Value.Type, forColumn column: String) throws -> Value? where Value.RawValue == String {
        guard let raw = try self.decode(String?.self, forColumn: column) else { return nil }
        guard let value = Value(rawValue: raw) else { throw UnreadableColumn(column: column, value: raw) }
        return value
    }
}

/// A stored value this relay does not know (written by a newer version, or edited by hand).
struct UnreadableColumn: Error, CustomStringConvertible {
    var column: String
    var value: String?

    var description: String { "column \(self.column) holds \(self.value.map { "\"\($0)\"" } ?? "NULL"), which this relay does not know" }
}
