import Foundation
import RelayModel
import Yams

/// A config file error that names the key, as written in the file, and says what is expected.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public var file: String
    public var key: String
    public var message: String

    public init(file: String, key: String, message: String) {
        self.file = file
        self.key = key
        self.message = message
    }

    public var description: String {
        key.isEmpty ? "\(file): \(message)" : "\(file): \(key): \(message)"
    }
}

/// One YAML mapping of a config file, read strictly: every value is checked as it is read and
/// `finish()` rejects any key that was not read (a typo must not silently fall back to a default).
public final class ConfigMap {
    public let file: String
    /// Dotted path of this mapping in the file ("" at the top level).
    public let path: String
    /// Relative file paths in values are taken relative to this folder (the config file's).
    public let baseDirectory: String
    private let values: [String: Node]
    private let order: [String]
    private var read: Set<String> = []

    /// The text of a config file, or an error naming it.
    public static func readFile(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw ConfigError(file: path, key: "", message: "cannot read the file")
        }
        return text
    }

    public convenience init(yaml: String, file: String) throws {
        let base = (file as NSString).deletingLastPathComponent
        let node: Node?
        do {
            node = try Yams.compose(yaml: yaml)
        } catch {
            throw ConfigError(file: file, key: "", message: "not valid YAML: \(error)")
        }
        guard let node else {
            try self.init(node: Node.mapping(Node.Mapping([])), file: file, path: "", base: base)
            return
        }
        try self.init(node: node, file: file, path: "", base: base)
    }

    init(node: Node, file: String, path: String, base: String) throws {
        self.file = file
        self.path = path
        self.baseDirectory = base
        guard let mapping = node.mapping else {
            throw ConfigError(file: file, key: path, message: "expected a mapping of keys to values")
        }
        var values: [String: Node] = [:]
        var order: [String] = []
        for (key, value) in mapping {
            guard let name = key.scalar?.string else {
                throw ConfigError(file: file, key: path, message: "keys must be plain strings")
            }
            if values[name] != nil {
                throw ConfigError(file: file, key: Self.join(path, name), message: "given twice")
            }
            values[name] = value
            order.append(name)
        }
        self.values = values
        self.order = order
    }

    static func join(_ path: String, _ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    public func keyPath(_ key: String) -> String { Self.join(self.path, key) }

    public func error(_ key: String, _ message: String) -> ConfigError {
        ConfigError(file: self.file, key: self.keyPath(key), message: message)
    }

    public func has(_ key: String) -> Bool { self.values[key] != nil }

    /// Every key the parser asks for while this is set, present or not ("relay.proxy.url"): a test
    /// checks that the example config files document each one.
    @TaskLocal public static var keyLog: ConfigKeyLog?

    private func mark(_ key: String) {
        self.read.insert(key)
        Self.keyLog?.insert(self.keyPath(key).replacing(#/\[\d+\]/#, with: "[]"))
    }

    private func scalar(_ key: String, expected: String) throws -> String? {
        self.mark(key)
        guard let node = self.values[key] else { return nil }
        if case .scalar(let scalar) = node {
            if scalar.style == .plain && ["", "~", "null", "Null", "NULL"].contains(scalar.string) { return nil }
            return scalar.string
        }
        throw self.error(key, "expected \(expected), got a \(node.mapping != nil ? "mapping" : "list")")
    }

    // MARK: typed readers

    public func string(_ key: String) throws -> String? {
        try self.scalar(key, expected: "a string")
    }

    public func string(_ key: String, default value: String) throws -> String {
        try self.string(key) ?? value
    }

    public func requiredString(_ key: String) throws -> String {
        guard let value = try self.string(key), !value.isEmpty else {
            throw self.error(key, "is required")
        }
        return value
    }

    /// A file path; a relative one is resolved against the config file's folder.
    public func filePath(_ key: String) throws -> String? {
        guard let text = try self.string(key), !text.isEmpty else { return nil }
        return self.resolve(text)
    }

    public func requiredFilePath(_ key: String) throws -> String {
        guard let path = try self.filePath(key) else { throw self.error(key, "is required") }
        return path
    }

    public func resolve(_ path: String) -> String {
        path.hasPrefix("/") || self.baseDirectory.isEmpty ? path : (self.baseDirectory as NSString).appendingPathComponent(path)
    }

    public func int(_ key: String, default value: Int, range: ClosedRange<Int>) throws -> Int {
        guard let text = try self.scalar(key, expected: "a whole number") else { return value }
        guard let number = Int(text.replacingOccurrences(of: "_", with: "")) else {
            throw self.error(key, "expected a whole number, got \(quoted(text))")
        }
        guard range.contains(number) else {
            throw self.error(key, "must be \(range.lowerBound) ... \(range.upperBound), got \(number)")
        }
        return number
    }

    public func bool(_ key: String, default value: Bool) throws -> Bool {
        guard let text = try self.scalar(key, expected: "true or false") else { return value }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw self.error(key, "expected true or false, got \(quoted(text))")
        }
    }

    /// A size in bytes: `65536`, `64KiB`, `4MiB`, `1GiB` (also KB/MB/GB, read as powers of 1024).
    public func size(_ key: String, default value: Int, range: ClosedRange<Int>) throws -> Int {
        guard let text = try self.scalar(key, expected: "a size") else { return value }
        guard let bytes = parseSize(text) else {
            throw self.error(key, "expected a size such as 65536, 64KiB or 4MiB, got \(quoted(text))")
        }
        guard range.contains(bytes) else {
            throw self.error(key, "must be \(range.lowerBound) ... \(range.upperBound) bytes, got \(bytes)")
        }
        return bytes
    }

    /// A duration: `250ms`, `10s`, `5m`, `8h`; a bare number is seconds. Returned in milliseconds.
    public func durationMilliseconds(_ key: String, default value: Int64, range: ClosedRange<Int64>) throws -> Int64 {
        guard let text = try self.scalar(key, expected: "a duration") else { return value }
        guard let millis = parseDurationMilliseconds(text) else {
            throw self.error(key, "expected a duration such as 500ms, 10s, 5m or 8h, got \(quoted(text))")
        }
        guard range.contains(millis) else {
            throw self.error(key, "must be between \(formatMilliseconds(range.lowerBound)) and \(formatMilliseconds(range.upperBound)), got \(text)")
        }
        return millis
    }

    public func oneOf(_ key: String, _ choices: [String], default value: String) throws -> String {
        guard let text = try self.string(key) else { return value }
        guard choices.contains(text) else {
            throw self.error(key, "must be one of \(choices.joined(separator: ", ")), got \(quoted(text))")
        }
        return text
    }

    public func map(_ key: String) throws -> ConfigMap? {
        self.mark(key)
        guard let node = self.values[key] else { return nil }
        if case .scalar(let scalar) = node, scalar.string.isEmpty || scalar.string == "~" || scalar.string == "null" { return nil }
        return try ConfigMap(node: node, file: self.file, path: self.keyPath(key), base: self.baseDirectory)
    }

    /// A list of mappings, each read strictly.
    public func list(_ key: String) throws -> [ConfigMap] {
        self.mark(key)
        guard let node = self.values[key] else { return [] }
        guard let sequence = node.sequence else {
            throw self.error(key, "expected a list")
        }
        return try sequence.enumerated().map { index, item in
            try ConfigMap(node: item, file: self.file, path: "\(self.keyPath(key))[\(index)]", base: self.baseDirectory)
        }
    }

    /// A list of plain strings.
    public func strings(_ key: String) throws -> [String] {
        self.mark(key)
        guard let node = self.values[key] else { return [] }
        if let text = node.scalar?.string { return [text] }
        guard let sequence = node.sequence else { throw self.error(key, "expected a list of strings") }
        return try sequence.enumerated().map { index, item in
            guard let text = item.scalar?.string else {
                throw ConfigError(file: self.file, key: "\(self.keyPath(key))[\(index)]", message: "expected a string")
            }
            return text
        }
    }

    /// The keys of this mapping, in file order, each marked as read: for name -> value tables.
    public func keys() -> [String] {
        self.read.formUnion(self.order)
        return self.order
    }

    /// Fails on the first key that no reader asked for, listing the keys that are allowed.
    public func finish(allowed: [String]? = nil) throws {
        for key in self.order where !self.read.contains(key) {
            let names = (allowed ?? self.read.sorted()).sorted()
            throw self.error(key, "unknown key; allowed here: \(names.joined(separator: ", "))")
        }
    }
}

func quoted(_ text: String) -> String { "\"\(text)\"" }

public func parseSize(_ text: String) -> Int? {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    let units: [(String, Int)] = [
        ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("KB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30),
        ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("B", 1),
    ]
    for (suffix, factor) in units where trimmed.hasSuffix(suffix) {
        let number = trimmed.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)
        guard let value = Int(number), value >= 0, value <= Int.max / factor else { return nil }
        return value * factor
    }
    guard let value = Int(trimmed), value >= 0 else { return nil }
    return value
}

public func parseDurationMilliseconds(_ text: String) -> Int64? {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
    for (suffix, factor) in units where trimmed.hasSuffix(suffix) {
        let number = trimmed.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)
        // "ms" also ends in "s": only accept a pure number before the suffix.
        guard let value = Int64(number), value >= 0, value <= Int64.max / factor else { continue }
        return value * factor
    }
    guard let seconds = Int64(trimmed), seconds >= 0, seconds <= Int64.max / 1000 else { return nil }
    return seconds * 1000
}

/// The keys a parse asked for (`ConfigMap.keyLog`).
public final class ConfigKeyLog: @unchecked Sendable {
    private let lock = NSLock()
    private var keys: Set<String> = []
    public init() {}
    func insert(_ key: String) { self.lock.withLock { _ = self.keys.insert(key) } }
    public var all: Set<String> { self.lock.withLock { self.keys } }
}
