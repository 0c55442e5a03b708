import Crypto
import Foundation
import Logging
import NIOConcurrencyHelpers
import Relay
import RelayAPI
import RelayModel
import RelayStore
import Testing
import TunnelCore

/// A MissionControl over a fresh SQLite store in a temporary folder, with a clock tests move.
struct Fixture {
    let control: MissionControl
    let store: SQLiteStore
    let hasher = TokenHasher(key: SymmetricKey(size: .bits256))
    let path: String
    let offset = NIOLockedValueBox<TimeInterval>(0)
    let base = Date(timeIntervalSince1970: 1_800_000_000)

    init() throws {
        self.path = FileManager.default.temporaryDirectory.appendingPathComponent("relay-unit-\(UUID().uuidString).sqlite").path
        self.store = try SQLiteStore(path: self.path)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let offset = self.offset
        let base = self.base
        self.control = MissionControl(
            store: self.store, hasher: self.hasher, settings: .init(nodeName: "relay-test"),
            clock: { base.addingTimeInterval(offset.withLockedValue { $0 }) }, logger: logger)
    }

    var now: Date { self.control.now }
    func advance(_ seconds: TimeInterval) { self.offset.withLockedValue { $0 += seconds } }

    /// Creates a token and returns its secret and record.
    func token(_ name: String, _ role: TokenRole, ttl: Int64? = nil) async throws -> (String, TokenRecord) {
        let created = try await self.control.createToken(CreateTokenRequest(name: name, role: role, ttlSeconds: ttl), by: nil)
        return (created.secret, try await self.control.authenticateUser(bearer: created.secret, action: "test"))
    }

    func deniedAudit(action: String) async throws -> [AuditRecord] {
        try await self.store.audit(since: nil, afterID: 0, limit: 100_000).filter { $0.action == action && $0.outcome == .denied }
    }
}

/// expert x cluster x request state x role x time window: every cell decided by MissionControl
/// (policy + store), compared with the rule written out independently, and every denial audited.
@Suite struct AuthorizationTableTests {
    enum Caller: String, CaseIterable { case namedExpert, otherExpert, ops }
    enum When: String, CaseIterable { case withinWindow, afterExpiry }

    @Test func everyCell() async throws {
        let fixture = try Fixture()
        let (_, root) = try await fixture.token("root", .ops)
        let (_, alice) = try await fixture.token("alice", .expert)
        let (_, bob) = try await fixture.token("bob", .expert)
        for id in ["demo", "other"] {
            _ = try await fixture.control.addCluster(CreateClusterRequest(id: id, description: ""), by: root)
        }
        var cells = 0
        var denied = 0
        for state in RequestState.allCases {
            for asked in [nil] + AccessRole.allCases {
                for when in When.allCases {
                    // A fresh request on a fresh cluster for each state/role/time combination.
                    let cluster = "c-\(state.rawValue)-\(asked?.rawValue ?? "default")-\(when.rawValue)"
                    _ = try await fixture.control.addCluster(CreateClusterRequest(id: cluster, description: ""), by: root)
                    let request = try await self.makeRequest(fixture, cluster: cluster, state: state, by: root)
                    if when == .afterExpiry { fixture.advance(3601) }
                    for caller in Caller.allCases {
                        for target in [cluster, "other"] {
                            let token = caller == .namedExpert ? alice : caller == .otherExpert ? bob : root
                            let expected = Self.expected(caller: caller, sameCluster: target == cluster, state: state, asked: asked, when: when)
                            cells += 1
                            do {
                                let grant = try await fixture.control.authorizeSession(caller: token, cluster: target, role: asked)
                                #expect(expected != nil, "allowed \(caller) \(target) \(state) \(String(describing: asked)) \(when)")
                                #expect(grant.request.id == request.id)
                                #expect(grant.role == (asked ?? .user))
                            } catch let refusal as RelayError {
                                denied += 1
                                #expect(expected == nil, "denied \(caller) \(target) \(state) \(String(describing: asked)) \(when): \(refusal)")
                                #expect(refusal.code.status == .forbidden)
                                #expect(refusal.code.rawValue == Self.expectedCode(caller: caller, sameCluster: target == cluster, state: state, asked: asked, when: when))
                            }
                        }
                    }
                    if when == .afterExpiry { fixture.advance(-3601) }
                }
            }
        }
        #expect(cells == RequestState.allCases.count * 4 * When.allCases.count * Caller.allCases.count * 2)
        #expect(denied > 0 && denied < cells)
        #expect(try await fixture.deniedAudit(action: "session.open").count == denied, "every denial is in the audit trail")
    }

    /// The request's role is `user`; it lasts 3600 s from approval.
    func makeRequest(_ fixture: Fixture, cluster: String, state: RequestState, by root: TokenRecord) async throws -> AccessRequestRecord {
        let created = try await fixture.control.createRequest(
            CreateAccessRequest(clusterID: cluster, expert: "alice", reason: "table", role: .user, durationSeconds: 3600), by: root)
        #expect(created.state == .pending, "the cluster never reported a mode")
        switch state {
        case .pending:
            return created
        case .approved:
            return try await fixture.control.approve(created, by: "test", now: fixture.now)
        case .expired:
            let approved = try await fixture.control.approve(created, by: "test", now: fixture.now.addingTimeInterval(-7200))
            var expired = approved
            expired.state = .expired
            _ = try await fixture.store.updateRequest(expired, expecting: .approved)
            return expired
        case .revoked, .rejected:
            var ended = created
            ended.state = state
            ended.changedBy = "ops:root"
            _ = try await fixture.store.updateRequest(ended, expecting: .pending)
            return ended
        }
    }

    /// The rule, written out: only the named expert, on that cluster, with an approved request
    /// inside its window, asking for at most the granted role (user).
    static func expected(caller: Caller, sameCluster: Bool, state: RequestState, asked: AccessRole?, when: When) -> AccessRole? {
        guard caller == .namedExpert, sameCluster, state == .approved, when == .withinWindow else { return nil }
        guard asked != .admin else { return nil }
        return asked ?? .user
    }

    static func expectedCode(caller: Caller, sameCluster: Bool, state: RequestState, asked: AccessRole?, when: When) -> String {
        if caller == .ops { return "not_an_expert" }
        if caller == .otherExpert || !sameCluster { return "no_access_request" }
        switch state {
        case .pending: return "request_pending"
        case .rejected: return "request_rejected"
        case .revoked: return "request_revoked"
        case .expired: return "request_expired"
        case .approved: return when == .afterExpiry ? "request_expired" : "role_not_granted"
        }
    }
}

@Suite struct StoreTests {
    @Test func migrationsAreVersionedAndDataSurvivesReopening() async throws {
        let fixture = try Fixture()
        #expect(try fixture.store.appliedMigrations() == ["v1", "v2", "v3"])
        #expect(try SQLiteStore.pendingMigrations(path: fixture.path).isEmpty, "relay migrate --check: nothing left")
        let (secret, _) = try await fixture.token("alice", .expert)
        let reopened = try SQLiteStore(path: fixture.path)
        #expect(try reopened.appliedMigrations() == ["v1", "v2", "v3"])
        #expect(try await reopened.tokens().map(\.name) == ["alice"])
        // Only the keyed hash is stored: the secret's bytes are nowhere in the database files.
        for file in [fixture.path, fixture.path + "-wal"] {
            let bytes = FileManager.default.contents(atPath: file) ?? Data()
            #expect(bytes.range(of: Data(secret.utf8)) == nil, "\(file) holds the token")
            #expect(bytes.range(of: Data(secret.dropFirst(4).prefix(20).utf8)) == nil)
        }
    }

    @Test func enrollmentTokensWorkOnceAndGuessesFail() async throws {
        let fixture = try Fixture()
        let (_, root) = try await fixture.token("root", .ops)
        let enrollment = try await fixture.control.addCluster(CreateClusterRequest(id: "demo", description: ""), by: root)
        let registered = try await fixture.control.register(RegisterRequest(enrollmentToken: enrollment.enrollmentToken, nodeID: "n1"))
        #expect(registered.clusterID == "demo")
        #expect(IssuedToken.credential.isWellFormed(registered.credential))
        for (token, code) in [
            (enrollment.enrollmentToken, "enrollment_used"), (IssuedToken.enrollment.generate(), "enrollment_invalid"), ("guess", "enrollment_invalid"),
        ] {
            do {
                _ = try await fixture.control.register(RegisterRequest(enrollmentToken: token, nodeID: "n2"))
                Issue.record("registered with \(code)")
            } catch let refusal as RelayError {
                #expect(refusal.code.rawValue == code)
                #expect(refusal.code.status == .unauthorized)
                #expect(refusal.message.contains("ask"), "says what to do next: \(refusal.message)")
            }
        }
        let expiring = try await fixture.control.enroll(cluster: "demo", by: root)
        fixture.advance(86_401)
        do {
            _ = try await fixture.control.register(RegisterRequest(enrollmentToken: expiring.enrollmentToken, nodeID: "n3"))
            Issue.record("registered with an expired enrollment token")
        } catch let refusal as RelayError {
            #expect(refusal.code.rawValue == "enrollment_expired")
        }
        #expect(try await fixture.deniedAudit(action: "node.register").count == 4)
    }

    @Test func requestsMoveThroughTheirStatesRecordingWhoAndWhen() async throws {
        let fixture = try Fixture()
        let (_, root) = try await fixture.token("root", .ops)
        let (_, alice) = try await fixture.token("alice", .expert)
        _ = try await fixture.control.addCluster(CreateClusterRequest(id: "demo", description: ""), by: root)
        let pending = try await fixture.control.createRequest(
            CreateAccessRequest(clusterID: "demo", expert: nil, reason: "disk full", role: .viewer, durationSeconds: 600), by: alice)
        #expect(pending.state == .pending && pending.createdBy == "expert:alice" && pending.expert == "alice")
        let approved = try await fixture.control.approve(pending, by: "customer:carol@demo", now: fixture.now)
        #expect(approved.state == .approved && approved.changedBy == "customer:carol@demo")
        #expect(approved.expiresAt == fixture.now.addingTimeInterval(600))
        #expect(try await fixture.control.flag(cluster: "demo"))
        fixture.advance(601)
        #expect(try await !fixture.control.flag(cluster: "demo"), "the flag drops at expiry, before any timer runs")
        let expired = try await fixture.control.expireDue()
        #expect(expired.map(\.id) == [pending.id])
        #expect(try await fixture.store.request(id: pending.id)?.state == .expired)
        do {
            _ = try await fixture.control.revokeRequest(id: pending.id, reason: nil, by: root)
            Issue.record("revoked an expired request")
        } catch let refusal as RelayError {
            #expect(refusal.code.status == .conflict)
            #expect(refusal.message.contains("expired at"))
        }
        // Experts ask only for themselves.
        do {
            _ = try await fixture.control.createRequest(
                CreateAccessRequest(clusterID: "demo", expert: "root", reason: "x", role: .admin, durationSeconds: 60), by: alice)
            Issue.record("an expert asked on someone else's behalf")
        } catch let refusal as RelayError {
            #expect(refusal.code.status == .forbidden)
        }
        let actions = try await fixture.store.audit(since: nil, afterID: 0, limit: 100).map(\.action)
        #expect(actions.contains("request.create") && actions.contains("request.approve") && actions.contains("request.expire"))
    }
}
