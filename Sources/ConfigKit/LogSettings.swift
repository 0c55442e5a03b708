import Logging
import TunnelCore

/// The `log:` section of relay.yaml and connector.yaml: how much to write and in which form.
/// `--log-level` on the command line wins over `level`.
public struct LogSettings: Sendable, Equatable {
    public var level: Logger.Level = .info
    public var format: LogFormat = .text

    public init(level: Logger.Level = .info, format: LogFormat = .text) {
        self.level = level
        self.format = format
    }

    public static func read(_ map: ConfigMap?) throws -> LogSettings {
        guard let map else { return LogSettings() }
        var settings = LogSettings()
        let levels = Logger.Level.allCases.map(\.rawValue)
        settings.level = Logger.Level(rawValue: try map.oneOf("level", levels, default: "info")) ?? .info
        settings.format = LogFormat(rawValue: try map.oneOf("format", LogFormat.allCases.map(\.rawValue), default: "text")) ?? .text
        try map.finish()
        return settings
    }

    /// Sets up swift-log for this process and returns its logger.
    public func bootstrap(label: String, overridingLevel: Logger.Level? = nil) -> Logger {
        self.format.bootstrap()
        var logger = Logger(label: label)
        logger.logLevel = overridingLevel ?? self.level
        return logger
    }
}
