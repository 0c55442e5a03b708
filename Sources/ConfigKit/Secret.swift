import Foundation

/// A secret read from config (a cluster secret, a token). Prints as `<redacted>` everywhere.
public struct Secret: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    public let value: String

    public init(_ value: String) { self.value = value }

    public var description: String { "<redacted>" }
    public var debugDescription: String { "<redacted>" }

    /// Compares in time that depends only on the lengths, not on where the bytes differ.
    public func matches(_ candidate: String) -> Bool {
        let a = Array(self.value.utf8)
        let b = Array(candidate.utf8)
        var difference = UInt8(a.count == b.count ? 0 : 1)
        for index in 0..<max(a.count, b.count) {
            difference |= (index < a.count ? a[index] : 0) ^ (index < b.count ? b[index] : 0)
        }
        return difference == 0
    }
}

extension ConfigMap {
    /// A secret given inline as `KEY` or, better, as `KEY_file` (a file holding it; surrounding
    /// white space is trimmed). Exactly one of the two must be present.
    public func secret(_ key: String, minimumLength: Int = 16) throws -> Secret {
        let inline = try self.string(key)
        let file = try self.filePath("\(key)_file")
        let value: String
        switch (inline, file) {
        case (let text?, nil):
            value = text
        case (nil, let path?):
            guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
                throw self.error("\(key)_file", "cannot read \(path)")
            }
            value = text.trimmingCharacters(in: .whitespacesAndNewlines)
        case (.some, .some):
            throw self.error(key, "give either \(key) or \(key)_file, not both")
        case (nil, nil):
            throw self.error(key, "is required (or \(key)_file)")
        }
        guard value.count >= minimumLength else {
            throw self.error(key, "must be at least \(minimumLength) characters")
        }
        return Secret(value)
    }
}

/// Names of clusters, nodes, components and experts: what may appear in headers, logs and paths.
public enum Identifier {
    public static func isValid(_ text: String) -> Bool {
        guard (1...64).contains(text.utf8.count), let first = text.utf8.first,
            first.isASCIILetterOrDigit
        else { return false }
        return text.utf8.allSatisfy { $0.isASCIILetterOrDigit || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") }
    }

    public static let rule = "1-64 characters: letters, digits, '-', '_' or '.', starting with a letter or digit"
}

extension UInt8 {
    fileprivate var isASCIILetterOrDigit: Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(self) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(self)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(self)
    }
}

extension ConfigMap {
    public func identifier(_ key: String) throws -> String {
        let value = try self.requiredString(key)
        guard Identifier.isValid(value) else { throw self.error(key, "must be \(Identifier.rule), got \"\(value)\"") }
        return value
    }

    /// `host:port` or `[v6]:port`; port 0 asks the system for a free port.
    public func hostPort(_ key: String, default value: String) throws -> (host: String, port: Int) {
        let text = try self.string(key, default: value)
        guard let parsed = parseHostPort(text) else {
            throw self.error(key, "expected host:port such as 127.0.0.1:8443 or [::1]:8443, got \"\(text)\"")
        }
        return parsed
    }
}

public func parseHostPort(_ text: String) -> (host: String, port: Int)? {
    let host: Substring
    let portText: Substring
    if text.hasPrefix("[") {
        guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
        host = text[text.index(after: text.startIndex)..<close]
        portText = text[text.index(close, offsetBy: 2)...]
    } else {
        guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { return nil }
        host = text[..<colon]
        portText = text[text.index(after: colon)...]
    }
    guard !host.isEmpty, let port = Int(portText), (0...65_535).contains(port) else { return nil }
    return (String(host), port)
}
