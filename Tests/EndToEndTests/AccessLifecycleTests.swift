import ConfigKit
import Connector
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Relay
import RelayAPI
import RelayCtlKit
import RelayModel
import RelayStore
import TestSupport
import Testing
import TunnelCore

/// enroll -> register -> heartbeat without flag -> request -> approve -> tunnel -> session ->
/// revoke / expiry -> tunnel closed within 5 s and the session told why.
@Suite(.serialized) struct AccessLifecycleTests {
    /// A session whose end reason (the relay's close frame) is captured.
    struct ObservedSession {
        let listener: LocalListener
        let ended: NIOLockedValueBox<WebSocketPeerClosed?>
        var port: Int { self.listener.localAddress!.port! }
    }

    func openObservedSession(_ stack: TestStack) async throws -> ObservedSession {
        let ended = NIOLockedValueBox<WebSocketPeerClosed?>(nil)
        let client = try SessionClient(target: try stack.sessionTarget(), group: TestStack.group, logger: TestStack.quietLogger) { closed in
            ended.withLockedValue { $0 = closed }
        }
        // As `relayctl session open` does: while the relay says "no tunnel yet" (503), wait and dial
        // again (a heartbeat answer that left before the request can still close a fresh tunnel).
        var lastError: Error?
        let connected = try await TestWait.poll {
            do {
                try await client.connect()
                return true
            } catch let error as DialError where error.kind == .rejected(status: 503) {
                lastError = error
                return false
            }
        }
        guard connected else { throw lastError ?? TestFailure("no session") }
        let listener = try await LocalListener.startConduit(host: "127.0.0.1", port: 0, session: client, group: TestStack.group)
        return ObservedSession(listener: listener, ended: ended)
    }

    @Test func fullLifecycleWithRevokeThenExpiry() async throws {
        let stack = try await TestStack.start(approve: false)
        // Registered and heartbeating, but no request: nothing is dialed.
        // Three answers without the flag, and the connector wants no tunnel.
        try await stack.waitUntil("three heartbeat answers") { stack.driver.answersReceived >= 3 }
        #expect(stack.driver.lastAnswer?.remoteUIRequested == false)
        #expect(stack.connector.wantedURLs.isEmpty && stack.driver.wantedTunnelURLs.isEmpty)
        #expect(stack.relay.registry.count == 0)
        #expect(stack.connector.connectedURLs.isEmpty)

        // Request (auto-approved: mode all) -> the tunnel comes up within one interval.
        let request = try await stack.createRequest(cluster: "demo", role: .user)
        #expect(request.state == .approved)
        #expect(request.changedBy == "auto:privacy mode all")
        try await stack.waitForTunnels(1)
        #expect(stack.driver.lastAnswer?.remoteUIRequested == true)
        #expect(stack.driver.lastAnswer?.activeRole == .user)

        // The session works, and the relay stamps role and request on every stream.
        let session = try await self.openObservedSession(stack)
        let page = try await TestHTTPConnection.request(port: session.port, .GET, "/api/status")
        #expect(page.status == .ok)
        // The relay records the session beside the request path, not before it.
        try await stack.waitUntil("the session record") { try await !stack.control.store.sessions(live: true).isEmpty }
        let live = try await stack.control.store.sessions(live: true)
        #expect(live.count == 1 && live.first?.expert == "alice" && live.first?.requestID == request.id && live.first?.role == .user)

        // Revoke through the API: tunnel gone and session told why at once.
        let revokedAt = ContinuousClock.now
        let revoked: AccessRequestRecord = try await stack.api().post(
            "\(APIPath.requests)/\(request.id)/revoke", RevokeRequest(reason: "ticket closed"))
        #expect(revoked.state == .revoked && revoked.changedBy == "ops:root")
        try await stack.waitForTunnels(0)
        try await stack.waitUntil("the session's end") { session.ended.withLockedValue { $0 } != nil }
        // At once, not at a poll: well inside the bound SessionEndPushTests explains (a loaded machine took 7.8 s).
        #expect(ContinuousClock.now - revokedAt < .seconds(SessionEndPushTests.pushBoundSeconds))
        let reason = session.ended.withLockedValue { $0 }
        #expect(reason?.code == .unknown(WireCloseCode.accessEnded))
        #expect(reason?.reason.contains("access request \(request.id) was revoked by ops:root") == true, "\(String(describing: reason))")
        // Heartbeats go back to normal: flag off, no redial.
        try await stack.waitUntil("a flag-off answer, and no tunnel wanted") {
            stack.driver.lastAnswer?.remoteUIRequested == false && stack.connector.wantedURLs.isEmpty && stack.driver.wantedTunnelURLs.isEmpty
        }
        #expect(stack.relay.registry.count == 0)
        try await stack.waitUntil("the session record's end") { try await stack.control.store.sessions(live: true).isEmpty }
        let ended = try await stack.control.store.sessions(live: false).first
        #expect(ended?.requests == 1)
        #expect(ended?.bytesOut ?? 0 > 0)
        #expect(ended?.endReason?.contains("revoked") == true)
        // A new session is refused with the reason and the next step.
        let refused = try SessionClient(target: try stack.sessionTarget(), group: TestStack.group, logger: TestStack.quietLogger)
        await #expect(throws: DialError.self) { try await refused.connect() }
        try await session.listener.close()

        // Expiry behaves the same.
        let short = try await stack.createRequest(cluster: "demo", role: .viewer, seconds: 60)
        try await stack.waitForTunnels(1)
        let second = try await self.openObservedSession(stack)
        let first = try await TestHTTPConnection.request(port: second.port, .GET, "/")
        #expect(first.status == .ok, "\(first.status) \(first.headers.first(name: WireHeader.error) ?? "-"): \(first.text)")
        let expiredAt = ContinuousClock.now
        stack.clock.advance(seconds: 61)
        try await stack.waitForTunnels(0)
        try await stack.waitUntil("the second session's end") { second.ended.withLockedValue { $0 } != nil }
        #expect(ContinuousClock.now - expiredAt < .seconds(SessionEndPushTests.pushBoundSeconds))
        #expect(second.ended.withLockedValue { $0 }?.reason.contains("access request \(short.id) expired at") == true)
        #expect(try await stack.control.store.request(id: short.id)?.state == .expired)
        try await second.listener.close()

        let actions = Set(try await stack.control.store.audit(since: nil, afterID: 0, limit: 1000).map(\.action))
        for action in ["cluster.add", "node.register", "heartbeat.mode", "heartbeat.flag", "request.create", "request.approve",
                       "tunnel.open", "session.start", "request.revoke", "tunnel.close", "session.end", "request.expire"] {
            #expect(actions.contains(action), "audit has no \(action)")
        }
        await stack.stop()
    }

    @Test func approvedOnlyWaitsForTheCustomersAnswerCarriedByHeartbeats() async throws {
        let stack = try await TestStack.start(mode: .approvedOnly, approve: false)
        try await stack.waitUntil("the first heartbeat") { try await stack.control.store.cluster(id: "demo")?.privacyMode == .approvedOnly }
        let request = try await stack.createRequest(cluster: "demo", role: .admin)
        #expect(request.state == .pending)
        try await stack.waitUntil("the pending request in a heartbeat answer") {
            stack.driver.lastAnswer?.pendingApprovals.map(\.requestID) == [request.id]
        }
        #expect(stack.relay.registry.count == 0)
        let pending = stack.driver.lastAnswer!.pendingApprovals[0]
        #expect(pending.expert == "alice" && pending.role == .admin && pending.reason == "test")

        // The customer's approval arrives in a heartbeat (the connector side of approval is issue 4).
        let node = try stack.api(token: stack.credential.credential)
        var beat = HeartbeatDriver.makeRequest(
            config: stack.connectorConfig, credential: stack.credential,
            health: NodeHealthProbe(masterNode: true, startedAt: Date(), diskPath: "/").sample())
        beat.decisions = [ApprovalDecision(requestID: request.id, verdict: .approve, by: "carol")]
        let answer: HeartbeatResponse = try await node.post(APIPath.heartbeat, beat)
        #expect(answer.remoteUIRequested)
        #expect(answer.pendingApprovals.isEmpty)
        #expect(try await stack.control.store.request(id: request.id)?.changedBy == "customer:carol@demo")
        try await stack.waitForTunnels(1)

        // A rejection is recorded too.
        let second = try await stack.createRequest(cluster: "demo", role: .viewer)
        beat.decisions = [ApprovalDecision(requestID: second.id, verdict: .reject, by: "carol")]
        let _: HeartbeatResponse = try await node.post(APIPath.heartbeat, beat)
        #expect(try await stack.control.store.request(id: second.id)?.state == .rejected)
        await stack.stop()
    }

    @Test func clustersShowCarriesNodeHealth() async throws {
        let stack = try await TestStack.start()
        let detail: ClusterDetail = try await stack.api().get("\(APIPath.clusters)/demo")
        #expect(detail.remoteUIRequested)
        #expect(detail.nodes.count == 1)
        let node = try #require(detail.nodes.first)
        #expect(node.record.nodeID == "node-1" && node.record.sourceType == "server" && node.record.connectorVersion == ConnectorVersion.current)
        #expect(node.tunnelsHere == 1)
        #expect(node.health?.masterNode == true)
        #expect((node.health?.cpuCores ?? 0) > 0)
        await stack.stop()
    }
}

/// Forged and replayed credentials: one 401 shape, audited, no tunnel registered.
@Suite(.serialized) struct ForgedCredentialTests {
    func dial(_ stack: TestStack, path: String, bearer: String?, cluster: String = "demo", node: String = "node-1") async -> DialError? {
        var headers = HTTPHeaders()
        if let bearer { headers.add(name: "authorization", value: bearer) }
        headers.add(name: WireHeader.cluster, value: cluster)
        headers.add(name: WireHeader.node, value: node)
        headers.add(name: WireHeader.component, value: "ui")
        do {
            let tls = try TLSFiles.clientContext(caFile: TestCerts.trusted + "/ca.pem")
            let (channel, _) = try await WebSocketDialer.dial(
                url: try WebSocketURL(parsing: "wss://127.0.0.1:\(stack.relayPort)\(path)"), headers: headers, tls: tls, limits: TestStack.limits,
                group: TestStack.group
            ) { _ in () }.get()
            try? await channel.close()
            return nil
        } catch let error as DialError {
            return error
        } catch {
            Issue.record("unexpected \(error)")
            return nil
        }
    }

    /// Refusals in the audit trail: a record each, or one for the first of a minute and a summary
    /// ("N more like this ...") for the rest, written once the minute is over. Moves the clock past
    /// the minute and waits (bounded) for the reconciler to account for `expected` refusals.
    static func refusalsAccountedFor(_ stack: TestStack, after: Int64, expected: Int) async throws -> Int {
        stack.clock.advance(seconds: 61)
        var accounted = 0
        try await TestWait.poll {
            accounted = try await stack.control.store.audit(since: nil, afterID: after, limit: 100_000).filter { $0.outcome == .denied }
                .reduce(0) { total, record in
                    let reason = record.reason ?? ""
                    guard let range = reason.range(of: " more like this"), let count = Int(reason[..<range.lowerBound]) else { return total + 1 }
                    return total + count
                }
            return accounted >= expected
        }
        return accounted
    }

    @Test func forgedNodeCredentialsAreRefusedAlike() async throws {
        let stack = try await TestStack.start()
        let ops = try await stack.control.authenticateUser(bearer: stack.opsToken, action: "test")
        let otherEnrollment = try await stack.control.enroll(cluster: "other", by: ops)
        let otherCredential = try await stack.control.register(RegisterRequest(enrollmentToken: otherEnrollment.enrollmentToken, nodeID: "node-1"))
        let before = try await stack.control.store.audit(since: nil, afterID: 0, limit: 100_000).last?.id ?? 0
        let attempts: [(String, String?, String)] = [
            ("wrong secret", "Bearer \(IssuedToken.credential.generate())", "demo"),
            ("another cluster's credential with this cluster's ID", "Bearer \(otherCredential.credential)", "demo"),
            ("right credential, another node ID", "Bearer \(stack.credential.credential)", "demo"),
            ("malformed", "Bearer rac_short", "demo"),
            ("no bearer", "Basic Zm9vOmJhcg==", "demo"),
            ("missing header", nil, "demo"),
            ("unknown cluster", "Bearer \(stack.credential.credential)", "ghost"),
        ]
        var messages: Set<String> = []
        for (name, bearer, cluster) in attempts {
            let node = name == "right credential, another node ID" ? "node-2" : "node-1"
            let error = await self.dial(stack, path: WirePath.tunnel, bearer: bearer, cluster: cluster, node: node)
            #expect(error?.kind == .rejected(status: 401), "\(name): \(String(describing: error))")
            messages.insert(error?.message ?? "")
        }
        #expect(messages.count == 1, "one response shape: \(messages)")
        #expect(!(messages.first ?? "").contains("rac_"))
        #expect(stack.relay.registry.count == 1, "only the real connector's tunnel")
        #expect(try await Self.refusalsAccountedFor(stack, after: before, expected: attempts.count) == attempts.count, "every refusal is in the audit trail")
        await stack.stop()
    }

    @Test func expiredRevokedAndMalformedTokensAreRefusedAlike() async throws {
        let stack = try await TestStack.start()
        let ops = try await stack.control.authenticateUser(bearer: stack.opsToken, action: "test")
        let expiring = try await stack.control.createToken(CreateTokenRequest(name: "eve", role: .expert, ttlSeconds: 60), by: ops)
        let revoked = try await stack.control.createToken(CreateTokenRequest(name: "mallory", role: .expert, ttlSeconds: nil), by: ops)
        _ = try await stack.createRequest(cluster: "demo", role: .viewer, expert: "eve")
        _ = try await stack.createRequest(cluster: "demo", role: .viewer, expert: "mallory")
        _ = try await stack.control.revokeToken(name: "mallory", by: ops)
        stack.clock.advance(seconds: 120)
        let before = try await stack.control.store.audit(since: nil, afterID: 0, limit: 100_000).last?.id ?? 0
        let attempts: [(String, String?)] = [
            ("expired", "Bearer \(expiring.secret)"), ("revoked", "Bearer \(revoked.secret)"),
            ("unknown", "Bearer \(IssuedToken.api.generate())"), ("malformed", "Bearer not-a-token"),
            ("node credential as a user token", "Bearer \(stack.credential.credential)"), ("missing", nil),
        ]
        var messages: Set<String> = []
        for (name, bearer) in attempts {
            let error = await self.dial(stack, path: WirePath.session, bearer: bearer)
            #expect(error?.kind == .rejected(status: 401), "\(name): \(String(describing: error))")
            messages.insert(error?.message ?? "")
            // The API answers the same way.
            do {
                let _: [TokenView] = try await stack.api(token: bearer?.replacingOccurrences(of: "Bearer ", with: "") ?? "").get(APIPath.tokens)
                Issue.record("\(name) token listed tokens")
            } catch let error as APIError {
                #expect(error.status == 401 && error.code == "unauthorized", "\(name): \(error)")
            }
        }
        #expect(messages.count == 1, "one response shape: \(messages)")
        #expect(stack.relay.sessions.all.isEmpty)
        #expect(try await Self.refusalsAccountedFor(stack, after: before, expected: attempts.count * 2) == attempts.count * 2, "every refusal is in the audit trail")
        await stack.stop()
    }

    @Test func anExpertTokenCannotUseOpsEndpoints() async throws {
        let stack = try await TestStack.start()
        do {
            let _: [TokenView] = try await stack.api(token: stack.expertToken).get(APIPath.tokens)
            Issue.record("an expert listed tokens")
        } catch let error as APIError {
            #expect(error.status == 403 && error.code == "ops_only")
        }
        await stack.stop()
    }
}
