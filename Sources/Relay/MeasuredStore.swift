import Foundation
import RelayModel
import RelayStore

/// The store with each call timed into `relay_store_operation_duration_seconds{operation,outcome}`:
/// one decorator serves both backends.
struct MeasuredStore: Store {
    let base: any Store
    let metrics: RelayMetrics

    private func measure<T>(_ operation: String, _ call: () async throws -> T) async throws -> T {
        let clock = ContinuousClock()
        let start = clock.now
        do {
            let value = try await call()
            self.metrics.storeOperation(operation, failed: false, took: clock.now - start)
            return value
        } catch {
            self.metrics.storeOperation(operation, failed: true, took: clock.now - start)
            throw error
        }
    }

    func close() async throws { try await self.base.close() }
    func ping() async throws { try await self.measure("ping") { try await self.base.ping() } }

    func createCluster(_ cluster: ClusterRecord, enrollment: EnrollmentRecord) async throws {
        try await self.measure("create_cluster") { try await self.base.createCluster(cluster, enrollment: enrollment) }
    }
    func addEnrollment(_ enrollment: EnrollmentRecord) async throws {
        try await self.measure("add_enrollment") { try await self.base.addEnrollment(enrollment) }
    }
    func cluster(id: String) async throws -> ClusterRecord? { try await self.measure("cluster") { try await self.base.cluster(id: id) } }
    func clusters() async throws -> [ClusterRecord] { try await self.measure("clusters") { try await self.base.clusters() } }
    func register(enrollmentHash: String, credential: CredentialRecord, now: Date) async throws -> RegistrationOutcome {
        try await self.measure("register") { try await self.base.register(enrollmentHash: enrollmentHash, credential: credential, now: now) }
    }
    func credential(hash: String) async throws -> CredentialRecord? { try await self.measure("credential") { try await self.base.credential(hash: hash) } }

    @discardableResult func recordHeartbeat(_ node: NodeRecord) async throws -> NodeRecord? {
        try await self.measure("record_heartbeat") { try await self.base.recordHeartbeat(node) }
    }
    func recordLiveness(_ nodes: [NodeRecord]) async throws { try await self.measure("record_liveness") { try await self.base.recordLiveness(nodes) } }
    func heartbeatView(credentialHash: String, clusterID: String, nodeID: String, endedSince: Date, endedLimit: Int) async throws -> HeartbeatView {
        try await self.measure("heartbeat_view") {
            try await self.base.heartbeatView(credentialHash: credentialHash, clusterID: clusterID, nodeID: nodeID, endedSince: endedSince, endedLimit: endedLimit)
        }
    }
    func nodes(clusterID: String) async throws -> [NodeRecord] { try await self.measure("nodes") { try await self.base.nodes(clusterID: clusterID) } }

    func createToken(_ token: TokenRecord) async throws { try await self.measure("create_token") { try await self.base.createToken(token) } }
    func token(hash: String) async throws -> TokenRecord? { try await self.measure("token") { try await self.base.token(hash: hash) } }
    func tokens() async throws -> [TokenRecord] { try await self.measure("tokens") { try await self.base.tokens() } }
    func revokeToken(name: String, by: String, at: Date) async throws -> TokenRecord? {
        try await self.measure("revoke_token") { try await self.base.revokeToken(name: name, by: by, at: at) }
    }

    func createRequest(_ request: AccessRequestRecord) async throws -> AccessRequestRecord {
        try await self.measure("create_request") { try await self.base.createRequest(request) }
    }
    func request(id: Int64) async throws -> AccessRequestRecord? { try await self.measure("request") { try await self.base.request(id: id) } }
    func requests(clusterID: String?, states: Set<RequestState>?) async throws -> [AccessRequestRecord] {
        try await self.measure("requests") { try await self.base.requests(clusterID: clusterID, states: states) }
    }
    func endedRequests(clusterID: String, since: Date, limit: Int) async throws -> [AccessRequestRecord] {
        try await self.measure("ended_requests") { try await self.base.endedRequests(clusterID: clusterID, since: since, limit: limit) }
    }
    func updateRequest(_ request: AccessRequestRecord, expecting expected: RequestState) async throws -> Bool {
        try await self.measure("update_request") { try await self.base.updateRequest(request, expecting: expected) }
    }

    func createSession(_ session: SessionRecord) async throws { try await self.measure("create_session") { try await self.base.createSession(session) } }
    func session(id: String) async throws -> SessionRecord? { try await self.measure("session") { try await self.base.session(id: id) } }
    func sessions(live: Bool) async throws -> [SessionRecord] { try await self.measure("sessions") { try await self.base.sessions(live: live) } }
    func updateSession(_ session: SessionRecord) async throws { try await self.measure("update_session") { try await self.base.updateSession(session) } }
    func requestKill(sessionID: String, by: String) async throws -> SessionRecord? {
        try await self.measure("request_kill") { try await self.base.requestKill(sessionID: sessionID, by: by) }
    }
    func endSessions(onRelayNode relayNode: String, startedBefore: Date, unlessSeenSince: Date?, at: Date, reason: String) async throws -> [SessionRecord] {
        try await self.measure("end_sessions") {
            try await self.base.endSessions(onRelayNode: relayNode, startedBefore: startedBefore, unlessSeenSince: unlessSeenSince, at: at, reason: reason)
        }
    }

    func announceRelayNode(_ node: RelayNodeRecord) async throws { try await self.measure("announce_relay_node") { try await self.base.announceRelayNode(node) } }
    func relayNodes() async throws -> [RelayNodeRecord] { try await self.measure("relay_nodes") { try await self.base.relayNodes() } }
    func removeRelayNode(id: String, seenBefore: Date?) async throws {
        try await self.measure("remove_relay_node") { try await self.base.removeRelayNode(id: id, seenBefore: seenBefore) }
    }
    func claimSetting(_ name: String, value: String) async throws -> String {
        try await self.measure("claim_setting") { try await self.base.claimSetting(name, value: value) }
    }

    func announceAccessChange() async { await self.base.announceAccessChange() }
    func accessChanges() -> AsyncStream<Void> { self.base.accessChanges() }

    func appendAudit(_ records: [AuditRecord]) async throws { try await self.measure("append_audit") { try await self.base.appendAudit(records) } }
    func audit(since: Date?, afterID: Int64, limit: Int) async throws -> [AuditRecord] {
        try await self.measure("audit") { try await self.base.audit(since: since, afterID: afterID, limit: limit) }
    }
    func pruneAudit(before: Date) async throws -> Int { try await self.measure("prune_audit") { try await self.base.pruneAudit(before: before) } }
}
