import Foundation
import Testing

@testable import CustomerAudit

/// The hand-written line is the generic encoder's, byte for byte: logs written before and after it
/// read the same, and a verifier that re-encodes would agree.
@Suite struct AuditLineWriterTests {
    static let time = Date(timeIntervalSince1970: 1_800_000_000.123)

    static let entries: [AuditEntry] = {
        var full = AuditEntry(
            time: time, event: "request", requestID: "0123abcd", session: "s1", expert: "alice", role: "admin", accessRequest: 42,
            component: "ui", method: "GET", path: "/api/v1/items?q=a/b&x=\"y\"", status: 200, bytesIn: 0, bytesOut: 1_234_567,
            durationMs: 3, decision: "allow", reason: "allowed by mode all", actor: "customer:carol", detail: "mode all -> readOnly",
            prunedThrough: 9)
        full.seq = 7
        full.prev = String(repeating: "ab", count: 32)
        // What an expert controls (the path) may hold anything a URL can: escapes, controls,
        // non-ASCII, a backslash, line separators.
        let hostile = AuditEntry(
            time: time, event: "request", method: "POST", path: "/a\\b\u{0}\u{1}\u{8}\u{9}\u{a}\u{c}\u{d}\u{1f}\u{7f}é日本\u{2028}\u{2029}😀",
            status: -1, decision: "deny", reason: "tab\there \"quoted\" </script>")
        let sparse = AuditEntry(time: Date(timeIntervalSince1970: 0), event: "setting")
        return [full, hostile, sparse]
    }()

    @Test(arguments: entries) func theLineIsTheEncodersByteForByte(_ entry: AuditEntry) throws {
        let encoded = Array(try AuditChain.encoder.encode(entry))
        let (line, hash) = AuditChain.line(for: entry)
        let body = Array(line.prefix(line.count - AuditChain.hashSuffixLength)) + [UInt8(ascii: "}")]
        #expect(String(decoding: body, as: UTF8.self) == String(decoding: encoded, as: UTF8.self))
        guard case .success(let read) = AuditChain.read(line) else {
            Issue.record("the line does not read back")
            return
        }
        #expect(read.entry == entry)
        #expect(read.hash == hash)
    }
}
