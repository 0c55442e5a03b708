import Foundation
import Relay
import RelayAPI
import RelayCtlKit
import RelayModel
import TestSupport
import Testing

/// An engineer whose request waits for the customer: relayctl waits with a progress line, opens
/// the session once approved, and says at once when the customer rejects it.
@Suite(.serialized) struct ApprovalWaitTests {
    static let relayctl = TestProcess.binary("relayctl")
    static let connector = TestProcess.binary("connector")

    static func pendingRequest(_ stack: TestStack) async throws -> AccessRequestRecord {
        try await stack.waitUntil("the first heartbeat") { stack.driver.answersReceived >= 1 }
        let request = try await stack.createRequest(cluster: "demo", role: .user)
        #expect(request.state == .pending)
        try await stack.waitUntil("the request to wait for the customer") { stack.privacy.requests.pending.contains { $0.requestID == request.id } }
        return request
    }

    /// `relayctl session open` on the pending request, once it shows its progress line.
    static func waitingSession(_ stack: TestStack, _ request: AccessRequestRecord) async throws -> RunningProcess {
        let session = try RunningProcess(
            Self.relayctl, ["session", "open", "--cluster", "demo", "--component", "ui", "--wait", "5m"],
            environment: SessionEndPushTests.relayctlEnvironment(stack))
        let line = "waiting for the customer to approve request \(request.id) (approvedOnly)..."
        try await stack.waitUntil("relayctl's progress line") { session.stderr.contains(line) || !session.isRunning }
        return session
    }

    static func customer(_ stack: TestStack, _ arguments: [String]) async throws {
        let (code, _, stderr) = try await TestProcess.run(
            Self.connector, ["requests"] + arguments + ["--as", "carol", "--state-dir", stack.connectorConfig.stateDirectory])
        #expect(code == 0, "\(stderr)")
    }

    @Test func sessionOpenWaitsForTheCustomersApprovalThenOpens() async throws {
        let stack = try await TestStack.start(mode: .approvedOnly, approve: false)
        let request = try await Self.pendingRequest(stack)
        let session = try await Self.waitingSession(stack, request)
        defer { session.terminate() }
        #expect(session.isRunning, "\(session.stderr)")
        #expect(!session.stderr.contains("\r"), "stderr is a pipe: whole lines, nothing redrawn")
        #expect(stack.relay.sessions.all.isEmpty)

        try await Self.customer(stack, ["approve", String(request.id)])
        try await stack.waitUntil("the session to open") { session.stdout.contains("session open: cluster demo") || !session.isRunning }
        #expect(session.stdout.contains("role user, request \(request.id)"), "\(session.stdout) \(session.stderr)")
        #expect(stack.relay.sessions.all.count == 1)
        session.terminate()
        #expect(await session.exitStatus() == 0)
        await stack.stop()
    }

    @Test func aRejectionEndsTheWaitAtOnceWithTheCustomersReason() async throws {
        let stack = try await TestStack.start(mode: .approvedOnly, approve: false)
        let request = try await Self.pendingRequest(stack)
        let session = try await Self.waitingSession(stack, request)
        defer { session.terminate() }
        try await Self.customer(stack, ["reject", String(request.id), "--reason", "not during the change freeze"])
        // Bounded well below --wait: the exit comes from the rejection, not from giving up.
        let status = await session.exitStatus(seconds: 60)
        #expect(status == RelayCtlExit.denied, "\(session.stderr)")
        #expect(session.stderr.contains("request \(request.id) was rejected by customer:carol@demo: not during the change freeze"), "\(session.stderr)")
        await stack.stop()
    }

    @Test func aRequestLeftUndecidedExpiresAndTheWaitEndsSayingSo() async throws {
        let stack = try await TestStack.start(mode: .approvedOnly, approve: false, relay: { $0.pendingRequestTTLSeconds = 600 })
        let request = try await Self.pendingRequest(stack)
        let session = try await Self.waitingSession(stack, request)
        defer { session.terminate() }
        stack.clock.advance(seconds: 601)  // the relay's clock: its reconciler expires the request
        let status = await session.exitStatus(seconds: 60)
        #expect(status == RelayCtlExit.denied, "\(session.stderr)")
        #expect(session.stderr.contains("request \(request.id) expired at ") && session.stderr.contains("the customer did not decide within 10 min"), "\(session.stderr)")
        await stack.stop()
    }

    @Test func requestsCreateWaitsForTheDecisionOrGivesUp() async throws {
        let stack = try await TestStack.start(mode: .approvedOnly, approve: false)
        try await stack.waitUntil("the first heartbeat") { stack.driver.answersReceived >= 1 }
        let environment = SessionEndPushTests.relayctlEnvironment(stack)
        let create = ["requests", "create", "--cluster", "demo", "--reason", "disk alert", "--role", "user"]
        // Still pending when the wait ends: exit 7, saying who can approve it.
        let (gaveUp, _, gaveUpError) = try await TestProcess.run(Self.relayctl, create + ["--wait", "1s"], environment: environment)
        #expect(gaveUp == RelayCtlExit.timedOut, "\(gaveUpError)")
        #expect(gaveUpError.contains("is still pending the customer's approval") && gaveUpError.contains("connector requests approve"), "\(gaveUpError)")

        let waiting = try RunningProcess(Self.relayctl, create + ["--wait", "5m", "--json"], environment: environment)
        defer { waiting.terminate() }
        try await stack.waitUntil("relayctl's progress line") { waiting.stderr.contains("waiting for the customer to approve request") || !waiting.isRunning }
        let pending = try #require(try await stack.control.store.requests(clusterID: "demo", states: [.pending]).max { $0.id < $1.id })
        try await stack.waitUntil("the connector to list it") { stack.privacy.requests.pending.contains { $0.requestID == pending.id } }
        try await Self.customer(stack, ["approve", String(pending.id)])
        #expect(await waiting.exitStatus(seconds: 60) == 0, "\(waiting.stderr)")
        let printed = try APIJSON.decoder().decode(AccessRequestRecord.self, from: Data(waiting.stdout.utf8))
        #expect(printed.id == pending.id && printed.state == .approved && printed.changedBy == "customer:carol@demo")

        // Rejected while waiting: exit 4, and a script still gets the request as it ended.
        let rejected = try RunningProcess(Self.relayctl, create + ["--wait", "5m", "--json"], environment: environment)
        defer { rejected.terminate() }
        try await stack.waitUntil("relayctl's progress line") { rejected.stderr.contains("waiting for the customer to approve request") || !rejected.isRunning }
        let next = try #require(try await stack.control.store.requests(clusterID: "demo", states: [.pending]).max { $0.id < $1.id })
        try await stack.waitUntil("the connector to list it") { stack.privacy.requests.pending.contains { $0.requestID == next.id } }
        try await Self.customer(stack, ["reject", String(next.id), "--reason", "use the runbook"])
        #expect(await rejected.exitStatus(seconds: 60) == RelayCtlExit.denied, "\(rejected.stderr)")
        let ended = try APIJSON.decoder().decode(AccessRequestRecord.self, from: Data(rejected.stdout.utf8))
        #expect(ended.id == next.id && ended.state == .rejected && ended.endReason == "use the runbook")
        #expect(rejected.stderr.contains("rejected by customer:carol@demo: use the runbook"), "\(rejected.stderr)")
        await stack.stop()
    }
}
