import Foundation

/// Reads the audit log's records in order as they are written, across rotations, for
/// `connector audit export --follow`: each record once, as the line stored on disk (its chain
/// fields `seq`, `prev` and `hash` included, so whoever receives it can check the chain too).
/// Reading only: works while the connector runs or is stopped.
public struct AuditFollower {
    public let files: AuditFiles
    /// The last record handed out (0: none yet).
    public private(set) var lastSeq: Int64
    /// Where the active file was read up to, and its first record (to see a rotation).
    private var activeOffset: UInt64 = 0
    private var activeFirstSeq: Int64?
    /// Set after the first full pass over the files.
    private var synced = false

    /// - Parameter afterSeq: records up to this one are skipped (resume where a shipper stopped).
    public init(directory: String, afterSeq: Int64 = 0) {
        self.files = AuditFiles(directory: directory)
        self.lastSeq = afterSeq
    }

    /// The records written since the last call, oldest first, as stored lines (without newline).
    public mutating func poll() throws -> [String] {
        if self.synced, Self.firstSeq(of: self.files.activePath) == self.activeFirstSeq,
            (Self.size(self.files.activePath) ?? 0) >= self.activeOffset
        {
            // Still the same active file: read only what was appended.
            return try self.readActive()
        }
        // First call, or the active file was rotated: the rotated files that may hold newer
        // records, then the new active file from its start.
        var lines: [String] = []
        let rotated = self.files.all().filter { $0 != self.files.activePath }
        let firsts = rotated.map { AuditLog.firstSeq(ofRotated: $0) ?? 0 }
        for (index, path) in rotated.enumerated() {
            let next = index + 1 < firsts.count ? firsts[index + 1] : Int64.max
            guard next > self.lastSeq + 1 else { continue }  // every record in it was handed out
            lines += try self.records(in: try Data(contentsOf: URL(fileURLWithPath: path)))
        }
        self.activeOffset = 0
        self.activeFirstSeq = Self.firstSeq(of: self.files.activePath)
        self.synced = true
        return lines + (try self.readActive())
    }

    private mutating func readActive() throws -> [String] {
        guard let handle = FileHandle(forReadingAtPath: self.files.activePath) else { return [] }
        defer { try? handle.close() }
        try handle.seek(toOffset: self.activeOffset)
        let data = try handle.readToEnd() ?? Data()
        // Only whole lines: a record being written is read at the next call.
        guard let end = data.lastIndex(of: UInt8(ascii: "\n")) else { return [] }
        let complete = data[data.startIndex...end]
        self.activeOffset += UInt64(complete.count)
        return try self.records(in: complete)
    }

    private mutating func records(in data: some Collection<UInt8>) throws -> [String] {
        var lines: [String] = []
        for line in data.split(separator: UInt8(ascii: "\n")) {
            guard case .success(let record) = AuditChain.read(line) else {
                throw AuditLogError("a record of \(self.files.directory) does not read as an audit record; run connector audit verify")
            }
            guard record.entry.seq > self.lastSeq else { continue }
            lines.append(String(decoding: line, as: UTF8.self))
            self.lastSeq = record.entry.seq
        }
        return lines
    }

    private static func size(_ path: String) -> UInt64? {
        (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.uint64Value
    }

    private static func firstSeq(of path: String) -> Int64? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let head = try? handle.read(upToCount: 64 << 10), let end = head.firstIndex(of: UInt8(ascii: "\n")),
            case .success(let record) = AuditChain.read(head[head.startIndex..<end])
        else { return nil }
        return record.entry.seq
    }
}
