/// The ID that follows one request across the relay's log, its audit trail and the customer's
/// audit log: `x-request-id` on API calls (the caller's, if it sent a usable one), and
/// `x-relay-request-id` on every stream the relay opens in a tunnel.
public enum RequestID {
    /// The API call's header; the relay echoes it on its answer.
    public static let header = "x-request-id"

    /// The ID of the call being answered, for records made while answering it.
    @TaskLocal public static var current: String?

    /// 128 random bits as 32 hex digits.
    public static func generate() -> String { SecureRandom.hex(16) }

    /// A caller's ID if it is safe to log and store: 8 to 64 letters, digits, `-`, `_` or `.`.
    public static func accepting(_ offered: String?) -> String? {
        guard let offered, (8...64).contains(offered.utf8.count) else { return nil }
        let ok = offered.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a) || byte == 0x2d || byte == 0x5f
                || byte == 0x2e
        }
        return ok ? offered : nil
    }
}
