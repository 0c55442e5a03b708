import CustomerAudit
import Foundation
import Logging
import NIOCore
import PrivacyPolicy
import RelayModel

/// A running connector: privacy guard and audit log, heartbeat driver, tunnels, the customer's
/// control socket and the once-a-second sweep of session limits and no-longer-allowed streams.
public final class ConnectorRuntime: Sendable {
    public let privacy: PrivacyGuard
    public let driver: HeartbeatDriver
    public let tunnels: TunnelConnector
    public let control: ControlServer
    public let configPath: String?
    private let sweepTask: RepeatedTask
    private let logger: Logger

    /// - Parameter configPath: the file `reload` (SIGHUP, `connector reload`) reads again; nil: no reload.
    public static func start(
        config: ConnectorConfig, credential: ConnectorCredential, configPath: String?, group: EventLoopGroup, logger: Logger,
        clock: @escaping @Sendable () -> Date = { Date() }, sweepInterval: TimeAmount = .seconds(1)
    ) async throws -> ConnectorRuntime {
        let privacy = try PrivacyGuard(config: config, clock: clock, logger: logger)
        let driver = try HeartbeatDriver(config: config, credential: credential, privacy: privacy, group: group, logger: logger)
        let tunnels = try TunnelConnector(
            config: config, credential: credential, privacy: privacy, group: group, logger: logger, onTunnelLost: { driver.heartbeatNow() })
        driver.attach(tunnels)
        privacy.onEnded { tunnels.tellRelay($0) }
        let api = ControlAPI(
            privacy: privacy, credential: credential, tunnels: { tunnels.connectedURLs },
            lastAnswer: { (driver.lastAnswerAt, driver.lastAnswer?.remoteUIRequested) },
            reload: { actor, mode in try Self.reload(privacy: privacy, path: configPath, actor: actor, mode: mode, logger: logger) },
            configFile: { configPath.map(Self.check) }, decided: { driver.relayMustLearn() }, refresh: { driver.heartbeatNow() })
        let control = try await ControlServer.start(api: api, config: config, group: group)
        let sweep = group.next().scheduleRepeatedTask(initialDelay: sweepInterval, delay: sweepInterval) { _ in privacy.sweep() }
        driver.start()
        return ConnectorRuntime(
            privacy: privacy, driver: driver, tunnels: tunnels, control: control, configPath: configPath, sweepTask: sweep, logger: logger)
    }

    private init(
        privacy: PrivacyGuard, driver: HeartbeatDriver, tunnels: TunnelConnector, control: ControlServer, configPath: String?,
        sweepTask: RepeatedTask, logger: Logger
    ) {
        self.privacy = privacy
        self.driver = driver
        self.tunnels = tunnels
        self.control = control
        self.configPath = configPath
        self.sweepTask = sweepTask
        self.logger = logger
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

    public func stop() async {
        self.sweepTask.cancel()
        self.driver.stop()
        await self.tunnels.stop()
        self.privacy.endAllSessions(reason: "the connector stopped")
        await self.control.close()
        self.privacy.audit.sync()
    }
}
