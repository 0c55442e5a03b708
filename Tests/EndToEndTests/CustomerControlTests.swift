import Connector
@testable import CustomerAudit
import DemoComponentKit
import Foundation
import NIOConcurrencyHelpers
import NIOHTTP1
import PrivacyPolicy
import Relay
import RelayAPI
import RelayCtlKit
import RelayModel
import Testing
import TunnelCore

/// The customer's controls: settings changes without a restart, approvals, session limits.
@Suite(.serialized) struct CustomerControlTests {
    /// What `connector mode|requests|sessions` use: the control socket.
    static func control(_ stack: TestStack) throws -> APIClient {
        try APIClient(socketPath: ControlServer.socketPath(config: stack.connectorConfig), peer: "control socket", group: TestStack.group)
    }

    @Test func theControlSocketIsPrivate() async throws {
        let stack = try await TestStack.start(approve: false)
        let path = ControlServer.socketPath(config: stack.connectorConfig)
        let socket = try FileManager.default.attributesOfItem(atPath: path)
        #expect((socket[.posixPermissions] as? Int) == 0o600)
        let folder = try FileManager.default.attributesOfItem(atPath: stack.connectorConfig.stateDirectory)
        #expect((folder[.posixPermissions] as? Int) == 0o700)
        let status: ConnectorStatus = try await Self.control(stack).get(ControlPath.status)
        #expect(status.mode == .all && status.modeSource == "config" && status.cluster == "demo" && status.node == "node-1")
        await stack.stop()
        #expect(!FileManager.default.fileExists(atPath: path), "the socket is removed at stop")
    }

    @Test func aModeChangeTakesEffectOnTheNextRequestAndDisabledClosesTheTunnel() async throws {
        let stack = try await TestStack.start()
        let listener = try await stack.openSession()
        let port = listener.localAddress!.port!
        #expect(try await TestHTTPConnection.request(port: port, .POST, "/upload", body: [1, 2, 3]).status == .ok)

        // An upload in progress when the customer switches to readOnly is cut at once: well before
        // its own bound (60 s, when the test gives up on it), whatever the machine's load.
        // The first upload's stream closes just after its answer: not to be taken for this one.
        try await stack.waitUntil("the first upload's stream to close") { stack.privacy.runningRequests == 0 }
        let upload = Task {
            try await RawHTTP.firstLine(
                port: port, "POST /upload HTTP/1.1\r\nHost: ui\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", seconds: 60)
        }
        try await stack.waitUntil("the upload to be running") { stack.privacy.runningRequests == 1 }
        let started = ContinuousClock.now
        let applied: SettingsApplied = try await Self.control(stack).post(ControlPath.mode, ModeChange(mode: .readOnly, by: "carol"))
        #expect(applied.mode == .readOnly && applied.changes == ["mode all -> readOnly"] && applied.streamsReset == 1)
        let cut = try await upload.value
        #expect(cut.hasPrefix("HTTP/1.1 5") || cut.isEmpty, "the running upload was cut: \(cut)")
        #expect(ContinuousClock.now - started < .seconds(30), "cut by the change, not left to its 60 s bound")

        let refused = try await TestHTTPConnection.request(port: port, .POST, "/upload", body: [1, 2, 3])
        #expect(refused.status == .forbidden && refused.headers.first(name: WireHeader.error) == "role_forbids_method")
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/api/status").status == .ok, "reading still works")

        // The kill switch: every tunnel closes at once (not at the next heartbeat, 60 s away) and the relay learns the mode.
        let killed = ContinuousClock.now
        let _: SettingsApplied = try await Self.control(stack).post(ControlPath.mode, ModeChange(mode: .disabled, by: "carol"))
        try await stack.waitForTunnels(0)
        #expect(ContinuousClock.now - killed < .seconds(30))
        try await stack.waitUntil("the relay to see mode disabled") {
            try await stack.control.store.nodes(clusterID: "demo").first?.privacyMode == .disabled
        }
        // Nothing will redial while disabled: no tunnel is wanted (a disabled connector never dials).
        try await stack.waitUntil("no tunnel to be wanted") { stack.connector.wantedURLs.isEmpty && stack.driver.wantedTunnelURLs.isEmpty }
        #expect(stack.relay.registry.count == 0)
        // The override survives a restart of the guard (state.json), and the audit names who.
        #expect(try ConnectorState.load(directory: stack.connectorConfig.stateDirectory).modeOverride?.mode == .disabled)
        stack.privacy.audit.sync()
        let settings = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 1000).filter { $0.event == "setting" }
        #expect(settings.map(\.detail) == ["mode all -> readOnly", "mode readOnly -> disabled"])
        #expect(settings.allSatisfy { $0.actor == "customer:carol" })
        let requests = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 1000).filter { $0.event == "request" }
        #expect(requests.contains { $0.method == "POST" && $0.decision == "deny" && $0.reason?.hasPrefix("role_forbids_method") == true })
        #expect(requests.contains { $0.method == "POST" && $0.decision == "allow" && $0.reason?.hasPrefix("stream reset: no longer allowed") == true },
                "the upload cut by the change is audited with why")
        try await listener.close()
        await stack.stop()
    }

    /// A stack whose connector reads `folder/connector.yaml` (state in `folder/state`).
    static func startFromFile(_ folder: String) async throws -> TestStack {
        try await TestStack.start(
            configure: { config in
                config.stateDirectory = folder + "/state"
                config.audit = AuditSettings(directory: folder + "/state/audit")
            }, configPath: folder + "/connector.yaml")
    }

    static func writeConfig(_ stack: TestStack, folder: String, denied: [String] = [], mode: String = "all") throws {
        let yaml = """
            node_id: node-1
            credential_file: \(stack.connectorConfig.credentialFile)
            state_dir: state
            relay:
              url: https://127.0.0.1:\(stack.relayPort)
              ca_file: \(TestCerts.trusted)/ca.pem
            privacy:
              mode: \(mode)
              denied_paths: [\(denied.joined(separator: ", "))]
            components:
              ui: \(stack.component.url)
            """
        try yaml.write(toFile: folder + "/connector.yaml", atomically: true, encoding: .utf8)
    }

    @Test func aReloadFromTheConfigFileDeniesAPathFromTheNextRequest() async throws {
        let folder = TestStack.temporaryDirectory("reload")
        let path = folder + "/connector.yaml"
        let stack = try await Self.startFromFile(folder)
        func write(denied: [String]) throws { try Self.writeConfig(stack, folder: folder, denied: denied) }
        try write(denied: [])
        let listener = try await stack.openSession()
        let port = listener.localAddress!.port!
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/api/status").status == .ok)
        try write(denied: ["/api/"])
        let applied = try stack.runtime.reload(actor: "sighup")
        #expect(applied.changes.contains("denied paths [] -> [\"/api/\"]"))
        let refused = try await TestHTTPConnection.request(port: port, .GET, "/api/status")
        #expect(refused.status == .forbidden && refused.headers.first(name: WireHeader.error) == "denied_path")
        // A broken file is refused and the settings in force stay.
        try "privacy: [".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: ControlError.self) { try stack.runtime.reload(actor: "sighup") }
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/api/status").status == .forbidden)
        try await listener.close()
        await stack.stop()
    }

    @Test func approvedOnlyNeedsTheCustomersApprovalWhateverTheRelaySays() async throws {
        let stack = try await TestStack.start(mode: .approvedOnly, approve: false)
        try await stack.waitUntil("the first heartbeat") { try await stack.control.store.cluster(id: "demo")?.lastHeartbeatAt != nil }
        let first = try await stack.createRequest(cluster: "demo", role: .admin)
        try await stack.waitUntil("the request to reach the customer") { stack.privacy.requests.pending.map(\.requestID) == [first.id] }

        // A relay that approves on its own (wrong or compromised) gets a tunnel, but no stream through.
        _ = try await stack.control.approve(first, by: "ops:mallory", now: stack.control.now)
        try await stack.waitForTunnels(1)
        let listener = try await stack.openSession()
        let port = listener.localAddress!.port!
        let refused = try await TestHTTPConnection.request(port: port, .GET, "/api/status")
        #expect(refused.status == .forbidden && refused.headers.first(name: WireHeader.error) == "not_approved")
        #expect(refused.text.contains("connector requests approve \(first.id)"))
        #expect(stack.component.counters.requests == 0)
        try await listener.close()

        // The customer's own decision: kept on disk, sent with the next heartbeat, then streams pass.
        let second = try await stack.createRequest(cluster: "demo", role: .viewer, seconds: 600)
        try await stack.waitUntil("the second request to reach the customer") { stack.privacy.requests.pending.contains { $0.requestID == second.id } }
        let approval: CustomerApproval = try await Self.control(stack).post(
            ControlPath.decide(second.id, .approve), CustomerActor(by: "carol", reason: "ticket 42"))
        #expect(approval.verdict == .approved && approval.expert == "alice" && approval.role == .viewer)
        try await stack.waitUntil("the relay to take the customer's approval") {
            try await stack.control.store.request(id: second.id)?.changedBy == "customer:carol@demo"
        }
        try await stack.waitUntil("the decision to be marked delivered") { stack.privacy.undeliveredDecisions.isEmpty }
        try await stack.waitUntil("the delivery to be saved") {
            try ConnectorState.load(directory: stack.connectorConfig.stateDirectory).approvals.first?.deliveredAt != nil
        }
        let saved = try ConnectorState.load(directory: stack.connectorConfig.stateDirectory)
        #expect(saved.approvals.map(\.requestID) == [second.id] && saved.approvals[0].deliveredAt != nil)

        // The relay now grants the admin request (first) for sessions; a viewer session runs under the second.
        let viewer = try SessionClient(target: try stack.sessionTarget(role: .viewer), group: TestStack.group, logger: TestStack.quietLogger)
        try await viewer.connect()
        let viewerListener = try await LocalListener.startConduit(host: "127.0.0.1", port: 0, session: viewer, group: TestStack.group)
        let answer = try await TestHTTPConnection.request(port: viewerListener.localAddress!.port!, .GET, "/api/status")
        if answer.status == .ok {
            #expect(stack.component.counters.requests == 1)
        } else {
            // The relay picked the first (admin) request, which the customer never approved.
            #expect(answer.headers.first(name: WireHeader.error) == "not_approved")
        }
        let rejected = try? await Self.control(stack).post(
            ControlPath.decide(second.id, .reject), CustomerActor(by: "carol"), as: CustomerApproval.self)
        #expect(rejected == nil, "a request is decided once")
        try await viewerListener.close()
        await stack.stop()
        // A restarted connector still knows the customer's decision (and would resend an undelivered one).
        let restarted = try PrivacyGuard(config: stack.connectorConfig, logger: TestStack.quietLogger)
        #expect(restarted.requests.decided.map(\.requestID) == [second.id])
        #expect(restarted.undeliveredDecisions.isEmpty)
    }

    @Test func sessionsEndAtTheCustomersIdleTimeoutAndTheEngineerIsToldWhy() async throws {
        let stack = try await TestStack.start { config in config.idleTimeoutMilliseconds = 60_000 }
        let ended = NIOLockedValueBox<WebSocketPeerClosed?>(nil)
        let client = try SessionClient(target: try stack.sessionTarget(), group: TestStack.group, logger: TestStack.quietLogger) { closed in
            ended.withLockedValue { $0 = closed }
        }
        try await client.connect()
        let listener = try await LocalListener.startConduit(host: "127.0.0.1", port: 0, session: client, group: TestStack.group)
        let port = listener.localAddress!.port!
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/api/status").status == .ok)
        stack.clock.advance(seconds: 61)
        try await stack.waitUntil("the connector to end the idle session") { stack.privacy.sessions.first?.endReason != nil }
        let endedAtConnector = ContinuousClock.now
        #expect(stack.privacy.sessions.first?.endReason == "the session was idle for the customer's idle timeout (1m)")
        // Pushed to the relay at once: the engineer learns it without making another request.
        try await stack.waitUntil("the relay to close the session") { ended.withLockedValue { $0 } != nil }
        let pushed = ContinuousClock.now - endedAtConnector
        #expect(pushed <= .seconds(SessionEndPushTests.pushBoundSeconds), "told \(pushed) after the connector ended it")
        let closed = ended.withLockedValue { $0 }
        #expect(closed?.code == .unknown(WireCloseCode.endedByCustomer))
        #expect(closed?.reason.contains("idle timeout") == true)
        stack.privacy.audit.sync()
        let ends = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 100).filter { $0.event == "session.end" }
        #expect(ends.count == 1 && ends[0].reason?.contains("idle") == true)
        try await listener.close()
        await stack.stop()
    }

    @Test func theCustomerKillsASession() async throws {
        let stack = try await TestStack.start()
        let watched = try await SessionEndPushTests.WatchedSession(stack)
        let listener = watched.listener
        let port = watched.port
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/").status == .ok)
        let live: [ConnectorSession] = try await Self.control(stack).get(ControlPath.sessions)
        #expect(live.count == 1 && live[0].expert == "alice" && live[0].requests == 1 && live[0].endReason == nil)
        let killed: ConnectorSession = try await Self.control(stack).post(ControlPath.kill(live[0].id), CustomerActor(by: "carol"))
        #expect(killed.endReason == "killed by the customer (carol)")
        // The relay closed the session at once, saying why; relayctl refuses later requests with it.
        let end = try await watched.end(since: .now)
        #expect(end.reason.contains("killed by the customer (carol)"))
        let refused = try await TestHTTPConnection.request(port: port, .GET, "/")
        #expect(refused.status == .forbidden && refused.headers.first(name: WireHeader.error) == "session_ended")
        #expect(refused.text.contains("killed by the customer (carol)"), "\(refused.text)")
        do {
            let _: ConnectorSession = try await Self.control(stack).post(ControlPath.kill("nope"), CustomerActor(by: "carol"))
            Issue.record("killing an unknown session must fail")
        } catch let error as APIError {
            #expect(error.status == 404 && error.code == "unknown_session")
        }
        try await listener.close()
        await stack.stop()
    }

    @Test func theCustomerCLIAnswersFromTheControlSocketAndTheAuditLog() async throws {
        let connector = TestProcess.binary("connector")
        guard FileManager.default.isExecutableFile(atPath: connector) else {
            Issue.record("connector is not built at \(connector)")
            return
        }
        let folder = TestStack.temporaryDirectory("cli")
        let stack = try await Self.startFromFile(folder)
        try Self.writeConfig(stack, folder: folder)
        let config = ["--config", folder + "/connector.yaml"]
        let listener = try await stack.openSession()
        for _ in 0..<3 { _ = try await TestHTTPConnection.request(port: listener.localAddress!.port!, .GET, "/api/status") }

        let (statusCode, statusJSON, _) = try await TestProcess.run(connector, ["status", "--json"] + config)
        #expect(statusCode == 0)
        let status = try APIJSON.decoder().decode(ConnectorStatus.self, from: Data(statusJSON.utf8))
        #expect(status.mode == .all && status.liveSessions == 1 && status.tunnels.count == 1)
        let (_, statusText, _) = try await TestProcess.run(connector, ["status"] + config)
        #expect(statusText.contains("mode: all (from the config file)"), "\(statusText)")

        let (listCode, table, _) = try await TestProcess.run(connector, ["sessions", "list"] + config)
        #expect(listCode == 0 && table.hasPrefix("SESSION") && table.contains("alice") && table.contains("live"))

        let (tailCode, tail, _) = try await TestProcess.run(connector, ["audit", "tail", "-n", "2", "--json"] + config)
        #expect(tailCode == 0)
        let lines = tail.split(separator: "\n")
        #expect(lines.count == 2 && lines.allSatisfy { $0.contains("\"event\":\"request\"") && $0.contains("\"decision\":\"allow\"") })

        let (approveCode, _, approveError) = try await TestProcess.run(connector, ["requests", "approve", "999", "--as", "carol"] + config)
        #expect(approveCode == RelayCtlExit.notFound && approveError.contains("request 999 is not waiting"))

        let (modeCode, modeOut, _) = try await TestProcess.run(connector, ["mode", "readOnly", "--as", "carol"] + config)
        #expect(modeCode == 0 && modeOut.contains("mode readOnly; mode all -> readOnly"))
        #expect(stack.privacy.mode == .readOnly)

        await stack.stop()
        try await listener.close()
        // verify works with the connector stopped, and names the line a customer edited.
        let (verifyCode, verified, _) = try await TestProcess.run(connector, ["audit", "verify"] + config)
        #expect(verifyCode == 0 && verified.hasPrefix("audit log intact"), "\(verified)")
        let log = folder + "/state/audit/audit.jsonl"
        var text = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").map(String.init)
        text[2] = text[2].replacingOccurrences(of: "alice", with: "bob")
        try (text.joined(separator: "\n") + "\n").write(toFile: log, atomically: false, encoding: .utf8)
        let (brokenCode, broken, _) = try await TestProcess.run(connector, ["audit", "verify"] + config)
        #expect(brokenCode == 1 && broken.contains("audit.jsonl line 3: the record does not match its hash"), "\(broken)")
        let (stoppedCode, _, stoppedError) = try await TestProcess.run(connector, ["status"] + config)
        #expect(stoppedCode == RelayCtlExit.unreachable && stoppedError.contains("is the connector running?"))
    }

    /// The customer's safeguard cannot work: nothing goes through until it can again.
    @Test func anUnwritableAuditLogRefusesRequestsUntilItCanBeWrittenAgain() async throws {
        let stack = try await TestStack.start()
        let listener = try await stack.openSession()
        let port = listener.localAddress!.port!
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/api/status").status == .ok)
        let before = stack.component.counters.requests

        // The disk fills up. An upload needs its `request.begin` record on disk before it is forwarded.
        stack.privacy.audit.injectFaults { _ in "No space left on device" }
        let upload = try await TestHTTPConnection.request(port: port, .POST, "/upload", body: [1, 2, 3])
        #expect(upload.status == .serviceUnavailable && upload.headers.first(name: WireHeader.error) == "audit_unavailable")
        #expect(stack.component.counters.requests == before, "nothing reached the component")
        let read = try await TestHTTPConnection.request(port: port, .GET, "/api/status")
        #expect(read.status == .serviceUnavailable, "while the log fails, reads are refused too")
        let status: ConnectorStatus = try await Self.control(stack).get(ControlPath.status)
        #expect(status.auditFailure?.contains("No space left on device") == true, "\(String(describing: status.auditFailure))")

        // Room again: the connector finds out by itself (a probe at most once a second) and goes on.
        stack.privacy.audit.injectFaults(nil)
        try await stack.waitUntil("requests to pass again") {
            try await TestHTTPConnection.request(port: port, .GET, "/api/status").status == .ok
        }
        let recovered: ConnectorStatus = try await Self.control(stack).get(ControlPath.status)
        #expect(recovered.auditFailure == nil)
        stack.privacy.audit.sync()
        #expect(try AuditVerifier.verify(directory: stack.connectorConfig.audit.directory).ok, "a full disk is not tampering")
        let records = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 1000)
        #expect(records.contains { $0.event == "audit.resumed" && $0.reason?.contains("No space left") == true })
        // An upload that goes through has its begin record before its outcome.
        #expect(try await TestHTTPConnection.request(port: port, .POST, "/upload", body: [4, 5]).status == .ok)
        stack.privacy.audit.sync()
        let last = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 2)
        #expect(last.map(\.event) == ["request.begin", "request"] && last.allSatisfy { $0.method == "POST" && $0.path == "/upload" })
        try await listener.close()
        await stack.stop()
    }

    /// An expert cannot push earlier records out through retention by being refused again and again.
    @Test func refusalsAreRecordedUpToARatePerSessionThenCounted() async throws {
        let stack = try await TestStack.start { config in
            config.audit.refusalsPerMinute = 10
            config.deniedPathPrefixes = ["/secrets"]
        }
        let listener = try await stack.openSession()
        let connection = try await TestHTTPConnection.connect(port: listener.localAddress!.port!)
        // All 100 in one minute, however slow the machine.
        stack.clock.freezeAtNextMinute()
        for _ in 0..<100 {
            #expect(try await connection.request(.GET, "/secrets/x").status == .forbidden)
        }
        // The minute ends: the sweep sums up what was only counted.
        stack.clock.advance(seconds: 61)
        try await stack.waitUntil("the refusals to be summed up") {
            stack.privacy.audit.sync()
            return try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 1000).contains { $0.event == "request.refusals" }
        }
        let records = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 1000)
        #expect(records.filter { $0.event == "request" && $0.decision == "deny" }.count == 10)
        let summary = records.first { $0.event == "request.refusals" }
        #expect(summary?.reason?.hasPrefix("90 more refused requests") == true && summary?.expert == "alice", "\(String(describing: summary))")
        await connection.close()
        try await listener.close()
        await stack.stop()
    }

    /// `connector requests revoke`: the customer takes access back, in any mode; the relay follows.
    @Test func theCustomerRevokesAnAccessRequestAndNoSessionIDGetsAround() async throws {
        let stack = try await TestStack.start()
        let request = try #require(try await stack.control.store.requests(clusterID: "demo", states: [.approved]).first)
        // Another expert's request keeps the cluster's tunnel up after alice's ends (the relay
        // closes a tunnel whose last request ended at once, so the rogue stream could not be sent).
        try await stack.addAnotherExpertsRequest()
        let ended = NIOLockedValueBox<WebSocketPeerClosed?>(nil)
        let client = try SessionClient(target: try stack.sessionTarget(), group: TestStack.group, logger: TestStack.quietLogger) { closed in
            ended.withLockedValue { $0 = closed }
        }
        try await client.connect()
        let listener = try await LocalListener.startConduit(host: "127.0.0.1", port: 0, session: client, group: TestStack.group)
        #expect(try await TestHTTPConnection.request(port: listener.localAddress!.port!, .GET, "/api/status").status == .ok)

        let revoked: CustomerApproval = try await Self.control(stack).post(
            ControlPath.revoke(request.id), CustomerActor(by: "carol", reason: "done for today"))
        #expect(revoked.verdict == .revoked && revoked.expert == "alice")
        #expect(stack.privacy.sessions.allSatisfy { $0.endReason?.contains("revoked access request \(request.id)") == true })
        // A stream the relay opens under a new session ID for the same request: refused.
        let rogue = try await RogueRelay.send(
            stack, method: .GET, target: "/api/status", headers: RogueRelay.identity(request: request.id, session: "another-session-id"))
        #expect(rogue.status == 403 && rogue.error == "revoked_by_customer", "\(rogue)")
        // The relay learns it with the next heartbeat: the request is revoked there too, and the engineer is told.
        try await stack.waitUntil("the relay to revoke the request") {
            try await stack.control.store.request(id: request.id)?.state == .revoked
        }
        #expect(try await stack.control.store.request(id: request.id)?.changedBy == "customer:carol@demo")
        try await stack.waitUntil("the engineer's session to be closed") { ended.withLockedValue { $0 } != nil }
        #expect(ended.withLockedValue { $0 }?.reason.contains("revoked") == true)
        // Revoking twice says why not.
        do {
            let _: CustomerApproval = try await Self.control(stack).post(ControlPath.revoke(request.id), CustomerActor(by: "carol"))
            Issue.record("a second revoke must fail")
        } catch let error as APIError {
            #expect(error.status == 409)
        }
        try await listener.close()
        await stack.stop()
    }

    /// A kill holds for the access request and expert: a relay that sends it again under a new
    /// session ID is refused by the connector (an honest relay revokes the request, told at once).
    @Test func aKilledSessionStaysKilledUnderANewSessionID() async throws {
        let stack = try await TestStack.start()
        // Another expert's request keeps the cluster's tunnel up after alice's ends.
        try await stack.addAnotherExpertsRequest()
        let first = try await stack.openSession()
        #expect(try await TestHTTPConnection.request(port: first.localAddress!.port!, .GET, "/").status == .ok)
        let live = try #require(stack.privacy.sessions.first)
        let _: ConnectorSession = try await Self.control(stack).post(ControlPath.kill(live.id), CustomerActor(by: "carol"))
        let rogue = try await RogueRelay.send(
            stack, method: .GET, target: "/", headers: RogueRelay.identity(request: live.accessRequest, session: "another-session-id"))
        #expect(rogue.status == 403 && rogue.error == "session_ended" && rogue.text.contains("killed by the customer (carol)"), "\(rogue)")
        try await first.close()
        await stack.stop()
    }

    /// The customer approves exactly what they were shown.
    @Test func anApprovalOfARequestThatChangedIsRefused() async throws {
        let stack = try await TestStack.start(mode: .approvedOnly, approve: false)
        try await stack.waitUntil("the first heartbeat") { try await stack.control.store.cluster(id: "demo")?.lastHeartbeatAt != nil }
        let request = try await stack.createRequest(cluster: "demo", role: .viewer, seconds: 600)
        try await stack.waitUntil("the request to reach the customer") { stack.privacy.requests.pending.map(\.requestID) == [request.id] }
        var seen = try #require(stack.privacy.requests.pending.first)
        seen.role = .admin  // what the customer was shown differs from the request now
        do {
            let _: CustomerApproval = try await Self.control(stack).post(
                ControlPath.decide(request.id, .approve), CustomerActor(by: "carol", expected: seen))
            Issue.record("approved a request that changed")
        } catch let error as APIError {
            #expect(error.status == 409 && error.code == "request_changed", "\(error)")
        }
        #expect(stack.privacy.requests.decided.isEmpty, "nothing was decided")
        seen.role = .viewer
        let approval: CustomerApproval = try await Self.control(stack).post(
            ControlPath.decide(request.id, .approve), CustomerActor(by: "carol", expected: seen))
        #expect(approval.verdict == .approved && approval.role == .viewer)
        await stack.stop()
    }
}
