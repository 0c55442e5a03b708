import Connector
import Foundation
import PrivacyPolicy
import Relay
import RelayAPI
import RelayCtlKit
import RelayModel
import Testing
import TunnelCore

/// What the customer's admin sees and can do, through the `connector` program as they run it: the
/// commands work while connector.yaml is broken, overrides are shown, requests arrive in seconds.
@Suite(.serialized) struct CustomerViewTests {
    static let connector = TestProcess.binary("connector")

    @Test func aTypoInTheConfigFileNeverBlocksTheCustomersCommands() async throws {
        let folder = TestStack.temporaryDirectory("typo")
        let stack = try await CustomerControlTests.startFromFile(folder)
        try CustomerControlTests.writeConfig(stack, folder: folder)
        let listener = try await stack.openSession()
        #expect(try await TestHTTPConnection.request(port: listener.localAddress!.port!, .GET, "/").status == .ok)
        try CustomerControlTests.writeConfig(stack, folder: folder, mode: "everything")
        let config = ["--config", folder + "/connector.yaml"]

        let (statusCode, status, _) = try await TestProcess.run(Self.connector, ["status"] + config)
        #expect(statusCode == 0)
        #expect(status.contains("mode: all"), "the last good settings stay in force: \(status)")
        #expect(status.contains("CONFIG FILE DOES NOT LOAD") && status.contains("everything"), "\(status)")
        let (sessionsCode, sessions, _) = try await TestProcess.run(Self.connector, ["sessions", "list"] + config)
        #expect(sessionsCode == 0 && sessions.contains("alice"))
        let (requestsCode, _, _) = try await TestProcess.run(Self.connector, ["requests", "list"] + config)
        #expect(requestsCode == 0)
        let (verifyCode, verified, _) = try await TestProcess.run(Self.connector, ["audit", "verify"] + config)
        #expect(verifyCode == 0 && verified.hasPrefix("audit log intact"), "\(verified)")
        let (reloadCode, _, reloadError) = try await TestProcess.run(Self.connector, ["reload", "--as", "carol"] + config)
        #expect(reloadCode != 0 && reloadError.contains("the settings in force stay"), "\(reloadError)")

        // The kill switch works.
        let (modeCode, modeOut, _) = try await TestProcess.run(Self.connector, ["mode", "disabled", "--as", "carol"] + config)
        #expect(modeCode == 0 && modeOut.contains("mode disabled"), "\(modeOut)")
        try await stack.waitForTunnels(0)
        try await listener.close()
        await stack.stop()
    }

    @Test func anOverrideIsShownAndModeConfigReadsTheFileAsItIsNow() async throws {
        let folder = TestStack.temporaryDirectory("override")
        let stack = try await CustomerControlTests.startFromFile(folder)
        try CustomerControlTests.writeConfig(stack, folder: folder)
        let config = ["--config", folder + "/connector.yaml"]
        #expect(try await TestProcess.run(Self.connector, ["mode", "all", "--as", "carol"] + config).0 == 0)
        try CustomerControlTests.writeConfig(stack, folder: folder, mode: "disabled")

        let (reloadCode, reloaded, _) = try await TestProcess.run(Self.connector, ["reload", "--as", "dave"] + config)
        #expect(reloadCode == 0)
        #expect(reloaded.contains("note: the config file says mode disabled, but carol set all with `connector mode`"), "\(reloaded)")
        #expect(reloaded.contains("`connector mode config` goes back to the file"))
        let (_, status, _) = try await TestProcess.run(Self.connector, ["status"] + config)
        #expect(status.contains("mode: all (set by carol with `connector mode`") && status.contains("the config file says disabled"), "\(status)")
        #expect(stack.relay.registry.count == 1, "the override still holds")

        let (modeCode, applied, _) = try await TestProcess.run(Self.connector, ["mode", "config", "--as", "dave"] + config)
        #expect(modeCode == 0 && applied.contains("mode disabled; mode all -> disabled"), "the file as it is now: \(applied)")
        try await stack.waitForTunnels(0)
        #expect(stack.privacy.modeOverride == nil)
        await stack.stop()
    }

    /// A connector on the real 60 s interval: a request created while the customer watches shows
    /// within 10 s, and the relay asks for 5 s heartbeats while it waits.
    @Test func aNewRequestReachesAWatchingCustomerWithinTenSeconds() async throws {
        let stack = try await TestStack.start(mode: .approvedOnly, approve: false) { config in
            config.heartbeat.enabledIntervalMilliseconds = 60_000
            config.heartbeat.retryMilliseconds = 60_000
        }
        try await stack.waitUntil("the first heartbeat") { stack.driver.answersReceived >= 1 }
        let watch = try RunningProcess(Self.connector, ["requests", "list", "--watch", "--state-dir", stack.connectorConfig.stateDirectory])
        defer { watch.terminate() }
        // The watch's first refresh is a heartbeat right away (the configured one is a minute off).
        try await stack.waitUntil("the watch to ask the relay") { stack.driver.answersReceived >= 2 }
        let created = ContinuousClock.now
        let answersBefore = stack.driver.answersReceived
        let request = try await stack.createRequest(cluster: "demo", role: .user)
        #expect(request.state == .pending)
        try await stack.waitUntil("the request in the watch") { watch.stdout.contains("\n\(request.id)\talice\tuser\t") && watch.stdout.contains("waiting") }
        // The watch asks for a heartbeat every 5 s: the request shows by the second one after it was
        // made (within 10 s), counted in heartbeats so that a loaded machine's slowness does not count.
        let refreshes = stack.driver.answersReceived - answersBefore
        #expect(refreshes <= 2, "shown after \(refreshes) heartbeats, \(ContinuousClock.now - created)")
        #expect(stack.driver.lastAnswer?.nextHeartbeatSeconds == 5, "the relay asks for quicker heartbeats while a request waits")
        watch.terminate()
        _ = await watch.exitStatus()
        await stack.stop()
    }

    /// Approved automatically under `all`, then the customer switched to approvedOnly: the
    /// customer can now decide it, as the refusal says.
    @Test func aRequestApprovedUnderAllCanBeApprovedByTheCustomerAfterTheSwitch() async throws {
        let stack = try await TestStack.start()
        let request = try #require(try await stack.control.store.requests(clusterID: "demo", states: [.approved]).first)
        let _: SettingsApplied = try await CustomerControlTests.control(stack).post(ControlPath.mode, ModeChange(mode: .approvedOnly, by: "carol"))
        let listener = try await stack.openSession()
        let port = listener.localAddress!.port!
        let refused = try await TestHTTPConnection.request(port: port, .GET, "/")
        #expect(refused.status == .forbidden && refused.headers.first(name: WireHeader.error) == "not_approved")
        #expect(refused.text.contains("connector requests approve \(request.id)"))
        try await stack.waitUntil("the request to wait for the customer") { stack.privacy.requests.pending.contains { $0.requestID == request.id } }
        let (code, out, err) = try await TestProcess.run(
            Self.connector, ["requests", "approve", String(request.id), "--as", "carol", "--state-dir", stack.connectorConfig.stateDirectory])
        #expect(code == 0 && out.contains("request \(request.id) approved"), "\(out) \(err)")
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/").status == .ok)
        try await stack.waitUntil("the relay to record the customer's approval") {
            try await stack.control.store.request(id: request.id)?.changedBy == "customer:carol@demo"
        }
        #expect(try await stack.control.store.request(id: request.id)?.state == .approved)
        try await listener.close()
        await stack.stop()
    }

    /// The customer's reason for a rejection reaches the engineer.
    @Test func aRejectionShowsTheCustomersReasonToTheEngineer() async throws {
        let stack = try await TestStack.start(mode: .approvedOnly, approve: false)
        try await stack.waitUntil("the first heartbeat") { stack.driver.answersReceived >= 1 }
        let request = try await stack.createRequest(cluster: "demo", role: .user)
        try await stack.waitUntil("the request to wait for the customer") { stack.privacy.requests.pending.contains { $0.requestID == request.id } }
        let (code, _, _) = try await TestProcess.run(
            Self.connector,
            ["requests", "reject", String(request.id), "--as", "carol", "--reason", "not during the change freeze", "--state-dir", stack.connectorConfig.stateDirectory])
        #expect(code == 0)
        try await stack.waitUntil("the relay to reject it") { try await stack.control.store.request(id: request.id)?.state == .rejected }
        let (status, _, stderr) = try await TestProcess.run(
            TestProcess.binary("relayctl"), ["session", "open", "--cluster", "demo", "--component", "ui"],
            environment: SessionEndPushTests.relayctlEnvironment(stack))
        #expect(status == RelayCtlExit.denied)
        #expect(stderr.contains("rejected by customer:carol@demo") && stderr.contains("not during the change freeze"), "\(stderr)")
        let (_, listed, _) = try await TestProcess.run(
            TestProcess.binary("relayctl"), ["requests", "list"], environment: SessionEndPushTests.relayctlEnvironment(stack))
        #expect(listed.contains("rejected: not during the change freeze"), "\(listed)")
        // The customer's list keeps the request's own reason, and shows theirs with the verdict.
        let (_, customers, _) = try await TestProcess.run(Self.connector, ["requests", "list", "--state-dir", stack.connectorConfig.stateDirectory])
        #expect(customers.contains("rejected: not during the change freeze") && customers.contains("test"), "\(customers)")
        #expect(!customers.contains("at the relay"), "no echo of the customer's own decision: \(customers)")
        await stack.stop()
    }
}
