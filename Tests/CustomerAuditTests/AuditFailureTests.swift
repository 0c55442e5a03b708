import Foundation
import Testing

@testable import CustomerAudit

/// A log that cannot be written fails closed and stays a valid chain; retention is told from a
/// head cut off by someone.
@Suite struct AuditFailureTests {
    static func entry(_ index: Int) -> AuditEntry {
        AuditEntry(time: Date(), event: "request", requestID: "r\(index)", method: "POST", path: "/item/\(index)", decision: "allow")
    }

    @Test func aFailedWriteIsTakenBackAndTheChainGoesOn() async throws {
        let dir = AuditLogTests.directory()
        let log = try AuditLog(directory: dir)
        try await log.appendDurably(Self.entry(1))
        #expect(log.failure == nil)
        // The disk fills up: this write fails, after half of its bytes reached the file.
        log.faultInjection = { _ in "No space left on device" }
        await #expect(throws: AuditLogError.self) { try await log.appendDurably(Self.entry(2)) }
        let failure = try #require(log.failure)
        #expect(failure.message.contains("No space left"))
        await #expect(throws: AuditLogError.self) { try await log.appendDurably(Self.entry(3)) }
        #expect(log.failure?.since == failure.since, "failing since the first failure")
        // Space again: the next record follows the last one on disk, and the chain verifies.
        log.faultInjection = nil
        let seq = try await log.appendDurably(Self.entry(4))
        #expect(seq == 2, "failed records took no place in the chain")
        #expect(log.failure == nil)
        log.sync()
        let result = try AuditVerifier.verify(directory: dir)
        #expect(result.ok && result.records == 3, "\(String(describing: result.problem))")
        // The log records its own outage once it can again.
        let records = try AuditVerifier.tail(directory: dir, count: 10)
        #expect(records.map(\.event) == ["request", "request", "audit.resumed"] && records.map(\.requestID) == ["r1", "r4", nil])
        #expect(records[2].reason?.contains("No space left on device") == true)
    }

    @Test func aPartialWriteIsCutFromTheFile() async throws {
        let dir = AuditLogTests.directory()
        let log = try AuditLog(directory: dir)
        try await log.appendDurably(Self.entry(1))
        let before = try FileManager.default.attributesOfItem(atPath: dir + "/audit.jsonl")[.size] as? Int
        // Half a line reaches the disk before the device fails.
        log.faultInjection = { count in
            log.faultInjection = nil
            return "Input/output error after \(count / 2) bytes"
        }
        log.partialWriteForTests = true
        await #expect(throws: AuditLogError.self) { try await log.appendDurably(Self.entry(2)) }
        let after = try FileManager.default.attributesOfItem(atPath: dir + "/audit.jsonl")[.size] as? Int
        #expect(after == before, "the torn bytes were cut")
        try await log.appendDurably(Self.entry(3))
        #expect(try AuditVerifier.verify(directory: dir).ok)
    }

    @Test func retentionIsRecordedAndAHeadCutIsNamed() async throws {
        let dir = AuditLogTests.directory()
        let log = try AuditLog(directory: dir, maxFileBytes: 1024, maxRotatedFiles: 2)
        for index in 0..<60 { try await log.appendDurably(Self.entry(index)) }
        log.sync()
        let retained = try AuditVerifier.verify(directory: dir)
        #expect(retained.ok, "\(String(describing: retained.problem))")
        let first = try #require(retained.firstSeq)
        #expect(first > 1 && retained.prunedThrough == first - 1, "retention says exactly what it removed")
        // Someone deletes the oldest file that retention kept: the head is cut beyond what retention said.
        let oldest = try #require(AuditFiles(directory: dir).all().first)
        try FileManager.default.removeItem(atPath: oldest)
        let cut = try AuditVerifier.verify(directory: dir)
        #expect(!cut.ok)
        #expect(cut.problem?.message.contains("were cut from its head") == true, "\(String(describing: cut.problem))")
    }
}

@Suite struct AuditBoundsTests {
    @Test func textAnExpertControlsIsCutToItsBound() async throws {
        let dir = AuditLogTests.directory()
        let log = try AuditLog(directory: dir)
        try await log.appendDurably(
            AuditEntry(
                time: Date(), event: "request", expert: String(repeating: "e", count: 1000), path: "/" + String(repeating: "p", count: 8000),
                reason: String(repeating: "r", count: 5000)))
        let entry = try #require(try AuditVerifier.tail(directory: dir, count: 1).first)
        #expect(entry.path?.utf8.count == AuditEntry.maxPathBytes && entry.path?.hasSuffix("...") == true)
        #expect(entry.reason?.utf8.count == AuditEntry.maxTextBytes)
        #expect(entry.expert?.utf8.count == AuditEntry.maxIdentifierBytes)
        #expect(try AuditVerifier.verify(directory: dir).ok)
    }
}
