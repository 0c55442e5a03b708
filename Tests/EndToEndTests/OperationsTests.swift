import ConfigKit
import Connector
import DemoComponentKit
import Foundation
import NIOConcurrencyHelpers
import Relay
import RelayAPI
import RelayCtlKit
import RelayModel
import Testing
import TunnelCore

/// Several relay URLs, session kill, and relayctl's output and exit codes.
@Suite(.serialized) struct OperationsTests {
    @Test func theConnectorKeepsOneTunnelPerRelayURLAndRedialsALostOne() async throws {
        let stack = try await TestStack.start { config in config.allowedRelayHosts = ["localhost"] }
        // Two "relay nodes" (the same relay under two names its certificate covers).
        stack.control.tunnelURLs = ["wss://127.0.0.1:\(stack.relayPort)/v1/tunnel", "wss://localhost:\(stack.relayPort)/v1/tunnel"]
        try await stack.waitForTunnels(2)
        // The relay registers a tunnel a moment before the connector's dial completes.
        try await stack.waitUntil("the connector to count both tunnels") { stack.connector.connectedURLs.count == 2 }
        // One node drops its tunnel: the connector redials it with backoff while the flag is set.
        let dropped = stack.relay.registry.tunnels(cluster: "demo")[0]
        try await dropped.channel.close()
        // The redial may come before a poll could see one tunnel: wait for two again, the dropped one not among them.
        try await stack.waitUntil("the lost tunnel to be redialed") {
            let tunnels = stack.relay.registry.tunnels(cluster: "demo")
            return tunnels.count == 2 && !tunnels.contains { $0.id == dropped.id }
        }
        await stack.stop()
    }

    /// A node that dials again while the relay still holds its old tunnel (half-open, or a
    /// connector that restarted) replaces it at once, not when keepalive notices.
    @Test func aNewerTunnelFromTheSameNodeReplacesTheOlderAtOnce() async throws {
        let stack = try await TestStack.start()
        let original = try #require(stack.relay.registry.tunnels(cluster: "demo").first)
        // The same node again: a restarted connector (same credential, its own state).
        var config = stack.connectorConfig
        config.stateDirectory = TestStack.temporaryDirectory("restarted-state")
        config.audit = AuditSettings(directory: config.stateDirectory + "/audit")
        let restarted = try await TestStack.startConnector(config: config, credential: stack.credential, clock: stack.clock)
        try await stack.waitUntil("the newer tunnel to replace the older") {
            let tunnels = stack.relay.registry.tunnels(cluster: "demo")
            return tunnels.count == 1 && tunnels[0].id != original.id
        }
        try await original.channel.closeFuture.get()
        #expect(stack.relay.registry.tunnels(cluster: "demo").count == 1, "one tunnel per node and relay URL")
        await restarted.services.stop()
        await stack.stop()
    }

    /// A relay (or whoever took it over) cannot send the tunnels anywhere the customer did not allow.
    @Test func tunnelURLsOfOtherHostsAreNotDialed() async throws {
        let stack = try await TestStack.start()
        let real = "wss://127.0.0.1:\(stack.relayPort)/v1/tunnel"
        // localhost is the same relay, but not a host the customer listed.
        stack.control.tunnelURLs = ["wss://localhost:\(stack.relayPort)/v1/tunnel", real, "wss://evil.example:443/v1/tunnel"]
        let answers = stack.driver.answersReceived
        try await stack.waitUntil("two more heartbeat answers") { stack.driver.answersReceived >= answers + 2 }
        #expect(stack.driver.wantedTunnelURLs == [real], "only the configured relay host is dialed")
        #expect(stack.connector.connectedURLs == [real])
        await stack.stop()
    }

    @Test func aClusterWithTwoNodesServesAnyNodeOrTheChosenOne() async throws {
        let stack = try await TestStack.start()
        // A second node of cluster demo: its own enrollment token, credential and component.
        let ops = try await stack.control.authenticateUser(bearer: stack.opsToken, action: "test")
        let enrollment = try await stack.control.enroll(cluster: "demo", by: ops)
        let component = try await DemoComponent.start(name: "ui-on-node-2", group: TestStack.group)
        var config = stack.connectorConfig
        config.nodeID = "node-2"
        config.credentialFile = TestStack.temporaryDirectory("node2") + "/credential.json"
        config.components = [try Component(name: "ui", url: component.url)]
        config.stateDirectory = TestStack.temporaryDirectory("node2-state")
        config.audit = AuditSettings(directory: config.stateDirectory + "/audit")
        let credential = try await ConnectorRegistration.register(
            config: config, enrollmentToken: enrollment.enrollmentToken, group: TestStack.group, logger: TestStack.quietLogger)
        #expect(credential.nodeID == "node-2" && credential.clusterID == "demo")
        let node2 = try await TestStack.startConnector(config: config, credential: credential, clock: stack.clock)
        try await stack.waitForTunnels(2)

        func components(node: String?) async throws -> Set<String> {
            let client = try SessionClient(
                target: SessionTarget(
                    relay: try WebSocketURL(parsing: "wss://127.0.0.1:\(stack.relayPort)/v1/session"), token: Secret(stack.expertToken),
                    cluster: "demo", component: "ui", node: node, caFile: TestCerts.trusted + "/ca.pem"),
                group: TestStack.group, logger: TestStack.quietLogger)
            try await client.connect()
            let listener = try await LocalListener.startConduit(host: "127.0.0.1", port: 0, session: client, group: TestStack.group)
            var seen: Set<String> = []
            for _ in 0..<6 {
                let text = try await TestHTTPConnection.request(port: listener.localAddress!.port!, .GET, "/api/status").text
                seen.insert(text.contains("ui-on-node-2") ? "node-2" : "node-1")
            }
            try await listener.close()
            return seen
        }
        #expect(try await components(node: nil) == ["node-1", "node-2"], "round robin over the cluster's nodes")
        #expect(try await components(node: "node-2") == ["node-2"])
        #expect(try await components(node: "node-1") == ["node-1"])
        await node2.services.stop()
        try await component.close()
        await stack.stop()
    }

    @Test func anOperatorKillsASessionAndTheEngineerIsToldWho() async throws {
        let stack = try await TestStack.start()
        let ended = NIOLockedValueBox<WebSocketPeerClosed?>(nil)
        let client = try SessionClient(target: try stack.sessionTarget(), group: TestStack.group, logger: TestStack.quietLogger) { closed in
            ended.withLockedValue { $0 = closed }
        }
        try await client.connect()
        try await stack.waitUntil("the session record") { try await stack.control.store.sessions(live: true).count == 1 }
        let live = try await stack.control.store.sessions(live: true)[0]
        let killed: SessionRecord = try await stack.api().post("\(APIPath.sessions)/\(live.id)/kill", [String: String]())
        #expect(killed.killRequestedBy == "ops:root")
        let started = ContinuousClock.now
        try await stack.waitUntil("the kill") { ended.withLockedValue { $0 } != nil }
        #expect(ContinuousClock.now - started < .seconds(SessionEndPushTests.pushBoundSeconds))
        #expect(ended.withLockedValue { $0 }?.reason == "session killed by ops:root")
        #expect(stack.relay.registry.count == 1, "killing a session leaves the tunnel")
        await stack.stop()
    }

    /// The relayctl binary built beside the test bundle.
    static var relayctl: String { TestProcess.binary("relayctl") }

    func run(_ arguments: [String], token: String?, port: Int) async throws -> (Int32, String, String) {
        try await TestProcess.run(
            Self.relayctl, arguments + ["--relay", "https://127.0.0.1:\(port)", "--ca", TestCerts.trusted + "/ca.pem"],
            environment: ["RELAYCTL_TOKEN": token])
    }

    @Test func relayctlPrintsTablesOrJSONAndExitsWithDocumentedCodes() async throws {
        guard FileManager.default.isExecutableFile(atPath: Self.relayctl) else {
            Issue.record("relayctl is not built at \(Self.relayctl)")
            return
        }
        let stack = try await TestStack.start()
        let port = stack.relayPort
        let (listCode, table, _) = try await self.run(["requests", "list"], token: stack.opsToken, port: port)
        #expect(listCode == RelayCtlExit.ok)
        #expect(table.hasPrefix("ID  CLUSTER  EXPERT"))
        #expect(table.contains("alice") && table.contains("approved"))
        let (jsonCode, json, _) = try await self.run(["requests", "list", "--json"], token: stack.opsToken, port: port)
        #expect(jsonCode == RelayCtlExit.ok)
        let requests = try APIJSON.decoder().decode([AccessRequestRecord].self, from: Data(json.utf8))
        #expect(requests.map(\.state) == [.approved])

        let (created, createdOut, _) = try await self.run(["tokens", "create", "--name", "dave", "--role", "expert", "--json"], token: stack.opsToken, port: port)
        #expect(created == RelayCtlExit.ok)
        let secret = try APIJSON.decoder().decode(TokenCreated.self, from: Data(createdOut.utf8)).secret
        let (tokens, tokenList, _) = try await self.run(["tokens", "list"], token: stack.opsToken, port: port)
        #expect(tokens == RelayCtlExit.ok && tokenList.contains("dave") && !tokenList.contains(secret))

        let cases: [([String], String?, Int32, String)] = [
            (["requests", "revoke", "999"], stack.opsToken, RelayCtlExit.notFound, "no access request 999"),
            (["tokens", "list"], "rat_forged", RelayCtlExit.denied, "invalid credentials"),
            (["tokens", "list"], stack.expertToken, RelayCtlExit.denied, "needs an ops token"),
            (["clusters", "add", "demo"], stack.opsToken, RelayCtlExit.conflict, "already exists"),
            (["requests", "create", "--cluster", "demo", "--reason", "x", "--duration", "1000d"], stack.expertToken, RelayCtlExit.badRequest, "duration must be"),
            (["session", "open", "--cluster", "demo", "--component", "ui", "--role", "admin"], secret, RelayCtlExit.denied, "no access request for cluster \"demo\" names you"),
        ]
        for (arguments, token, code, message) in cases {
            let (status, _, stderr) = try await self.run(arguments, token: token, port: port)
            #expect(status == code, "\(arguments): \(stderr)")
            #expect(stderr.contains(message), "\(arguments): \(stderr)")
        }
        // Approved, but the cluster's connector never dials: session open waits, showing progress, then gives up.
        let other = try await stack.createRequest(cluster: "other", role: .viewer)
        _ = try await stack.control.approve(other, by: "test", now: stack.clock.now())
        let (waited, _, waitErr) = try await self.run(
            ["session", "open", "--cluster", "other", "--component", "ui", "--wait", "2s"], token: stack.expertToken, port: port)
        #expect(waited == RelayCtlExit.timedOut, "\(waitErr)")
        #expect(waitErr.contains("waiting for the connector to dial in"))
        #expect(waitErr.contains("gave up after 2 s"))

        let (unreachable, _, stderr) = try await self.run(["tokens", "list"], token: stack.opsToken, port: 1)
        #expect(unreachable == RelayCtlExit.unreachable)
        #expect(stderr.contains("check --relay"))
        await stack.stop()
    }
}
