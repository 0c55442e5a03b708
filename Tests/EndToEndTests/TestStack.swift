import ConfigKit
import Connector
import DemoComponentKit
import Foundation
import Logging
import NIOCore
import NIOPosix
import Relay
import RelayCtlKit
import TunnelCore

/// Development certificates made once per test run with Certs/make-dev-certs.sh (the openssl CLI).
enum TestCerts {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// The CA the relay's certificate is signed by.
    static let trusted: String = make("trusted")
    /// An unrelated CA, with its own relay certificate.
    static let other: String = make("other")

    private static func make(_ name: String) -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("relay-test-certs-\(getpid())-\(name)").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [repoRoot.appendingPathComponent("Certs/make-dev-certs.sh").path, dir]
        process.standardOutput = FileHandle.nullDevice
        try! process.run()
        process.waitUntilExit()
        precondition(process.terminationStatus == 0, "Certs/make-dev-certs.sh failed")
        return dir
    }
}

/// A relay, a connector and a demo component, all real servers on loopback port 0.
struct TestStack {
    static let clusterSecret = "cluster-secret-0123456789abcdef"
    static let expertToken = "expert-token-0123456789abcdef0123"
    static let group = MultiThreadedEventLoopGroup.singleton

    let component: DemoComponent
    let relay: RelayServer
    let relayPort: Int
    let connector: TunnelConnector

    static var quietLogger: Logger {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return logger
    }

    static func relayConfig(port: Int = 0, limits: TunnelLimits = TunnelLimits()) -> RelayConfig {
        RelayConfig(
            listenHost: "127.0.0.1", listenPort: port, certificateFile: TestCerts.trusted + "/relay.pem",
            privateKeyFile: TestCerts.trusted + "/relay.key",
            clusters: [.init(id: "demo", secret: Secret(clusterSecret)), .init(id: "other", secret: Secret("other-secret-0123456789abcdef"))],
            experts: [.init(name: "alice", token: Secret(expertToken))], limits: limits)
    }

    /// - Parameter extraComponents: name -> URL added to the connector's allowlist beside `ui`.
    static func start(extraComponents: [String: String] = [:], limits: TunnelLimits = TunnelLimits()) async throws -> TestStack {
        let component = try await DemoComponent.start(name: "ui", group: group)
        let relay = try RelayServer(config: relayConfig(limits: limits), group: group, logger: quietLogger)
        let address = try await relay.start()
        let port = address.port!
        var components = [try Component(name: "ui", url: component.url)]
        for (name, url) in extraComponents.sorted(by: { $0.key < $1.key }) { components.append(try Component(name: name, url: url)) }
        let connectorConfig = ConnectorConfig(
            clusterID: "demo", nodeID: "node-1", secret: Secret(clusterSecret),
            relayURLs: [try WebSocketURL(parsing: "wss://127.0.0.1:\(port)/v1/tunnel")], caFile: TestCerts.trusted + "/ca.pem",
            components: components, limits: limits)
        let connector = try TunnelConnector(config: connectorConfig, group: group, logger: quietLogger)
        connector.start()
        let stack = TestStack(component: component, relay: relay, relayPort: port, connector: connector)
        try await stack.waitForTunnels(1)
        return stack
    }

    /// Waits (bounded: 10 s) until the relay has `count` tunnels for cluster demo.
    func waitForTunnels(_ count: Int) async throws {
        for _ in 0..<500 {
            if self.relay.registry.tunnels(cluster: "demo").count == count { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestFailure("relay has \(self.relay.registry.tunnels(cluster: "demo").count) tunnels, expected \(count)")
    }

    func sessionTarget(component: String = "ui", token: String = expertToken, cluster: String = "demo") throws -> SessionTarget {
        SessionTarget(
            relay: try WebSocketURL(parsing: "wss://127.0.0.1:\(self.relayPort)/v1/session"), token: Secret(token), cluster: cluster,
            component: component, caFile: TestCerts.trusted + "/ca.pem")
    }

    /// What `relayctl session open` sets up: a session to the relay and a local listener on port 0.
    func openSession(component: String = "ui", cluster: String = "demo") async throws -> LocalListener {
        let session = try SessionClient(target: try self.sessionTarget(component: component, cluster: cluster), group: Self.group, logger: Self.quietLogger)
        try await session.connect()
        return try await LocalListener.start(host: "127.0.0.1", port: 0, session: session, group: Self.group)
    }

    func stop() async {
        await self.connector.stop()
        try? await self.relay.stop()
        try? await self.component.close()
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
