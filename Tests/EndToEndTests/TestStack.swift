import ConfigKit
import Connector
import DemoComponentKit
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOConcurrencyHelpers
import Relay
import RelayAPI
import RelayCtlKit
import RelayModel
import TestSupport
import TunnelCore

/// Development certificates made once per test run with Certs/make-dev-certs.sh (the openssl CLI).
enum TestCerts {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// The CA the relay's certificate is signed by.
    static let trusted: String = make("trusted")
    /// An unrelated CA, with its own relay certificate.
    static let other: String = make("other")

    /// - Parameter extraSAN: more names for the relay's certificate (`IP:10.0.0.1`).
    static func make(_ name: String, extraSAN: String? = nil) -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("relay-test-certs-\(getpid())-\(name)").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [repoRoot.appendingPathComponent("Certs/make-dev-certs.sh").path, dir]
        if let extraSAN { process.environment = ProcessInfo.processInfo.environment.merging(["EXTRA_SAN": extraSAN]) { $1 } }
        process.standardOutput = FileHandle.nullDevice
        try! process.run()
        process.waitUntilExit()
        precondition(process.terminationStatus == 0, "Certs/make-dev-certs.sh failed")
        return dir
    }
}

/// The clock of relay and connector in tests: real time plus an offset tests move forward (request
/// expiry), or, once frozen, a time that moves only when the test says.
final class TestClock: Sendable {
    private let state = NIOLockedValueBox<(offset: TimeInterval, frozen: Date?)>((0, nil))
    func now() -> Date { self.state.withLockedValue { ($0.frozen ?? Date()).addingTimeInterval($0.offset) } }
    func advance(seconds: TimeInterval) { self.state.withLockedValue { $0.offset += seconds } }

    /// Stops the clock at the start of the next minute plus one second (counts per minute stay in one minute).
    func freezeAtNextMinute() {
        self.state.withLockedValue { state in
            let now = Date().addingTimeInterval(state.offset)
            let next = (now.timeIntervalSince1970 / 60).rounded(.down) * 60 + 61
            state.frozen = Date(timeIntervalSince1970: next)
            state.offset = 0
        }
    }
}

/// A relay (embedded store in a temporary folder), a registered connector and a demo component,
/// all real servers on loopback port 0. By default alice's admin request for cluster demo is
/// approved and the tunnel is up when `start` returns.
struct TestStack {
    static let group = MultiThreadedEventLoopGroup.singleton
    /// Heartbeat interval of test connectors (the "shortened interval").
    static let heartbeatMilliseconds: Int64 = 200

    /// The limits of test stacks: the defaults, but 60 s for a TLS handshake and upgrade on both
    /// sides (a machine loaded with a build beside the tests took over 10 s once). Tests of the
    /// handshake deadline drive it with `Deadlines.Manual` instead.
    static var limits: TunnelLimits {
        var limits = TunnelLimits()
        limits.handshakeTimeout = .seconds(60)
        return limits
    }

    let component: DemoComponent
    let relay: RelayServer
    let relayPort: Int
    let clock: TestClock
    let dataDirectory: String
    /// Secrets issued by the relay during set-up.
    let opsToken: String
    let expertToken: String
    let credential: ConnectorCredential
    let runtime: ConnectorRuntime
    /// The connector's services, running as `connector run` runs them.
    let connectorServices: RunningServices
    let connectorConfig: ConnectorConfig
    /// The relay's services (store, reconciler, listener), running as `relay` runs them.
    let relayServices: RunningServices

    var connector: TunnelConnector { self.runtime.tunnels }
    var driver: HeartbeatDriver { self.runtime.driver }
    var privacy: PrivacyGuard { self.runtime.privacy }

    static var quietLogger: Logger {
        var logger = Logger(label: "test")
        // TEST_LOG_LEVEL=debug swift test --filter ... shows what the programs log.
        logger.logLevel = ProcessInfo.processInfo.environment["TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .critical
        return logger
    }

    var control: MissionControl { self.relay.control }

    static func temporaryDirectory(_ name: String) -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("relay-test-\(getpid())-\(name)-\(UUID().uuidString.prefix(8))").path
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Connectors redial within 100 ms of a drop (tests of the spread set their own window).
    static func relayConfig(dataDirectory: String, limits: TunnelLimits = TestStack.limits, reconcileMilliseconds: Int64 = 100) -> RelayConfig {
        var config = RelayConfig(
            listenHost: "127.0.0.1", listenPort: 0, certificateFile: TestCerts.trusted + "/relay.pem",
            privateKeyFile: TestCerts.trusted + "/relay.key", dataDirectory: dataDirectory, reconcileIntervalMilliseconds: reconcileMilliseconds,
            limits: limits)
        config.reconnectSpreadMilliseconds = 100
        return config
    }

    /// A relay alone (no connector: its requests would have to beat short test deadlines too),
    /// its services running as `relay` runs them; `services.stop()` stops it.
    static func relayAlone(
        limits: TunnelLimits = TestStack.limits, handshakeDeadlines: Deadlines = .eventLoop,
        configure: (inout RelayConfig) -> Void = { _ in }
    ) async throws -> (relay: RelayServer, port: Int, services: RunningServices) {
        var config = relayConfig(dataDirectory: temporaryDirectory("relay"), limits: limits)
        configure(&config)
        let control = try RelayServer.openEmbeddedControl(config: config, logger: quietLogger)
        let relay = try RelayServer(config: config, control: control, group: group, logger: quietLogger, handshakeDeadlines: handshakeDeadlines)
        let port = try await relay.start().port!
        return (relay, port, RunningServices(relay.services, logger: quietLogger))
    }

    /// - Parameters:
    ///   - extraComponents: name -> URL added to the connector's allowlist beside `ui`.
    ///   - approve: create and (with mode `all`) auto-approve alice's admin request, then wait for the tunnel.
    static func start(
        extraComponents: [String: String] = [:], limits: TunnelLimits = TestStack.limits, mode: PrivacyMode = .all, approve: Bool = true,
        handshakeDeadlines: Deadlines = .eventLoop, upstreamDeadlines: Deadlines = .eventLoop, drainDeadlines: Deadlines = .eventLoop,
        reconcileMilliseconds: Int64 = 100,
        timers: any Clock<Duration> = ContinuousClock(), relay configureRelay: (inout RelayConfig) -> Void = { _ in },
        configure: (inout ConnectorConfig) -> Void = { _ in }, configPath: String? = nil
    ) async throws -> TestStack {
        let component = try await DemoComponent.start(name: "ui", group: group)
        let clock = TestClock()
        let dataDirectory = temporaryDirectory("relay")
        var config = relayConfig(dataDirectory: dataDirectory, limits: limits, reconcileMilliseconds: reconcileMilliseconds)
        configureRelay(&config)
        let control = try RelayServer.openEmbeddedControl(config: config, logger: quietLogger, clock: { clock.now() })
        let relay = try RelayServer(
            config: config, control: control, group: group, logger: quietLogger, handshakeDeadlines: handshakeDeadlines, drainDeadlines: drainDeadlines)
        let port = try await relay.start().port!
        let relayServices = RunningServices(relay.services, logger: quietLogger)

        let ops = try await control.createToken(CreateTokenRequest(name: "root", role: .ops, ttlSeconds: nil), by: nil)
        let opsRecord = try await control.authenticateUser(bearer: ops.secret, action: "test")
        let expert = try await control.createToken(CreateTokenRequest(name: "alice", role: .expert, ttlSeconds: nil), by: opsRecord)
        let enrollment = try await control.addCluster(CreateClusterRequest(id: "demo", description: "test cluster"), by: opsRecord)
        _ = try await control.addCluster(CreateClusterRequest(id: "other", description: "no connector"), by: opsRecord)

        var components = [try Component(name: "ui", url: component.url)]
        for (name, url) in extraComponents.sorted(by: { $0.key < $1.key }) { components.append(try Component(name: name, url: url)) }
        var heartbeat = HeartbeatStateMachine.Configuration()
        heartbeat.enabledIntervalMilliseconds = heartbeatMilliseconds
        heartbeat.retryMilliseconds = heartbeatMilliseconds
        var backoff = Backoff.Policy()
        backoff.initialMilliseconds = 100
        backoff.maximumMilliseconds = 1000
        var connectorConfig = ConnectorConfig(
            nodeID: "node-1", credentialFile: temporaryDirectory("connector") + "/credential.json",
            relayURL: try WebSocketURL(parsing: "https://127.0.0.1:\(port)", acceptHTTPS: true), caFile: TestCerts.trusted + "/ca.pem",
            components: components, limits: limits, backoff: backoff, heartbeat: heartbeat, privacyMode: mode, masterNode: true)
        // Reuse must not depend on how fast a loaded machine runs a test's next request.
        connectorConfig.componentIdleMilliseconds = 60_000
        configure(&connectorConfig)
        let credential = try await ConnectorRegistration.register(
            config: connectorConfig, enrollmentToken: enrollment.enrollmentToken, group: group, logger: quietLogger)
        let connector = try await startConnector(
            config: connectorConfig, credential: credential, configPath: configPath, clock: clock, timers: timers, upstreamDeadlines: upstreamDeadlines)
        let stack = TestStack(
            component: component, relay: relay, relayPort: port, clock: clock, dataDirectory: dataDirectory, opsToken: ops.secret,
            expertToken: expert.secret, credential: credential, runtime: connector.runtime, connectorServices: connector.services,
            connectorConfig: connectorConfig, relayServices: relayServices)
        if approve {
            try await stack.waitUntil("the first heartbeat") { try await control.store.cluster(id: "demo")?.lastHeartbeatAt != nil }
            _ = try await stack.createRequest(cluster: "demo", role: .admin)
            try await stack.waitForTunnels(1)
        }
        return stack
    }

    /// A connector as `connector run` starts it (sweep every 100 ms, the test clock; its waits on
    /// `timers`, real time unless a test drives them).
    static func startConnector(
        config: ConnectorConfig, credential: ConnectorCredential, configPath: String? = nil, clock: TestClock,
        timers: any Clock<Duration> = ContinuousClock(), upstreamDeadlines: Deadlines = .eventLoop
    ) async throws -> (runtime: ConnectorRuntime, services: RunningServices) {
        let runtime = try await ConnectorRuntime(
            config: config, credential: credential, configPath: configPath, group: group, logger: quietLogger, clock: { clock.now() },
            timers: timers, upstreamDeadlines: upstreamDeadlines, sweepInterval: .milliseconds(100))
        return (runtime, RunningServices(runtime.services, logger: quietLogger))
    }

    /// A relay node started again on the same port and store (after this stack's relay stopped),
    /// its services running. Its tunnels and sessions are its own: `relay` still names the old one.
    func restartRelay() async throws -> (relay: RelayServer, services: RunningServices) {
        var config = self.relay.config
        config.listenPort = self.relayPort
        let control = try RelayServer.openEmbeddedControl(config: config, logger: Self.quietLogger, clock: { self.clock.now() })
        let relay = try RelayServer(config: config, control: control, group: Self.group, logger: Self.quietLogger)
        try await relay.start()
        return (relay, RunningServices(relay.services, logger: Self.quietLogger))
    }

    /// An access request for alice, created by the ops token (auto-approved when the cluster's mode allows).
    func createRequest(cluster: String, role: AccessRole, seconds: Int64 = 3600, expert: String = "alice") async throws -> AccessRequestRecord {
        let ops = try await self.control.authenticateUser(bearer: self.opsToken, action: "test")
        return try await self.control.createRequest(
            CreateAccessRequest(clusterID: cluster, expert: expert, reason: "test", role: role, durationSeconds: seconds), by: ops)
    }

    /// bob (a second expert) with an approved viewer request for cluster demo: the cluster keeps
    /// its flag, and so its tunnel, when alice's access ends.
    func addAnotherExpertsRequest() async throws {
        let ops = try await self.control.authenticateUser(bearer: self.opsToken, action: "test")
        _ = try await self.control.createToken(CreateTokenRequest(name: "bob", role: .expert, ttlSeconds: nil), by: ops)
        _ = try await self.createRequest(cluster: "demo", role: .viewer, expert: "bob")
    }

    /// Polls `condition` every 20 ms, at most 30 s.
    func waitUntil(_ what: String, _ condition: () async throws -> Bool) async throws {
        guard try await TestWait.poll(condition) else { throw TestFailure("timed out waiting for \(what)") }
    }

    /// Waits (bounded) until the relay has `count` tunnels for cluster demo; says what the connector saw if not.
    func waitForTunnels(_ count: Int) async throws {
        guard try await TestWait.poll({ self.relay.registry.tunnels(cluster: "demo").count == count }) else {
            throw TestFailure(
                "timed out waiting for \(count) tunnels: the relay has \(self.relay.registry.tunnels(cluster: "demo").count); "
                    + "the connector wants \(self.connector.wantedURLs), has \(self.connector.connectedURLs), last errors \(self.connector.lastErrors), "
                    + "\(self.driver.answersReceived) heartbeat answers, the last with the flag \(String(describing: self.driver.lastAnswer?.remoteUIRequested))")
        }
    }

    func sessionTarget(
        component: String = "ui", token: String? = nil, cluster: String = "demo", role: AccessRole? = nil
    ) throws -> SessionTarget {
        SessionTarget(
            relay: try WebSocketURL(parsing: "wss://127.0.0.1:\(self.relayPort)/v1/session"), token: Secret(token ?? self.expertToken),
            cluster: cluster, component: component, role: role, caFile: TestCerts.trusted + "/ca.pem", limits: Self.limits)
    }

    /// What `relayctl session open` sets up: a session to the relay and a local listener on port 0.
    func openSession(component: String = "ui", cluster: String = "demo") async throws -> LocalListener {
        let session = try SessionClient(target: try self.sessionTarget(component: component, cluster: cluster), group: Self.group, logger: Self.quietLogger)
        try await session.connect()
        return try await LocalListener.startConduit(host: "127.0.0.1", port: 0, session: session, group: Self.group)
    }

    /// An API client with the given token (the ops token by default).
    func api(token: String? = nil) throws -> APIClient {
        try APIClient(
            base: try WebSocketURL(parsing: "https://127.0.0.1:\(self.relayPort)", acceptHTTPS: true), caFile: TestCerts.trusted + "/ca.pem",
            bearer: token ?? self.opsToken, group: Self.group)
    }

    func stop() async {
        await self.connectorServices.stop()
        await self.relayServices.stop()
        try? await self.component.close()
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs one of the package's programs, built beside the test bundle.
enum TestProcess {
    static func binary(_ name: String) -> String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name).path
    }

    /// Exit status, stdout and stderr. `environment` values of nil are removed. The process is
    /// waited for on a thread of its own: blocking one of Swift concurrency's few threads (two on
    /// this machine) would stall the relay's API and the other suites running beside.
    static func run(_ executable: String, _ arguments: [String], environment extra: [String: String?] = [:]) async throws -> (Int32, String, String) {
        let process = try RunningProcess(executable, arguments, environment: extra)
        let status = await process.exitStatus()
        return (status, process.stdout, process.stderr)
    }
}

/// A program left running while the test acts on it (a relay, `requests list --watch`): what it
/// printed so far, a signal, and its exit.
final class RunningProcess: Sendable {
    private let process: Process
    private let out = NIOLockedValueBox(Data())
    private let err = NIOLockedValueBox(Data())
    private let done = DispatchGroup()
    private let exited = DispatchGroup()

    init(_ executable: String, _ arguments: [String], environment extra: [String: String?] = [:]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        for (name, value) in extra { environment[name] = value }
        process.environment = environment
        let outPipe = Pipe()
        let errPipe = Pipe()
        process.standardOutput = outPipe
        process.standardError = errPipe
        process.standardInput = FileHandle.nullDevice
        self.process = process
        // Told by the termination handler: Foundation's waitUntilExit spins a run loop on Linux.
        self.exited.enter()
        process.terminationHandler = { [exited] _ in exited.leave() }
        try process.run()
        for (pipe, box) in [(outPipe, self.out), (errPipe, self.err)] {
            self.done.enter()
            Thread { [done] in
                while true {
                    let chunk = pipe.fileHandleForReading.availableData
                    if chunk.isEmpty { break }
                    box.withLockedValue { $0.append(chunk) }
                }
                done.leave()
            }.start()
        }
    }

    var stdout: String { String(decoding: self.out.withLockedValue { $0 }, as: UTF8.self) }
    var stderr: String { String(decoding: self.err.withLockedValue { $0 }, as: UTF8.self) }

    var pid: Int32 { self.process.processIdentifier }

    /// Sends `signal` (SIGHUP, say) if the program still runs.
    func send(_ signal: Int32) { if self.process.isRunning { _ = kill(self.process.processIdentifier, signal) } }

    /// Sends SIGTERM (a polite stop, as an operator's `kill`).
    func terminate() { if self.process.isRunning { self.process.terminate() } }
    /// SIGKILL: no drain, no goodbye (its sockets are closed by the kernel).
    func killNow() { if self.process.isRunning { _ = kill(self.process.processIdentifier, SIGKILL) } }

    /// Waits for the exit on a thread of its own (never one of Swift concurrency's few threads).
    /// Bounded: a program still running after `seconds` is killed (SIGKILL, status 9), so a test
    /// fails instead of hanging the suite.
    func exitStatus(seconds: Int = 120) async -> Int32 {
        await withCheckedContinuation { continuation in
            Thread {
                if self.exited.wait(timeout: .now() + .seconds(seconds)) == .timedOut {
                    kill(self.process.processIdentifier, SIGKILL)
                    self.exited.wait()
                }
                self.done.wait()
                continuation.resume(returning: self.process.terminationStatus)
            }.start()
        }
    }

    var isRunning: Bool { self.process.isRunning }
}

/// A hand-written component on loopback port 0: each connection gets a new handler from `handler`.
struct TestComponentServer {
    let channel: Channel

    static func start(_ handler: @escaping @Sendable () -> any ChannelHandler) async throws -> TestComponentServer {
        let channel = try await ServerBootstrap(group: TestStack.group)
            .childChannelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler()) } }
            .bind(host: "127.0.0.1", port: 0).get()
        return TestComponentServer(channel: channel)
    }

    /// What a connector's `components:` entry names it by.
    var url: String { "http://127.0.0.1:\(self.channel.localAddress!.port!)" }

    func close() async throws { try await self.channel.close() }
}
