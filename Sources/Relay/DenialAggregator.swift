import Foundation
import RelayModel

/// Refusals of callers who did not authenticate, folded per source, action and reason per minute
/// (`MinuteTally`, one recorded at once, the rest summed up) so that a flood of bad credentials
/// cannot flood the audit trail. Beyond `maxKeys` sources a minute, further ones count as "other".
struct DenialKey: Hashable, Sendable {
    var source: String
    var action: String
    var reason: String
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
