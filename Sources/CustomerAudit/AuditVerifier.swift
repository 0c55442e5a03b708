import Foundation

/// What `connector audit verify` found.
public struct AuditVerification: Sendable, Equatable {
    public struct Problem: Sendable, Equatable, CustomStringConvertible {
        public var file: String
        /// 1-based line number within `file`.
        public var line: Int
        public var message: String
        public var description: String { "\(self.file) line \(self.line): \(self.message)" }
    }

    public var files: Int
    public var records: Int
    public var firstSeq: Int64?
    public var lastSeq: Int64?
    /// Records up to this seq were removed by retention (`audit.pruned` says so).
    public var prunedThrough: Int64?
    /// The first line that breaks the chain; nil when the whole log verifies.
    public var problem: Problem?

    public var ok: Bool { self.problem == nil }
}

public enum AuditVerifier {
    /// Walks every file oldest first and checks each line's own hash, its link to the line before,
    /// and the sequence. When old files were removed by retention, the chain is checked from the
    /// oldest file that is left (its first `prev` cannot be checked), and an `audit.pruned` record
    /// must say that retention removed exactly the records before it: otherwise the head of the log
    /// was cut by someone.
    public static func verify(directory: String) throws -> AuditVerification {
        let paths = AuditFiles(directory: directory).all()
        var result = AuditVerification(files: paths.count, records: 0)
        var previousHash: String?
        var previousSeq: Int64?
        for path in paths {
            let name = (path as NSString).lastPathComponent
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            let lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
            for (index, line) in lines.enumerated() {
                let number = index + 1
                if line.isEmpty {
                    if index == lines.count - 1 { continue }  // after the final newline
                    result.problem = .init(file: name, line: number, message: "empty line (a line was cut out or the file was edited)")
                    return result
                }
                if index == lines.count - 1 {
                    result.problem = .init(file: name, line: number, message: "the last line has no newline (torn write; the connector cuts it off at start)")
                    return result
                }
                switch AuditChain.read(line) {
                case .failure(.malformed):
                    result.problem = .init(file: name, line: number, message: "not a valid audit record")
                    return result
                case .failure(.hashMismatch):
                    result.problem = .init(file: name, line: number, message: "the record does not match its hash: the line was edited")
                    return result
                case .success(let (entry, hash)):
                    let isFirst = previousHash == nil
                    if isFirst {
                        // The chain may start at genesis, or after files removed by retention.
                        if entry.seq == 1 && entry.prev != AuditChain.genesis {
                            result.problem = .init(file: name, line: number, message: "the first record does not start the chain")
                            return result
                        }
                    } else if entry.prev != previousHash {
                        result.problem = .init(
                            file: name, line: number,
                            message: "record \(entry.seq) does not follow the line before it (seq \(previousSeq ?? 0)): a line was inserted, deleted or moved here")
                        return result
                    } else if entry.seq != (previousSeq ?? 0) + 1 {
                        result.problem = .init(
                            file: name, line: number, message: "sequence jumps from \(previousSeq ?? 0) to \(entry.seq)")
                        return result
                    }
                    if result.firstSeq == nil { result.firstSeq = entry.seq }
                    result.lastSeq = entry.seq
                    if let pruned = entry.prunedThrough { result.prunedThrough = max(result.prunedThrough ?? 0, pruned) }
                    result.records += 1
                    previousHash = hash
                    previousSeq = entry.seq
                }
            }
        }
        result.problem = Self.headProblem(result, firstFile: paths.first)
        return result
    }

    /// A log that does not start at record 1 must start right after what retention removed.
    static func headProblem(_ result: AuditVerification, firstFile: String?) -> AuditVerification.Problem? {
        guard let first = result.firstSeq, first > 1, let firstFile else { return nil }
        let pruned = result.prunedThrough ?? 0
        guard first > pruned + 1 else { return nil }
        let name = (firstFile as NSString).lastPathComponent
        let explained = pruned > 0 ? "retention removed records up to \(pruned) only" : "no retention record accounts for them"
        return .init(
            file: name, line: 1,
            message: "the log starts at record \(first), but \(explained): records \(pruned + 1) to \(first - 1) were cut from its head")
    }

    /// The last `count` records, oldest first, read across files.
    public static func tail(directory: String, count: Int) throws -> [AuditEntry] {
        var collected: [AuditEntry] = []
        for path in AuditFiles(directory: directory).all().reversed() {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            let lines = data.split(separator: UInt8(ascii: "\n"))
            for line in lines.reversed() {
                guard collected.count < count else { break }
                if case .success(let record) = AuditChain.read(line) { collected.append(record.entry) }
            }
            if collected.count >= count { break }
        }
        return collected.reversed()
    }

    /// The record as one JSON line (for `audit tail --json`).
    public static func json(_ entry: AuditEntry) -> String {
        (try? AuditChain.encoder.encode(entry)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }
}
