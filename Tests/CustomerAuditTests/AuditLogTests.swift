import CustomerAudit
import Foundation
import Testing

@Suite struct AuditLogTests {
    static func directory() -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("audit-test-\(getpid())-\(UUID().uuidString.prefix(8))").path
        return path
    }

    static func write(_ count: Int, to directory: String, maxFileBytes: Int = 64 << 20) async throws {
        let log = try AuditLog(directory: directory, maxFileBytes: maxFileBytes)
        for index in 0..<count {
            try await log.appendDurably(
                AuditEntry(
                    time: Date(), event: "request", requestID: "r\(index)", session: "s1", expert: "alice", role: "admin", component: "ui",
                    method: "GET", path: "/item/\(index)", status: 200, bytesIn: 0, bytesOut: Int64(index), durationMs: 1, decision: "allow"))
        }
    }

    static func lines(_ directory: String) throws -> [String] {
        try String(contentsOfFile: directory + "/audit.jsonl", encoding: .utf8).split(separator: "\n").map(String.init)
    }

    static func rewrite(_ directory: String, _ lines: [String]) throws {
        try (lines.joined(separator: "\n") + "\n").write(toFile: directory + "/audit.jsonl", atomically: false, encoding: .utf8)
    }

    @Test func anUntouchedLogVerifiesAndContinuesAcrossRestarts() async throws {
        let dir = Self.directory()
        try await Self.write(5, to: dir)
        try await Self.write(3, to: dir)  // a restart continues the chain
        let result = try AuditVerifier.verify(directory: dir)
        #expect(result.ok, "\(result.problem.map(String.init(describing:)) ?? "")")
        #expect(result.records == 8)
        #expect(result.firstSeq == 1 && result.lastSeq == 8)
        let attributes = try FileManager.default.attributesOfItem(atPath: dir + "/audit.jsonl")
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        let tail = try AuditVerifier.tail(directory: dir, count: 2)
        #expect(tail.map(\.requestID) == ["r1", "r2"])
        #expect(tail.map(\.seq) == [7, 8])
    }

    @Test func editingALineIsNamed() async throws {
        let dir = Self.directory()
        try await Self.write(6, to: dir)
        var lines = try Self.lines(dir)
        lines[3] = lines[3].replacingOccurrences(of: "\"/item/3\"", with: "\"/item/x\"")
        try Self.rewrite(dir, lines)
        let result = try AuditVerifier.verify(directory: dir)
        #expect(result.problem?.line == 4)
        #expect(result.problem?.message.contains("edited") == true)
    }

    @Test func deletingALineIsNamed() async throws {
        let dir = Self.directory()
        try await Self.write(6, to: dir)
        var lines = try Self.lines(dir)
        lines.remove(at: 2)
        try Self.rewrite(dir, lines)
        let result = try AuditVerifier.verify(directory: dir)
        #expect(result.problem?.line == 3)
        #expect(result.problem?.message.contains("inserted, deleted or moved") == true)
    }

    @Test func reorderingLinesIsNamed() async throws {
        let dir = Self.directory()
        try await Self.write(6, to: dir)
        var lines = try Self.lines(dir)
        lines.swapAt(1, 2)
        try Self.rewrite(dir, lines)
        #expect(try AuditVerifier.verify(directory: dir).problem?.line == 2)
    }

    @Test func insertingALineIsNamed() async throws {
        let dir = Self.directory()
        try await Self.write(4, to: dir)
        var lines = try Self.lines(dir)
        lines.insert(lines[1], at: 3)  // a valid record, out of place
        try Self.rewrite(dir, lines)
        #expect(try AuditVerifier.verify(directory: dir).problem?.line == 4)
    }

    @Test func rotationKeepsTheChain() async throws {
        let dir = Self.directory()
        try await Self.write(40, to: dir, maxFileBytes: 2048)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        #expect(files.count > 3, "\(files)")
        #expect(files.last == "audit.jsonl")
        let result = try AuditVerifier.verify(directory: dir)
        #expect(result.ok, "\(result.problem.map(String.init(describing:)) ?? "")")
        #expect(result.records == 40 && result.files == files.count)
        // Deleting a middle file breaks the chain at the first line of the next one.
        try FileManager.default.removeItem(atPath: dir + "/" + files[1])
        let broken = try AuditVerifier.verify(directory: dir)
        #expect(broken.problem?.file == files[2])
        #expect(broken.problem?.line == 1)
    }

    @Test func aTornLastLineIsCutAndRecorded() async throws {
        let dir = Self.directory()
        try await Self.write(3, to: dir)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/audit.jsonl"))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data("{\"seq\":4,\"ti".utf8))
        try handle.close()
        #expect(try AuditVerifier.verify(directory: dir).problem?.line == 4)
        try await Self.write(1, to: dir)
        let result = try AuditVerifier.verify(directory: dir)
        #expect(result.ok, "\(result.problem.map(String.init(describing:)) ?? "")")
        let tail = try AuditVerifier.tail(directory: dir, count: 2)
        #expect(tail.first?.event == "audit.recovered")
        #expect(tail.first?.seq == 4)
    }
}

@Suite struct AuditTimeTests {
    @Test func timesAreISO8601WithMillisecondsAndReadBack() throws {
        let date = Date(timeIntervalSince1970: 1_795_000_000.123)
        let entry = AuditEntry(time: date, event: "setting")
        let json = AuditVerifier.json(entry)
        #expect(json.contains("\"time\":\"2026-11-18T11:06:40.123Z\""), "\(json)")
        let directory = AuditLogTests.directory()
        let log = try AuditLog(directory: directory)
        log.append(entry)
        log.sync()
        let back = try AuditVerifier.tail(directory: directory, count: 1)
        #expect(abs((back.first?.time.timeIntervalSince1970 ?? 0) - date.timeIntervalSince1970) < 0.001)
    }
}
