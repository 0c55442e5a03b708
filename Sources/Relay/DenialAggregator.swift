import Foundation
import RelayModel

/// Refusals folded per caller, source, action and reason per minute (`MinuteTally`, one recorded
/// at once, the rest summed up) so that a flood of bad credentials, or an expert's script calling
/// an ops endpoint, cannot flood the audit trail. Beyond `maxKeys` sources a minute, further ones
/// count as "other".
struct DenialKey: Hashable, Sendable {
    var source: String
    var action: String
    var reason: String
    /// `anonymous`, or the authenticated caller (`expert:bob`).
    var actor = "anonymous"
}

typealias DenialAggregator = MinuteTally<DenialKey>

extension MinuteTally where Key == DenialKey {
    init(maxKeys: Int = 1000) {
        self.init(recordedPerMinute: 1, maxKeys: maxKeys) { key in
            var key = key
            key.source = "other"
            return key
        }
    }
}

/// What goes into an audit record from outside: control characters escaped (`visibleText`), at
/// most 256 bytes, so that a caller cannot forge lines or fill the store through the fields it controls.
enum AuditText {
    static let maxBytes = 256

    static func clean(_ text: String?) -> String? {
        guard let text else { return nil }
        let visible = visibleText(text)
        guard visible.utf8.count > Self.maxBytes else { return visible }
        var out = ""
        for character in visible {
            if out.utf8.count + character.utf8.count > Self.maxBytes - 3 { break }
            out.append(character)
        }
        return out + "..."
    }
}
