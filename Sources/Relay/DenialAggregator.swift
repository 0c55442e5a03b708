import Foundation

/// Refusals of callers who did not authenticate, folded per source per minute so that a flood of
/// bad credentials cannot flood the audit trail (or its disk). Pure: the caller supplies the time
/// and writes the records.
///
/// The first refusal of a (source, action, reason) in a minute is recorded at once, so a single
/// failed attempt is visible immediately; the rest of that minute are counted and summed up in
/// one record when the minute is over. At most `maxKeys` sources are told apart per minute; more
/// fold into the source "other" (memory stays bounded whatever the attacker varies).
struct DenialAggregator: Sendable {
    struct Key: Hashable, Sendable {
        var source: String
        var action: String
        var reason: String
    }

    /// A summary to write: `count` refusals after the first, in the minute starting at `minute`.
    struct Summary: Equatable, Sendable {
        var key: Key
        var minute: Date
        var count: Int
    }

    let maxKeys: Int
    private var minute: Int64 = .min
    private var counts: [Key: Int] = [:]

    init(maxKeys: Int = 1000) { self.maxKeys = maxKeys }

    /// Counts one refusal at `now`. Returns the key to record at once (the first of its minute),
    /// nil when it was only counted; `summaries` holds what a minute that just ended left over.
    mutating func record(_ key: Key, at now: Date) -> (recordNow: Key?, summaries: [Summary]) {
        let summaries = self.rollOver(to: now)
        var key = key
        if self.counts[key] == nil && self.counts.count >= self.maxKeys {
            key.source = "other"
        }
        let seen = self.counts[key, default: 0]
        self.counts[key] = seen + 1
        return (seen == 0 ? key : nil, summaries)
    }

    /// Summaries of the minute that ended before `now`, if it has (called by a timer too).
    mutating func flush(at now: Date) -> [Summary] {
        self.rollOver(to: now)
    }

    private mutating func rollOver(to now: Date) -> [Summary] {
        let current = Int64((now.timeIntervalSince1970 / 60).rounded(.down))
        guard current != self.minute else { return [] }
        let start = Date(timeIntervalSince1970: TimeInterval(self.minute) * 60)
        let summaries = self.counts.filter { $0.value > 1 }.map { Summary(key: $0.key, minute: start, count: $0.value - 1) }
            .sorted { ($0.key.source, $0.key.action, $0.key.reason) < ($1.key.source, $1.key.action, $1.key.reason) }
        self.minute = current
        self.counts = [:]
        return summaries
    }
}

/// What goes into an audit record from outside: at most 256 bytes, control characters escaped,
/// so that a caller cannot forge lines or fill the store through the fields it controls.
enum AuditText {
    static let maxBytes = 256

    static func clean(_ text: String?) -> String? {
        guard let text else { return nil }
        var out = ""
        for scalar in text.unicodeScalars {
            let piece: String
            switch scalar.value {
            case 0x0A: piece = "\\n"
            case 0x0D: piece = "\\r"
            case 0x09: piece = "\\t"
            case 0x5C: piece = "\\\\"
            case 0..<0x20, 0x7F, 0x80..<0xA0, 0x2028, 0x2029: piece = "\\u{\(String(scalar.value, radix: 16))}"
            default: piece = String(scalar)
            }
            if out.utf8.count + piece.utf8.count > Self.maxBytes - 3 {
                return out + "..."
            }
            out += piece
        }
        return out
    }
}
