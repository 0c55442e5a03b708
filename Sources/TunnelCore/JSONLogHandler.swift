import Foundation
import Logging

/// How the programs write their log (relay.yaml and connector.yaml `log:`): swift-log's text lines,
/// or one JSON object per line for a log shipper.
public enum LogFormat: String, Sendable, CaseIterable {
    case text, json

    /// Bootstraps swift-log once per process: every line to standard error.
    public func bootstrap() {
        switch self {
        case .text: LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        case .json: LoggingSystem.bootstrap { JSONLogHandler(label: $0) }
        }
    }
}

/// One JSON object per line on standard error: `time` (RFC 3339, UTC, milliseconds), `level`,
/// `logger`, `message`, then the metadata as string fields (`request_id`, `session`, ...). A key
/// that would hide one of the four is written with a leading `_`.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let write: @Sendable (String) -> Void

    public init(label: String, write: @escaping @Sendable (String) -> Void = JSONLogHandler.standardError) {
        self.label = label
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields = self.metadata
        if let provided = self.metadataProvider?.get() { fields.merge(provided) { $1 } }
        if let extra = event.metadata { fields.merge(extra) { $1 } }
        var line = "{\"time\":\(jsonString(Self.timestamp()))"
        line += ",\"level\":\(jsonString(event.level.rawValue)),\"logger\":\(jsonString(self.label)),\"message\":\(jsonString(event.message.description))"
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
            let name = ["time", "level", "logger", "message"].contains(key) ? "_" + key : key
            line += ",\(jsonString(name)):\(jsonString(value.description))"
        }
        self.write(line + "}\n")
    }

    /// One whole line per write, one writer at a time: lines from several threads never interleave.
    public static let standardError: @Sendable (String) -> Void = { line in
        writeLock.withLock { FileHandle.standardError.write(Data(line.utf8)) }
    }

    private static let writeLock = NSLock()

    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &parts)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
            Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), Int(now.tv_nsec / 1_000_000))
    }
}
