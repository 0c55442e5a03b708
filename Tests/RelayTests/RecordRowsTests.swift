import Foundation
import GRDB
import RelayModel
import RelayStore
import Testing

/// The records a heartbeat reads are decoded column by column (not through Codable): every field
/// written comes back as written, and a value this relay does not know fails the read by name.
@Suite struct RecordRowsTests {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("rows-\(UUID().uuidString).sqlite").path
    // Stored with millisecond precision, as GRDB writes dates.
    let t0 = Date(timeIntervalSince1970: 1_800_000_000.125)

    @Test func everyFieldAHeartbeatReadsComesBackAsWritten() async throws {
        let store = try SQLiteStore(path: self.path)
        let cluster = ClusterRecord(id: "c1", description: "Cluster \"one\" ü", createdAt: self.t0, createdBy: "ops:root")
        try await store.createCluster(cluster, enrollment: EnrollmentRecord(
            tokenHash: "e1", clusterID: "c1", createdAt: self.t0, createdBy: "ops:root", expiresAt: self.t0.addingTimeInterval(3600)))
        let credential = CredentialRecord(credentialHash: "h1", clusterID: "c1", nodeID: "n1", createdAt: self.t0.addingTimeInterval(1))
        #expect(try await store.register(enrollmentHash: "e1", credential: credential, now: self.t0.addingTimeInterval(1)) == .registered(clusterID: "c1"))
        let node = NodeRecord(
            clusterID: "c1", nodeID: "n1", sourceType: "server", connectorVersion: "1.2.3", privacyMode: .approvedOnly,
            privacyJSON: #"{"mode":"approvedOnly"}"#, healthJSON: #"{"cpuLoad":0.5}"#, lastHeartbeatAt: self.t0.addingTimeInterval(2),
            registeredAt: self.t0.addingTimeInterval(2), remoteUIRequested: true)
        try await store.recordHeartbeat(node)
        var pending = try await store.createRequest(AccessRequestRecord(
            id: 0, clusterID: "c1", expert: "alice", reason: "ticket 42", role: .user, durationSeconds: 3600, state: .pending,
            createdAt: self.t0, createdBy: "expert:alice", changedAt: self.t0, changedBy: "expert:alice"))
        var approved = try await store.createRequest(pending)
        approved.state = .approved
        approved.approvedAt = self.t0.addingTimeInterval(3)
        approved.expiresAt = self.t0.addingTimeInterval(3603)
        #expect(try await store.updateRequest(approved, expecting: .pending))
        var revoked = try await store.createRequest(pending)
        revoked.state = .revoked
        revoked.changedAt = self.t0.addingTimeInterval(4)
        revoked.changedBy = "customer:bob@c1"
        revoked.endReason = "not today"
        #expect(try await store.updateRequest(revoked, expecting: .pending))
        pending = try #require(try await store.request(id: pending.id))

        let view = try await store.heartbeatView(credentialHash: "h1", clusterID: "c1", nodeID: "n1", endedSince: self.t0, endedLimit: 10)
        #expect(view.credential == credential)
        #expect(view.node == node)
        #expect(view.clusterMode == .approvedOnly)
        #expect(view.open == [pending, approved])
        #expect(view.ended == [revoked])
        var stored = cluster
        stored.privacyMode = .approvedOnly
        stored.lastHeartbeatAt = node.lastHeartbeatAt
        #expect(try await store.cluster(id: "c1") == stored)

        try await store.close()
    }

    @Test func aStoredValueThisRelayDoesNotKnowFailsTheReadNamingTheColumn() async throws {
        let store = try SQLiteStore(path: self.path)
        try await store.createCluster(
            ClusterRecord(id: "c1", description: "", createdAt: self.t0, createdBy: "ops:root"),
            enrollment: EnrollmentRecord(tokenHash: "e1", clusterID: "c1", createdAt: self.t0, createdBy: "ops:root", expiresAt: self.t0))
        _ = try await store.createRequest(AccessRequestRecord(
            id: 0, clusterID: "c1", expert: "alice", reason: "r", role: .user, durationSeconds: 60, state: .pending,
            createdAt: self.t0, createdBy: "expert:alice", changedAt: self.t0, changedBy: "expert:alice"))
        try await store.close()
        // A newer relay's role, written beside this one.
        let queue = try DatabaseQueue(path: self.path)
        try await queue.write { try $0.execute(sql: "UPDATE accessRequests SET role = 'auditor'") }
        try queue.close()

        let reopened = try SQLiteStore(path: self.path)
        let error = await #expect(throws: (any Error).self) { try await reopened.requests(clusterID: "c1", states: nil) }
        #expect("\(error.map { String(describing: $0) } ?? "")".contains(#"column role holds "auditor", which this relay does not know"#))
        try await reopened.close()
    }
}
