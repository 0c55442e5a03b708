import CustomerAudit
import Foundation
import Logging
import NIOCore
import PrivacyPolicy
import RelayModel
import TunnelCore
import ServiceLifecycle
import UnixSignals

/// A connector's parts, wired: privacy guard and audit log, heartbeat driver, tunnels, the customer's
/// control socket and the once-a-second sweep of session limits and no-longer-allowed streams. Nothing
/// runs until `services` run under a `ServiceGroup` (`connector run`, or a test).
public final class ConnectorRuntime: Sendable {
    public let privacy: PrivacyGuard
    public let driver: HeartbeatDriver
    public let tunnels: TunnelConnector
    public let control: ControlServer
    public let configPath: String?
    private let sweep: SweepService
    private let logger: Logger

    /// In start order. A `ServiceGroup` stops them in reverse: heartbeats first (an answer in flight
    /// can no longer redial), then the tunnels (requests in flight finish, then close with 1000), the
    /// sweep, the control socket, and the audit log last, once every end is recorded.
    /// A `ServiceGroup` stops them in reverse: the metrics textfile last, so its final write has
    /// every heartbeat and request.
    public var services: [any Service] { (self.textfile.map { [$0] } ?? []) + [self.privacy, self.control, self.sweep, self.tunnels, self.driver] }
    /// Writes `metrics_textfile` for node_exporter, if configured.
    private let textfile: MetricsTextfileWriter?

    /// Builds every part and binds the control socket (so the CLI works as soon as this returns).
    /// - Parameters:
    ///   - configPath: the file `reload` (SIGHUP, `connector reload`) reads again; nil: no reload.
    ///   - clock: wall time for records and decisions; `timers`: what every wait sleeps on;
    ///     `upstreamDeadlines`: when components' response deadlines pass (real time by default).
    public init(
        config: ConnectorConfig, credential: ConnectorCredential, configPath: String?, group: EventLoopGroup, logger: Logger,
        clock: @escaping @Sendable () -> Date = { Date() }, timers: any Clock<Duration> = ContinuousClock(),
        upstreamDeadlines: Deadlines = .eventLoop, sweepInterval: Duration = .seconds(1)
    ) async throws {
        let privacy = try PrivacyGuard(config: config, clock: clock, logger: logger)
        let driver = try HeartbeatDriver(config: config, credential: credential, privacy: privacy, group: group, clock: timers, logger: logger)
        let tunnels = try TunnelConnector(
            config: config, credential: credential, privacy: privacy, group: group, clock: timers, upstreamDeadlines: upstreamDeadlines,
            logger: logger, onTunnelLost: { driver.heartbeatNow() })
        driver.attach(tunnels)
        privacy.onEnded { tunnels.tellRelay($0) }
        let api = ControlAPI(
            privacy: privacy, credential: credential, tunnels: { tunnels.connectedURLs },
            lastAnswer: { (driver.lastAnswerAt, driver.lastAnswer?.remoteUIRequested, driver.lastFailure) },
            reload: { actor, mode in try Self.reload(privacy: privacy, path: configPath, actor: actor, mode: mode, logger: logger) },
            configFile: { configPath.map(Self.check) }, decided: { driver.relayMustLearn() }, refresh: { driver.heartbeatNow() })
        self.control = try await ControlServer.start(api: api, config: config, group: group)
        self.privacy = privacy
        self.driver = driver
        self.tunnels = tunnels
        self.configPath = configPath
        self.sweep = SweepService(privacy: privacy, interval: sweepInterval, clock: timers)
        self.logger = logger
        self.textfile = config.metricsTextfile.map { path in
            MetricsTextfileWriter(
                path: path, interval: .milliseconds(config.metricsTextfileIntervalMilliseconds), figures: privacy.figures, clock: timers,
                logger: logger, status: { api.status() })
        }
    }

    /// Reads the config file again and puts its privacy settings and components in force. The relay
    /// URL, CA, credential, heartbeat and tunnel limits are read at start only.
    @discardableResult
    public func reload(actor: String = "sighup") throws -> SettingsApplied {
        try Self.reload(privacy: self.privacy, path: self.configPath, actor: actor, logger: self.logger)
    }

    /// The config file as it reads now (for `status`): its mode, or why it does not load.
    static func check(_ path: String) -> ConfigFileCheck {
        do {
            return ConfigFileCheck(path: path, mode: try ConnectorConfig.load(path: path).privacyMode)
        } catch {
            return ConfigFileCheck(path: path, problem: "\(error)")
        }
    }

    private static func reload(privacy: PrivacyGuard, path: String?, actor: String, mode: ModeChange? = nil, logger: Logger) throws -> SettingsApplied {
        guard let path else { throw ControlError(status: 409, code: "no_config_file", message: "this connector was not started from a file") }
        let config: ConnectorConfig
        do {
            config = try ConnectorConfig.load(path: path)
        } catch {
            // A bad edit keeps the settings in force: never fall back to something more open.
            logger.error("config reload refused; the settings in force stay", metadata: ["error": "\(error)"])
            privacy.record(
                AuditEntry(time: privacy.clock(), event: "setting", decision: "deny", reason: "the config file does not load: \(error); the settings in force stay", actor: actor))
            throw ControlError(status: 400, code: "bad_config", message: "\(error); the settings in force stay")
        }
        return privacy.apply(config: config, mode: mode, actor: actor)
    }

}

/// Every `interval`: ends sessions past the customer's limits and resets streams the settings no
/// longer allow (`PrivacyGuard.sweep`).
struct SweepService: Service {
    let privacy: PrivacyGuard
    let interval: Duration
    let clock: any Clock<Duration>

    func run() async {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                try await cancelWhenGracefulShutdown { [clock, interval] in try await clock.sleep(for: interval, tolerance: nil) }
            } catch {
                return  // shutting down
            }
            self.privacy.sweep()
        }
    }
}

/// Reads the config file again on every SIGHUP, until shutdown. Says the connector has started once
/// its signals are trapped (a `ServiceGroup` traps SIGTERM and SIGINT before any service runs), so
/// a supervisor that signals right after that line is never ignored.
public struct ReloadOnHangup: Service {
    let runtime: ConnectorRuntime
    let started: @Sendable () -> Void

    public init(runtime: ConnectorRuntime, started: @escaping @Sendable () -> Void) {
        self.runtime = runtime
        self.started = started
    }

    public func run() async {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        self.started()
        for await _ in hangups.cancelOnGracefulShutdown() {
            _ = try? self.runtime.reload(actor: "sighup")
        }
    }
}
