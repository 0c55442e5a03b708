import Foundation
import Relay
import RelayModel
import RelayStore
import TestSupport
import Testing

/// Every `Store` method, on every backend (SQLite; PostgreSQL when a test server is configured):
/// the relay's behaviour must not depend on where its records live.
@Suite struct StoreContractTests {
    // Whole milliseconds: what both backends keep exactly.
    let t0 = Date(timeIntervalSince1970: 1_800_000_000.125)

    func at(_ seconds: Double) -> Date { self.t0.addingTimeInterval(seconds) }

    func cluster(_ id: String) -> ClusterRecord { ClusterRecord(id: id, description: "cluster \(id)", createdAt: self.t0, createdBy: "ops:root") }

    func enrollment(_ hash: String, cluster: String, expires: Double = 3600) -> EnrollmentRecord {
        EnrollmentRecord(tokenHash: hash, clusterID: cluster, createdAt: self.t0, createdBy: "ops:root", expiresAt: self.at(expires))
    }

    func request(_ cluster: String, expert: String = "alice", at seconds: Double = 0) -> AccessRequestRecord {
        AccessRequestRecord(
            id: 0, clusterID: cluster, expert: expert, reason: "ticket 42", role: .user, durationSeconds: 3600, state: .pending,
            createdAt: self.at(seconds), createdBy: "expert:\(expert)", changedAt: self.at(seconds), changedBy: "expert:\(expert)")
    }

    func session(_ id: String, relayNode: String = "relay-1", at seconds: Double = 0) -> SessionRecord {
        SessionRecord(
            id: id, expert: "alice", clusterID: "c1", node: "n1", component: "ui", requestID: 1, role: .user, relayNode: relayNode,
            startedAt: self.at(seconds))
    }

    @Test(arguments: StoreBackend.available)
    func clustersEnrollmentsAndRegistration(_ backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            try await store.createCluster(self.cluster("c1"), enrollment: self.enrollment("e1", cluster: "c1"))
            await #expect(throws: StoreError.conflict("cluster \"c1\"")) {
                try await store.createCluster(self.cluster("c1"), enrollment: self.enrollment("e2", cluster: "c1"))
            }
            await #expect(throws: StoreError.notFound("cluster \"nope\"")) { try await store.addEnrollment(self.enrollment("e3", cluster: "nope")) }
            try await store.addEnrollment(self.enrollment("e2", cluster: "c1", expires: 10))
            try await store.createCluster(self.cluster("b0"), enrollment: self.enrollment("e4", cluster: "b0"))
            #expect(try await store.clusters().map(\.id) == ["b0", "c1"])
            #expect(try await store.cluster(id: "c1") == self.cluster("c1"))
            #expect(try await store.cluster(id: "nope") == nil)

            let first = CredentialRecord(credentialHash: "h1", clusterID: "", nodeID: "n1", createdAt: self.at(1))
            #expect(try await store.register(enrollmentHash: "e1", credential: first, now: self.at(1)) == .registered(clusterID: "c1"))
            #expect(try await store.register(enrollmentHash: "e1", credential: first, now: self.at(2)) == .alreadyUsed(at: self.at(1)))
            #expect(try await store.register(enrollmentHash: "zz", credential: first, now: self.at(2)) == .unknownToken)
            #expect(try await store.register(enrollmentHash: "e2", credential: first, now: self.at(11)) == .expired(at: self.at(10)))
            var stored = first
            stored.clusterID = "c1"
            #expect(try await store.credential(hash: "h1") == stored)
            // The same node registering again (a reinstall): its old credential is revoked.
            try await store.addEnrollment(self.enrollment("e5", cluster: "c1"))
            let second = CredentialRecord(credentialHash: "h2", clusterID: "", nodeID: "n1", createdAt: self.at(5))
            #expect(try await store.register(enrollmentHash: "e5", credential: second, now: self.at(5)) == .registered(clusterID: "c1"))
            #expect(try await store.credential(hash: "h1")?.revokedAt == self.at(5))
            #expect(try await store.credential(hash: "h2")?.revokedAt == nil)
        }
    }

    @Test(arguments: StoreBackend.available)
    func heartbeatsAndLiveness(_ backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            try await store.createCluster(self.cluster("c1"), enrollment: self.enrollment("e1", cluster: "c1"))
            _ = try await store.register(
                enrollmentHash: "e1", credential: CredentialRecord(credentialHash: "h1", clusterID: "", nodeID: "n1", createdAt: self.t0), now: self.t0)
            var node = NodeRecord(
                clusterID: "c1", nodeID: "n1", sourceType: "server", connectorVersion: "1.0", privacyMode: .approvedOnly,
                privacyJSON: #"{"mode":"approvedOnly"}"#, healthJSON: "{}", lastHeartbeatAt: self.at(1), registeredAt: self.at(1),
                remoteUIRequested: false)
            #expect(try await store.recordHeartbeat(node) == nil)
            var later = node
            later.lastHeartbeatAt = self.at(61)
            later.registeredAt = self.at(61)
            later.privacyMode = .all
            #expect(try await store.recordHeartbeat(later) == node)
            later.registeredAt = node.registeredAt  // kept from the first heartbeat
            #expect(try await store.nodes(clusterID: "c1") == [later])
            #expect(try await store.cluster(id: "c1")?.privacyMode == .all)
            #expect(try await store.cluster(id: "c1")?.lastHeartbeatAt == self.at(61))

            // Liveness written behind: only a newer time replaces the stored one.
            node = later
            node.lastHeartbeatAt = self.at(121)
            node.healthJSON = #"{"cpuLoad":0.5}"#
            var stale = later
            stale.lastHeartbeatAt = self.at(30)
            stale.healthJSON = #"{"old":true}"#
            try await store.recordLiveness([node])
            try await store.recordLiveness([stale])
            #expect(try await store.nodes(clusterID: "c1") == [node])
            #expect(try await store.cluster(id: "c1")?.lastHeartbeatAt == self.at(121))

            let request = try await store.createRequest(self.request("c1"))
            let view = try await store.heartbeatView(credentialHash: "h1", clusterID: "c1", nodeID: "n1", endedSince: self.t0, endedLimit: 10)
            #expect(view.node == node)
            #expect(view.clusterMode == .all)
            #expect(view.open == [request])
            #expect(view.ended.isEmpty)
            // Ended ones: since the time given, newest first, at most the limit.
            var ended: [AccessRequestRecord] = []
            for index in 0..<3 {
                var done = try await store.createRequest(self.request("c1", at: Double(index)))
                let pending = done
                done.state = index == 0 ? .rejected : .revoked
                done.changedAt = self.at(200 + Double(index))
                #expect(try await store.updateRequest(done, expecting: pending.state))
                ended.append(done)
            }
            let recent = try await store.heartbeatView(credentialHash: "h1", clusterID: "c1", nodeID: "n1", endedSince: self.at(201), endedLimit: 10)
            #expect(recent.open == [request])
            #expect(recent.ended == [ended[2], ended[1]])
            #expect(try await store.heartbeatView(credentialHash: "h1", clusterID: "c1", nodeID: "n1", endedSince: self.t0, endedLimit: 1).ended == [ended[2]])
            // Another node's claim: the credential is returned (to be refused), nothing else is read.
            let other = try await store.heartbeatView(credentialHash: "h1", clusterID: "c1", nodeID: "n2", endedSince: self.t0, endedLimit: 10)
            #expect(other.credential?.nodeID == "n1")
            #expect(other.node == nil && other.open.isEmpty)
            #expect(try await store.heartbeatView(credentialHash: "nope", clusterID: "c1", nodeID: "n1", endedSince: self.t0, endedLimit: 10).credential == nil)
        }
    }

    @Test(arguments: StoreBackend.available)
    func tokens(_ backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let token = TokenRecord(name: "zed", role: .expert, tokenHash: "t1", createdAt: self.t0, createdBy: "ops:root", expiresAt: self.at(86_400))
            try await store.createToken(token)
            try await store.createToken(TokenRecord(name: "amy", role: .ops, tokenHash: "t2", createdAt: self.t0, createdBy: "bootstrap"))
            await #expect(throws: StoreError.conflict("token \"zed\"")) {
                try await store.createToken(TokenRecord(name: "zed", role: .ops, tokenHash: "t3", createdAt: self.t0, createdBy: "x"))
            }
            #expect(try await store.token(hash: "t1") == token)
            #expect(try await store.token(hash: "t9") == nil)
            #expect(try await store.tokens().map(\.name) == ["amy", "zed"])
            let revoked = try await store.revokeToken(name: "zed", by: "ops:amy", at: self.at(5))
            #expect(revoked?.revokedAt == self.at(5) && revoked?.revokedBy == "ops:amy")
            // A second revocation keeps the first one's time and author.
            let again = try await store.revokeToken(name: "zed", by: "ops:bob", at: self.at(9))
            #expect(again == revoked)
            #expect(try await store.revokeToken(name: "nobody", by: "ops:amy", at: self.at(5)) == nil)
        }
    }

    @Test(arguments: StoreBackend.available)
    func accessRequestTransitions(_ backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            try await store.createCluster(self.cluster("c1"), enrollment: self.enrollment("e1", cluster: "c1"))
            try await store.createCluster(self.cluster("c2"), enrollment: self.enrollment("e2", cluster: "c2"))
            let a = try await store.createRequest(self.request("c1"))
            let b = try await store.createRequest(self.request("c1", expert: "bob", at: 1))
            let c = try await store.createRequest(self.request("c2", at: 2))
            #expect(a.id < b.id && b.id < c.id)
            #expect(try await store.request(id: b.id) == b)
            #expect(try await store.request(id: 999_999) == nil)

            var approved = a
            approved.state = .approved
            approved.changedAt = self.at(10)
            approved.changedBy = "customer:carol@c1"
            approved.approvedAt = self.at(10)
            approved.expiresAt = self.at(3610)
            #expect(try await store.updateRequest(approved, expecting: .pending))
            // Compare and set: a second decision on what is no longer pending changes nothing.
            var rejected = a
            rejected.state = .rejected
            rejected.changedAt = self.at(11)
            #expect(try await store.updateRequest(rejected, expecting: .pending) == false)
            #expect(try await store.request(id: a.id) == approved)

            var revoked = approved
            revoked.state = .revoked
            revoked.changedAt = self.at(20)
            revoked.endReason = "done"
            #expect(try await store.updateRequest(revoked, expecting: .approved))
            var expired = b
            expired.state = .expired
            expired.changedAt = self.at(30)
            #expect(try await store.updateRequest(expired, expecting: .pending))

            #expect(try await store.requests(clusterID: nil, states: nil).map(\.id) == [a.id, b.id, c.id])
            #expect(try await store.requests(clusterID: "c1", states: nil).map(\.id) == [a.id, b.id])
            #expect(try await store.requests(clusterID: nil, states: [.pending]).map(\.id) == [c.id])
            #expect(try await store.requests(clusterID: "c1", states: [.revoked, .expired]).map(\.id) == [a.id, b.id])
            // Ended ones, newest first, from `since`, at most `limit`.
            #expect(try await store.endedRequests(clusterID: "c1", since: self.t0, limit: 10) == [expired, revoked])
            #expect(try await store.endedRequests(clusterID: "c1", since: self.at(25), limit: 10) == [expired])
            #expect(try await store.endedRequests(clusterID: "c1", since: self.t0, limit: 1) == [expired])
            #expect(try await store.endedRequests(clusterID: "c2", since: self.t0, limit: 10).isEmpty)
        }
    }

    @Test(arguments: StoreBackend.available)
    func sessionsEndOnceAndKeepKillRequests(_ backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            try await store.createSession(self.session("s1"))
            try await store.createSession(self.session("s2", relayNode: "relay-2", at: 1))
            try await store.createSession(self.session("s3", relayNode: "relay-2", at: 2))
            #expect(try await store.session(id: "s1") == self.session("s1"))
            #expect(try await store.session(id: "nope") == nil)

            // A kill request from another node survives this node's count update.
            #expect(try await store.requestKill(sessionID: "s1", by: "ops:amy")?.killRequestedBy == "ops:amy")
            var counted = self.session("s1")
            counted.requests = 7
            counted.bytesIn = 100
            counted.bytesOut = 2000
            try await store.updateSession(counted)
            counted.killRequestedBy = "ops:amy"
            #expect(try await store.session(id: "s1") == counted)

            var ended = counted
            ended.endedAt = self.at(60)
            ended.endReason = "session killed by ops:amy"
            try await store.updateSession(ended)
            // Final: a copy read while it was live does not reopen it.
            try await store.updateSession(counted)
            #expect(try await store.session(id: "s1") == ended)
            #expect(try await store.requestKill(sessionID: "s1", by: "ops:bob") == nil)
            #expect(try await store.requestKill(sessionID: "nope", by: "ops:bob") == nil)

            #expect(try await store.sessions(live: true).map(\.id) == ["s2", "s3"])
            #expect(try await store.sessions(live: false).map(\.id) == ["s1", "s2", "s3"])

            // A node that announced itself since the deadline keeps its sessions (it came back).
            try await store.announceRelayNode(RelayNodeRecord(id: "relay-2", tunnelURL: "wss://r2/v1/tunnel", startedAt: self.t0, lastSeenAt: self.at(50)))
            #expect(try await store.endSessions(
                onRelayNode: "relay-2", startedBefore: self.at(90), unlessSeenSince: self.at(40), at: self.at(90), reason: "silent").isEmpty)
            // A restarted node ends only what started before it.
            let leftovers = try await store.endSessions(
                onRelayNode: "relay-2", startedBefore: self.at(1.5), unlessSeenSince: nil, at: self.at(60), reason: "relay node relay-2 restarted")
            #expect(leftovers.map(\.id) == ["s2"])
            // A silent relay node's live sessions end in one sweep; a second sweep finds none.
            let swept = try await store.endSessions(
                onRelayNode: "relay-2", startedBefore: self.at(90), unlessSeenSince: self.at(60), at: self.at(90), reason: "relay node relay-2 went silent")
            #expect(swept.map(\.id) == ["s3"])
            #expect(swept.allSatisfy { $0.endedAt == self.at(90) && $0.endReason == "relay node relay-2 went silent" })
            #expect(try await store.endSessions(
                onRelayNode: "relay-2", startedBefore: self.at(91), unlessSeenSince: self.at(60), at: self.at(91), reason: "again").isEmpty)
            #expect(try await store.session(id: "s1") == ended)
            #expect(try await store.sessions(live: true).isEmpty)
        }
    }

    @Test(arguments: StoreBackend.available)
    func auditAppendsReadsAndPrunes(_ backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let records = (0..<5).map { AuditRecord(time: self.at(Double($0) * 60), actor: "ops:amy", action: "a\($0)", clusterID: $0 % 2 == 0 ? "c1" : nil) }
            try await store.appendAudit(Array(records[0..<2]))
            try await store.appendAudit(Array(records[2...]))
            try await store.appendAudit([])
            let all = try await store.audit(since: nil, afterID: 0, limit: 100)
            #expect(all.map(\.action) == ["a0", "a1", "a2", "a3", "a4"])
            #expect(zip(all, all.dropFirst()).allSatisfy { $0.id < $1.id })
            var first = records[0]
            first.id = all[0].id
            #expect(all[0] == first)
            #expect(try await store.audit(since: nil, afterID: all[1].id, limit: 2).map(\.action) == ["a2", "a3"])
            #expect(try await store.audit(since: self.at(180), afterID: 0, limit: 100).map(\.action) == ["a3", "a4"])
            #expect(try await store.pruneAudit(before: self.at(120)) == 2)
            #expect(try await store.audit(since: nil, afterID: 0, limit: 100).map(\.action) == ["a2", "a3", "a4"])
        }
    }

    @Test(arguments: StoreBackend.available)
    func relayNodesAndSettings(_ backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let b = RelayNodeRecord(id: "relay-b", tunnelURL: "wss://b.example:8443/v1/tunnel", startedAt: self.t0, lastSeenAt: self.at(1))
            var a = RelayNodeRecord(id: "relay-a", tunnelURL: "wss://a.example:8443/v1/tunnel", startedAt: self.t0, lastSeenAt: self.at(1))
            try await store.announceRelayNode(b)
            try await store.announceRelayNode(a)
            a.lastSeenAt = self.at(11)
            try await store.announceRelayNode(a)
            #expect(try await store.relayNodes() == [a, b])
            // A silent node is removed only if it has not announced itself since the deadline.
            try await store.removeRelayNode(id: "relay-a", seenBefore: self.at(5))
            try await store.removeRelayNode(id: "relay-b", seenBefore: self.at(5))
            try await store.removeRelayNode(id: "relay-x", seenBefore: nil)
            #expect(try await store.relayNodes() == [a])
            try await store.removeRelayNode(id: "relay-a", seenBefore: nil)
            #expect(try await store.relayNodes().isEmpty)

            #expect(try await store.claimSetting("token_key_fingerprint", value: "f1") == "f1")
            #expect(try await store.claimSetting("token_key_fingerprint", value: "f2") == "f1")
        }
    }

    /// Two stores on one database (two relay nodes): concurrent writers agree.
    @Test(arguments: StoreBackend.available)
    func concurrentWritersAgree(_ backend: StoreBackend) async throws {
        let database = try await backend.makeDatabase()
        let one = try await database.open()
        let two = try await database.open()
        try await one.createCluster(self.cluster("c1"), enrollment: self.enrollment("e1", cluster: "c1"))

        // 2 x 25 requests at once: every one stored, under its own ID.
        let ids = try await withThrowingTaskGroup(of: Int64.self) { group in
            for index in 0..<50 {
                let store = index % 2 == 0 ? one : two
                let request = self.request("c1", expert: "e\(index)")
                group.addTask { try await store.createRequest(request).id }
            }
            return try await group.reduce(into: [Int64]()) { $0.append($1) }
        }
        #expect(Set(ids).count == 50)
        #expect(try await two.requests(clusterID: "c1", states: nil).count == 50)

        // The same pending request decided on both nodes at once: exactly one decision lands.
        let pending = try await one.request(id: ids[0])!
        let outcomes = try await withThrowingTaskGroup(of: Bool.self) { group in
            for (index, store) in [one, two, one, two].enumerated() {
                var decided = pending
                decided.state = index % 2 == 0 ? .approved : .rejected
                decided.changedBy = "node\(index)"
                group.addTask { try await store.updateRequest(decided, expecting: .pending) }
            }
            return try await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(outcomes.filter { $0 }.count == 1)

        // One enrollment token used by two nodes at once: one registers.
        let registrations = try await withThrowingTaskGroup(of: RegistrationOutcome.self) { group in
            for (index, store) in [one, two].enumerated() {
                let credential = CredentialRecord(credentialHash: "h\(index)", clusterID: "", nodeID: "n\(index)", createdAt: self.t0)
                group.addTask { try await store.register(enrollmentHash: "e1", credential: credential, now: self.at(1)) }
            }
            return try await group.reduce(into: [RegistrationOutcome]()) { $0.append($1) }
        }
        #expect(registrations.filter { $0 == .registered(clusterID: "c1") }.count == 1)

        // Audit records from both: each stored once, IDs unique and in order.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<20 {
                let store = index % 2 == 0 ? one : two
                let record = AuditRecord(time: self.at(Double(index)), actor: "node\(index % 2)", action: "a\(index)")
                group.addTask { try await store.appendAudit([record]) }
            }
            try await group.waitForAll()
        }
        let audit = try await one.audit(since: nil, afterID: 0, limit: 1000)
        #expect(Set(audit.map(\.action)).count == 20 && audit.count == 20)
        #expect(Set(audit.map(\.id)).count == 20)

        try await one.close()
        try await two.close()
        await database.remove()
    }
}

/// Nodes sharing a store must hash tokens with one key: a node started with another key refuses
/// to start and says which file to fix, instead of refusing every token it is shown.
@Suite struct TokenKeyAgreementTests {
    @Test(arguments: StoreBackend.available)
    func aNodeWithAnotherTokenKeyRefusesToStart(_ backend: StoreBackend) async throws {
        let database = try await backend.makeDatabase()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("token-key-\(UUID().uuidString)").path
        var config = RelayConfig(certificateFile: "unused.pem", privateKeyFile: "unused.key", dataDirectory: folder + "/a")
        switch database {
        case .sqlite(let path): config.dataDirectory = (path as NSString).deletingLastPathComponent + "/\(UUID().uuidString)"
        case .postgres(let settings): config.store = .postgres(settings)
        }
        let first = try await RelayServer.openControl(config: config, logger: storeTestLogger)
        try await first.store.close()
        // The same key again (a restart, or a second node given a copy): it starts.
        let again = try await RelayServer.openControl(config: config, logger: storeTestLogger)
        try await again.store.close()

        config.tokenHashKeyFile = folder + "/other/token-hash.key"  // a new key is made there
        try FileManager.default.createDirectory(atPath: folder + "/other", withIntermediateDirectories: true)
        let error = await #expect(throws: TokenKeyError.self) { _ = try await RelayServer.openControl(config: config, logger: storeTestLogger) }
        #expect(error?.path == folder + "/other/token-hash.key")
        #expect(error.map { "\($0)".contains("not the key the other relay nodes sharing this store hash tokens with") } == true)
        await database.remove()
    }
}
