import Connector
import Foundation
import NIOPosix
import Relay
import RelayAPI
import RelayCtlKit
import RelayModel
import Testing
import TunnelCore

/// What a support engineer sees through relayctl: the components a cluster offers, a banner that
/// says what the session runs under, refusals that name the customer's setting, and errors that
/// are one line saying what to do.
@Suite(.serialized) struct EngineerViewTests {
    static let relayctl = TestProcess.binary("relayctl")

    @Test func theEngineerSeesTheComponentsAndAnUnknownOneIsRefusedUpFront() async throws {
        let stack = try await TestStack.start(extraComponents: ["api": "http://127.0.0.1:9"])
        let environment = SessionEndPushTests.relayctlEnvironment(stack)
        let (showCode, shown, _) = try await TestProcess.run(Self.relayctl, ["clusters", "show", "demo"], environment: environment)
        #expect(showCode == 0 && shown.contains("components: api, ui"), "\(shown)")
        // Names only: the connector's addresses never leave the cluster.
        #expect(!shown.contains("127.0.0.1:9"))

        let (code, _, err) = try await TestProcess.run(
            Self.relayctl, ["session", "open", "--cluster", "demo", "--component", "nosuch"], environment: environment)
        #expect(code == RelayCtlExit.notFound)
        #expect(err.contains("cluster \"demo\" offers no component \"nosuch\"; it offers api, ui"), "\(err)")
        #expect(err.split(separator: "\n").count == 1, "\(err)")
        await stack.stop()
    }

    @Test func theBannerShowsRoleRequestAndExpiry() async throws {
        let stack = try await TestStack.start()
        let request = try #require(try await stack.control.store.requests(clusterID: "demo", states: [.approved]).first)
        let session = try RunningProcess(
            Self.relayctl, ["session", "open", "--cluster", "demo", "--component", "ui", "--role", "viewer"],
            environment: SessionEndPushTests.relayctlEnvironment(stack))
        defer { session.terminate() }
        try await stack.waitUntil("the banner") { session.stdout.contains("open http://") }
        let banner = session.stdout
        #expect(banner.contains("session open: cluster demo, component ui, role viewer, request \(request.id), until "), "\(banner)")
        #expect(banner.contains(HumanFormat.time(request.expiresAt)), "\(banner)")
        session.terminate()
        #expect(await session.exitStatus() == 0)
        await stack.stop()
    }

    @Test func aRefusalCausedByTheCustomersModeNamesTheMode() async throws {
        let stack = try await TestStack.start(mode: .readOnly)
        let listener = try await stack.openSession()
        let refused = try await TestHTTPConnection.request(port: listener.localAddress!.port!, .POST, "/upload", body: [1])
        #expect(refused.status == .forbidden && refused.headers.first(name: WireHeader.error) == "role_forbids_method")
        #expect(refused.text.contains("the customer's privacy mode readOnly lets every session read only"), "\(refused.text)")
        try await listener.close()
        await stack.stop()
    }

    /// Library errors mapped to one line that says what to check; usage text only for usage errors;
    /// waiting progress redrawn only on a terminal.
    @Test func relayctlErrorsAreOneHumanLine() async throws {
        let stack = try await TestStack.start(approve: false)
        var environment = SessionEndPushTests.relayctlEnvironment(stack)
        environment["RELAYCTL_TOKEN"] = stack.opsToken

        // A relay whose certificate the given CA did not sign.
        let (tlsCode, _, tlsError) = try await TestProcess.run(
            Self.relayctl, ["clusters", "list", "--ca", TestCerts.other + "/ca.pem"], environment: environment)
        #expect(tlsCode == RelayCtlExit.unreachable)
        #expect(tlsError.contains("not signed by the configured CA"), "\(tlsError)")
        for text in ["BoringSSL", "SingleConnectionFailure", "NIOSSL", "Usage:", ".build"] { #expect(!tlsError.contains(text), "\(tlsError)") }
        #expect(tlsError.split(separator: "\n").count == 1, "\(tlsError)")

        // Nothing listening.
        let closed = try await ServerBootstrap(group: TestStack.group).bind(host: "127.0.0.1", port: 0).get()
        let deadPort = closed.localAddress!.port!
        try await closed.close()
        let (downCode, _, downError) = try await TestProcess.run(
            Self.relayctl, ["clusters", "list", "--relay", "https://127.0.0.1:\(deadPort)"], environment: environment)
        #expect(downCode == RelayCtlExit.unreachable && downError.contains("connection refused"), "\(downError)")
        for text in ["SingleConnectionFailure", "NIOConnectionError", "Usage:"] { #expect(!downError.contains(text), "\(downError)") }
        #expect(downError.split(separator: "\n").count == 1, "\(downError)")

        // No token: not a usage error either.
        environment["RELAYCTL_TOKEN"] = nil
        let (noTokenCode, _, noTokenError) = try await TestProcess.run(Self.relayctl, ["clusters", "list"], environment: environment)
        #expect(noTokenCode == RelayCtlExit.failure && noTokenError.contains("set RELAYCTL_TOKEN") && !noTokenError.contains("Usage"))

        // Waiting for a connector, stderr a pipe: plain lines, no carriage returns.
        let ops = try await stack.control.authenticateUser(bearer: stack.opsToken, action: "test")
        let pending = try await stack.control.createRequest(
            CreateAccessRequest(clusterID: "other", expert: "alice", reason: "test", role: .viewer, durationSeconds: 3600), by: ops)
        _ = try await stack.control.approve(pending, by: "test", now: stack.control.now)
        environment["RELAYCTL_TOKEN"] = stack.expertToken
        let (waitCode, _, waitError) = try await TestProcess.run(
            Self.relayctl, ["session", "open", "--cluster", "other", "--component", "ui", "--wait", "2s"], environment: environment)
        #expect(waitCode == RelayCtlExit.timedOut)
        #expect(waitError.contains("waiting for the connector to dial in") && !waitError.contains("\r"), "\(waitError)")
        await stack.stop()
    }

    /// The README documents relayctl's defaults and environment (its first screen is what people read).
    @Test func theReadmeDocumentsRelayctlsEnvironment() throws {
        let readme = try String(contentsOfFile: TestCerts.repoRoot.appendingPathComponent("README.md").path, encoding: .utf8)
        for name in ["RELAYCTL_RELAY", "RELAYCTL_CA", "RELAYCTL_TOKEN", "RELAYCTL_TOKEN_FILE", "~/.config/relayctl/ca.pem"] {
            #expect(readme.contains(name), "README names \(name)")
        }
    }
}
