import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One line of the customer's audit log. `event` says which fields are filled:
/// - `request`: every request an expert sent, allowed or refused (requestID ... decision, reason);
/// - `session.start` / `session.end`: first request of a session / why it ended;
/// - `approval`: the customer approved or rejected an access request;
/// - `setting`: the privacy settings changed (reload, CLI);
/// - `stream.reset`: a running request was cut because the settings no longer allow it;
/// - `audit.recovered`: on start, a torn final line (power loss mid-write) was dropped.
public struct AuditEntry: Codable, Sendable, Equatable {
    /// Position in the chain, from 1, never reused.
    public var seq: Int64 = 0
    public var time: Date
    public var event: String
    public var requestID: String?
    public var session: String?
    public var expert: String?
    public var role: String?
    public var accessRequest: Int64?
    public var component: String?
    public var method: String?
    public var path: String?
    public var status: Int?
    /// Request body bytes, expert to component.
    public var bytesIn: Int64?
    /// Response body bytes, component to expert.
    public var bytesOut: Int64?
    public var durationMs: Int64?
    /// `allow` or `deny` for requests.
    public var decision: String?
    public var reason: String?
    /// Who acted, for approvals and setting changes (`customer:NAME`, `sighup`).
    public var actor: String?
    /// What changed, for settings ("mode all -> readOnly").
    public var detail: String?
    /// `audit.pruned`: retention removed every record up to this seq.
    public var prunedThrough: Int64?
    /// Hash of the previous line (64 zeros for the first record ever).
    public var prev: String = AuditChain.genesis

    public init(
        time: Date, event: String, requestID: String? = nil, session: String? = nil, expert: String? = nil, role: String? = nil,
        accessRequest: Int64? = nil, component: String? = nil, method: String? = nil, path: String? = nil, status: Int? = nil,
        bytesIn: Int64? = nil, bytesOut: Int64? = nil, durationMs: Int64? = nil, decision: String? = nil, reason: String? = nil,
        actor: String? = nil, detail: String? = nil, prunedThrough: Int64? = nil
    ) {
        self.prunedThrough = prunedThrough
        self.time = time
        self.event = event
        self.requestID = requestID
        self.session = session
        self.expert = expert
        self.role = role
        self.accessRequest = accessRequest
        self.component = component
        self.method = method
        self.path = path
        self.status = status
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
        self.durationMs = durationMs
        self.decision = decision
        self.reason = reason
        self.actor = actor
        self.detail = detail
    }
}

extension AuditEntry {
    /// Longest path kept in a record (a longer one is cut, marked "..."): what an expert sends must
    /// not make the customer's log grow without bound.
    public static let maxPathBytes = 2048
    /// Longest reason or detail kept.
    public static let maxTextBytes = 1024
    /// Longest identifier (request ID, session, expert, component, ...) kept.
    public static let maxIdentifierBytes = 256

    /// The record with every text field within its bound.
    func bounded() -> AuditEntry {
        var entry = self
        entry.path = cut(entry.path, Self.maxPathBytes)
        entry.reason = cut(entry.reason, Self.maxTextBytes)
        entry.detail = cut(entry.detail, Self.maxTextBytes)
        entry.requestID = cut(entry.requestID, Self.maxIdentifierBytes)
        entry.session = cut(entry.session, Self.maxIdentifierBytes)
        entry.expert = cut(entry.expert, Self.maxIdentifierBytes)
        entry.role = cut(entry.role, Self.maxIdentifierBytes)
        entry.component = cut(entry.component, Self.maxIdentifierBytes)
        entry.method = cut(entry.method, Self.maxIdentifierBytes)
        entry.actor = cut(entry.actor, Self.maxIdentifierBytes)
        return entry
    }
}

/// `text` cut to at most `limit` UTF-8 bytes on a character boundary, "..." marking a cut.
func cut(_ text: String?, _ limit: Int) -> String? {
    guard let text, text.utf8.count > limit else { return text }
    var out = ""
    for character in text {
        if out.utf8.count + character.utf8.count > limit - 3 { break }
        out.append(character)
    }
    return out + "..."
}

/// The line format and its hash chain. A line is the record as JSON (sorted keys, `prev` inside)
/// with `"hash"` appended last: SHA-256 of the line without it. So an edited line fails its own
/// hash, and a deleted, inserted or moved line breaks the next line's `prev`.
public enum AuditChain {
    public static let genesis = String(repeating: "0", count: 64)
    static let hashSuffixLength = #","hash":""#.utf8.count + 64 + 2

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(formatTime(date))
        }
        return encoder
    }()

    static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let date = parseTime(text) else {
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "bad time \(text)"))
            }
            return date
        }
        return decoder
    }()

    /// The line for `entry` (whose `seq` and `prev` are set), without the newline, and its hash.
    public static func line(for entry: AuditEntry) -> (line: [UInt8], hash: String) {
        var line = AuditLineWriter.open(entry)
        var hasher = SHA256()
        hasher.update(data: line)
        hasher.update(data: [UInt8(ascii: "}")])
        let hash = hex(hasher.finalize())
        line.append(contentsOf: #","hash":""#.utf8)
        line.append(contentsOf: hash.utf8)
        line.append(contentsOf: #""}"#.utf8)
        return (line, hash)
    }

    public enum LineProblem: Error, Equatable {
        case malformed
        case hashMismatch
    }

    /// Reads one line back: its record and its hash, checking the hash against the content.
    public static func read(_ line: some Collection<UInt8>) -> Result<(entry: AuditEntry, hash: String), LineProblem> {
        let bytes = Array(line)
        guard bytes.count > hashSuffixLength, bytes.last == UInt8(ascii: "}") else { return .failure(.malformed) }
        let split = bytes.count - hashSuffixLength
        let suffix = bytes[split...]
        guard suffix.starts(with: #","hash":""#.utf8) else { return .failure(.malformed) }
        let stored = String(decoding: suffix.dropFirst(9).prefix(64), as: UTF8.self)
        let body = Array(bytes[..<split]) + [UInt8(ascii: "}")]
        guard let entry = try? decoder.decode(AuditEntry.self, from: Data(body)) else { return .failure(.malformed) }
        guard hex(SHA256.hash(data: body)) == stored else { return .failure(.hashMismatch) }
        return .success((entry, stored))
    }

    /// ISO 8601 UTC with milliseconds, written by hand: a formatter per record cost more than the
    /// rest of the record (this runs for every request).
    static func formatTime(_ date: Date) -> String {
        let milliseconds = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        var seconds = time_t(milliseconds / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(milliseconds % 1000), 3))Z"
    }

    /// Reads `formatTime`'s form back (`verify` and `tail` read every line; a formatter per line made
    /// verifying a large log take minutes).
    static func parseTime(_ text: String) -> Date? {
        let bytes = Array(text.utf8)
        guard bytes.count == 24, bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-"), bytes[10] == UInt8(ascii: "T"),
            bytes[13] == UInt8(ascii: ":"), bytes[16] == UInt8(ascii: ":"), bytes[19] == UInt8(ascii: "."), bytes[23] == UInt8(ascii: "Z")
        else { return nil }
        func number(_ range: Range<Int>) -> Int32? {
            var value: Int32 = 0
            for byte in bytes[range] {
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int32(byte - UInt8(ascii: "0"))
            }
            return value
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10), let hour = number(11..<13),
            let minute = number(14..<16), let second = number(17..<19), let millis = number(20..<23),
            (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var parts = tm()
        parts.tm_year = year - 1900
        parts.tm_mon = month - 1
        parts.tm_mday = day
        parts.tm_hour = hour
        parts.tm_min = minute
        parts.tm_sec = second
        return Date(timeIntervalSince1970: TimeInterval(timegm(&parts)) + TimeInterval(millis) / 1000)
    }
}

/// Lowercase hex digits, for hashes and for JSON's `\u00XX` escapes.
let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
    var out: [UInt8] = []
    for byte in digest {
        out.append(hexDigits[Int(byte >> 4)])
        out.append(hexDigits[Int(byte & 0xF)])
    }
    return String(decoding: out, as: UTF8.self)
}
