import Connector
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Relay
import TestSupport
import Testing
import TunnelCore

/// Customers' networks often let nothing out but an HTTP proxy. The connector reaches the relay
/// through one (CONNECT), a real tinyproxy from Debian here, for heartbeats and tunnels alike.
@Suite(.serialized) struct ProxyTests {
    @Test func theConnectorReachesTheRelayThroughItsHTTPProxyForHeartbeatsAndTunnels() async throws {
        let proxy = try await TinyProxy.start()
        defer { proxy.stop() }
        // As `relay.proxy: environment` reads it, with the relay not in NO_PROXY. By name: `localhost`
        // is ::1 and 127.0.0.1, and tinyproxy listens on the second only (each attempt has its own answer).
        let fromEnvironment = try #require(
            try OutboundProxy.fromEnvironment(["HTTPS_PROXY": "http://localhost:\(proxy.port)", "NO_PROXY": "relay.lan,.internal"]))
        #expect(fromEnvironment.noProxy == ["relay.lan", ".internal"] && fromEnvironment.applies(to: "127.0.0.1"))
        let stack = try await TestStack.start { config in config.proxy = fromEnvironment }
        let session = try await stack.openSession()
        #expect(try await TestHTTPConnection.request(port: session.localAddress!.port!, .GET, "/api/status").status == .ok)
        // Registration, heartbeats and the tunnel each asked the proxy for the relay.
        #expect(proxy.connects(to: "127.0.0.1:\(stack.relayPort)") >= 3, "\(proxy.output)")

        // The tunnel runs inside the proxy: when the proxy dies the tunnel drops, and the redial says why.
        proxy.kill()
        try await stack.waitForTunnels(0)
        try await stack.waitUntil("a redial that names the proxy") {
            stack.connector.lastErrors.values.contains { $0.contains("cannot reach the proxy http://localhost:\(proxy.port)") }
        }
        try await session.close()
        await stack.stop()
    }

    /// A proxy that refuses CONNECT to the relay's port, or wants credentials: the error names the
    /// proxy and what to do, `connector status` shows it, the next attempt waits for the retry
    /// interval (no hammering), and with the right credentials everything works.
    @Test func aProxyThatRefusesOrWantsCredentialsIsNamedAndTheRightCredentialsWork() async throws {
        let stack = try await TestStack.start(approve: false)
        await stack.connectorServices.stop()
        var config = stack.connectorConfig
        config.heartbeat = HeartbeatStateMachine.Configuration()  // retry after 10 s

        let refusing = try await TinyProxy.start(connectPorts: [443])
        defer { refusing.stop() }
        let clock = ManualClock()
        config.proxy = OutboundProxy(host: "127.0.0.1", port: refusing.port)
        var connector = try await TestStack.startConnector(config: config, credential: stack.credential, clock: stack.clock, timers: clock)
        try await stack.waitUntil("the heartbeat to fail") { connector.runtime.driver.lastFailure != nil }
        let refused = connector.runtime.driver.lastFailure ?? ""
        #expect(refused.contains("the proxy http://127.0.0.1:\(refusing.port) refused CONNECT to 127.0.0.1:\(stack.relayPort): 403"), "\(refused)")
        try await ConnectorTimerTests.untilSleeping(clock, .seconds(10))
        let attempts = refusing.connects(to: "127.0.0.1:\(stack.relayPort)")
        #expect(attempts == 1, "one attempt, then the retry interval: \(refusing.output)")
        clock.advance(by: .seconds(10))
        try await stack.waitUntil("the retry") { refusing.connects(to: "127.0.0.1:\(stack.relayPort)") == 2 }
        await connector.services.stop()

        let password = "pr0xy-s3cret-\(UUID().uuidString.prefix(8))"
        let guarded = try await TinyProxy.start(basicAuth: ("svc-connector", password))
        defer { guarded.stop() }
        var answers: [String] = []
        for credentials in [nil, ("svc-connector", "wrong-password")] as [(String, String)?] {
            config.proxy = OutboundProxy(host: "127.0.0.1", port: guarded.port, username: credentials?.0, password: credentials?.1)
            connector = try await TestStack.startConnector(config: config, credential: stack.credential, clock: stack.clock)
            try await stack.waitUntil("the heartbeat to fail") { connector.runtime.driver.lastFailure != nil }
            answers.append(connector.runtime.driver.lastFailure ?? "")
            await connector.services.stop()
        }
        #expect(answers[0].contains("the proxy http://127.0.0.1:\(guarded.port) requires authentication (407)"), "\(answers[0])")
        #expect(answers[1].contains("refused the credentials") && answers[1].contains("basic auth as svc-connector"), "\(answers[1])")
        #expect(!answers.joined().contains("wrong-password"), "a password never appears in an error")

        config.proxy = OutboundProxy(host: "127.0.0.1", port: guarded.port, username: "svc-connector", password: password)
        connector = try await TestStack.startConnector(config: config, credential: stack.credential, clock: stack.clock)
        try await stack.waitUntil("a heartbeat through the proxy") { connector.runtime.driver.answersReceived > 0 }
        _ = try await stack.createRequest(cluster: "demo", role: .admin)
        connector.runtime.driver.heartbeatNow()
        try await stack.waitUntil("the tunnel through the proxy") { stack.relay.registry.tunnels(cluster: "demo").count == 1 }
        #expect(guarded.connects(to: "127.0.0.1:\(stack.relayPort)") >= 2, "heartbeat and tunnel went through the proxy")
        let session = try await stack.openSession()
        #expect(try await TestHTTPConnection.request(port: session.localAddress!.port!, .GET, "/api/status").status == .ok)
        try await session.close()
        await connector.services.stop()
        await stack.stop()
    }
}

/// tinyproxy (Debian's package) in the foreground on a free loopback port.
final class TinyProxy: Sendable {
    static let binary = "/usr/bin/tinyproxy"
    let port: Int
    private let process: RunningProcess

    private init(port: Int, process: RunningProcess) {
        self.port = port
        self.process = process
    }

    /// - Parameters:
    ///   - connectPorts: the only ports CONNECT may reach (empty: any).
    ///   - basicAuth: the user and password it requires.
    static func start(connectPorts: [Int] = [], basicAuth: (String, String)? = nil) async throws -> TinyProxy {
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw TestFailure("tinyproxy is not installed (apt-get install tinyproxy, as .ci/run does)")
        }
        let port = try await FaultTests.freePort()
        let folder = TestStack.temporaryDirectory("tinyproxy")
        var lines = ["Port \(port)", "Listen 127.0.0.1", "Timeout 600", "LogLevel Connect", "MaxClients 200", "Allow 127.0.0.1"]
        lines += connectPorts.map { "ConnectPort \($0)" }
        if let (user, password) = basicAuth { lines.append("BasicAuth \(user) \(password)") }
        try lines.joined(separator: "\n").write(toFile: folder + "/tinyproxy.conf", atomically: true, encoding: .utf8)
        let process = try RunningProcess(binary, ["-d", "-c", folder + "/tinyproxy.conf"])
        guard try await TestWait.poll({ await RelayDrainTests.accepts(port: port) }) else {
            process.terminate()
            throw TestFailure("tinyproxy did not start: \(process.stdout) \(process.stderr)")
        }
        return TinyProxy(port: port, process: process)
    }

    var output: String { self.process.stdout + self.process.stderr }

    /// CONNECT requests it received for `target` (host:port).
    func connects(to target: String) -> Int {
        self.output.components(separatedBy: "\n").filter { $0.contains("Request") && $0.contains("CONNECT \(target) ") }.count
    }

    func stop() { self.process.terminate() }
    /// SIGKILL: every connection through it drops at once.
    func kill() { self.process.killNow() }
}
