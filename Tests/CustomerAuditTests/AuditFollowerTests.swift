import Foundation
import Testing

@testable import CustomerAudit

/// `connector audit export --follow`: every record once, in order, as stored, while the log
/// rotates under the reader.
@Suite struct AuditFollowerTests {
    @Test func eachRecordIsReadOnceInOrderAcrossRotations() async throws {
        let dir = AuditLogTests.directory()
        // About four records per file: rotations happen between and within the reader's polls.
        let log = try AuditLog(directory: dir, maxFileBytes: 1024)
        var follower = AuditFollower(directory: dir)
        #expect(try follower.poll().isEmpty)
        var lines: [String] = []
        var written = 0
        for batch in [1, 3, 7, 1, 12, 2, 9] {
            for _ in 0..<batch {
                written += 1
                _ = try await log.appendDurably(AuditFailureTests.entry(written))
            }
            lines += try follower.poll()
            #expect(try follower.poll().isEmpty, "nothing twice")
        }
        let rotated = AuditFiles(directory: dir).all().count - 1
        #expect(rotated >= 5, "the log rotated under the reader (\(rotated) rotated files)")
        let entries = lines.map { line -> AuditEntry? in
            guard case .success(let record) = AuditChain.read(Array(line.utf8)) else { return nil }
            return record.entry
        }
        #expect(entries.map { $0?.seq } == (1...Int64(written)).map { $0 }, "every record once, in order")
        #expect(entries.map { $0?.requestID } == (1...written).map { "r\($0)" })
        #expect(lines.allSatisfy { $0.contains("\"prev\":\"") && $0.contains("\"hash\":\"") }, "the chain fields as stored")

        // A shipper that restarts resumes after the last record it sent.
        var resumed = AuditFollower(directory: dir, afterSeq: 20)
        let rest = try resumed.poll()
        #expect(rest.count == written - 20)
        #expect(rest == Array(lines.suffix(written - 20)))
    }
}
