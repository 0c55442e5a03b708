import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads the audit log's records in order as they are written, across rotations, for
/// `connector audit export --follow`: each record once, as the line stored on disk (its chain
/// fields `seq`, `prev` and `hash` included, so whoever receives it can check the chain too).
/// Reading only: works while the connector runs or is stopped.
///
/// The active file is read through one open handle: a rotation (the file renamed, a new one begun)
/// is seen by its inode, and the old file is read to its end before the new one. Lines of the active
/// file are handed out one poll later, once they are still there unchanged: the log takes back a
/// batch it could not make durable (a full disk), and such records must not reach a SIEM.
public struct AuditFollower {
    public let files: AuditFiles
    /// The last record handed out (0: none yet).
    public private(set) var lastSeq: Int64
    /// Records that were gone before they could be read (retention removed their file): first...last.
    public private(set) var gaps: [ClosedRange<Int64>] = []

    private var handle: FileHandle?
    private var inode: UInt64 = 0
    /// Read and handed out up to here in the open file.
    private var offset: UInt64 = 0
    /// Read past `offset`, handed out at the next poll if the file still holds them unchanged.
    private var held = Data()

    /// - Parameter afterSeq: records up to this one are skipped (resume where a shipper stopped).
    public init(directory: String, afterSeq: Int64 = 0) {
        self.files = AuditFiles(directory: directory)
        self.lastSeq = afterSeq
    }

    /// The records written and kept since the last call, oldest first, as stored lines (no newline).
    public mutating func poll() throws -> [String] {
        guard self.handle != nil else {
            // First call: every rotated file that may hold newer records, then the active one.
            var lines = try self.rotated()
            lines += try self.openActive()
            return lines
        }
        var lines = try self.confirmHeld()
        if let current = Self.inode(of: self.files.activePath), current != self.inode {
            // Rotated: the open file is complete now; read it to its end, then every file after it.
            lines += try self.readHandle(confirmed: true)
            try? self.handle?.close()
            self.handle = nil
            lines += try self.rotated()
            lines += try self.openActive()
        } else {
            _ = try self.readHandle(confirmed: false)
        }
        return lines
    }

    /// What is held back for confirmation, handed out now (a one-time export's end).
    public mutating func drain() throws -> [String] {
        try self.accept(self.held)
    }

    // MARK: reading

    private mutating func openActive() throws -> [String] {
        guard let handle = FileHandle(forReadingAtPath: self.files.activePath) else { return [] }
        var status = stat()
        guard fstat(handle.fileDescriptor, &status) == 0 else { return [] }
        self.handle = handle
        self.inode = UInt64(status.st_ino)
        self.offset = 0
        self.held = Data()
        _ = try self.readHandle(confirmed: false)
        return []
    }

    /// Reads the open file's new whole lines: handed out at once (`confirmed`, a rotated file) or held.
    private mutating func readHandle(confirmed: Bool) throws -> [String] {
        guard let handle = self.handle else { return [] }
        try handle.seek(toOffset: self.offset + UInt64(self.held.count))
        let data = try handle.readToEnd() ?? Data()
        guard let end = data.lastIndex(of: UInt8(ascii: "\n")) else { return confirmed ? try self.accept(self.held) : [] }
        self.held.append(data[data.startIndex...end])
        return confirmed ? try self.accept(self.held) : []
    }

    /// Hands out the held lines if the file still holds exactly them; else (a batch taken back)
    /// forgets them: what replaced them is read again from where the handed-out part ends.
    private mutating func confirmHeld() throws -> [String] {
        guard !self.held.isEmpty, let handle = self.handle else { return [] }
        try handle.seek(toOffset: self.offset)
        let now = try handle.read(upToCount: self.held.count) ?? Data()
        guard now == self.held else {
            self.held = Data()
            return []
        }
        return try self.accept(self.held)
    }

    /// The records in `data` after `lastSeq`, in order; `data` is no longer held.
    private mutating func accept(_ data: Data) throws -> [String] {
        self.offset += UInt64(data.count)
        self.held = Data()
        return try self.records(in: data)
    }

    /// Whole rotated files (never written again) that may hold records after `lastSeq` and before
    /// `limit`, those records.
    private mutating func rotated(before limit: Int64 = .max) throws -> [String] {
        let paths = self.files.all().filter { $0 != self.files.activePath }
        let named = paths.compactMap { path in AuditLog.firstSeq(ofRotated: path).map { (path, $0) } }
        var lines: [String] = []
        for (index, (path, first)) in named.enumerated() {
            let next = index + 1 < named.count ? named[index + 1].1 : Int64.max
            // Every record in it handed out already, or all of it past the limit.
            guard next > self.lastSeq + 1, first < limit else { continue }
            lines += try self.records(in: try Data(contentsOf: URL(fileURLWithPath: path)), before: limit, filling: false)
        }
        return lines
    }

    /// The records in `data` after `lastSeq` (and before `limit`), in order. A record further on than
    /// the next one means the log rotated while this reader was between files: the rotated files
    /// are read for the records between (`filling`); what none holds any more is a gap (retention).
    private mutating func records(in data: Data, before limit: Int64 = .max, filling: Bool = true) throws -> [String] {
        var lines: [String] = []
        for line in data.split(separator: UInt8(ascii: "\n")) {
            guard case .success(let record) = AuditChain.read(line) else {
                throw AuditLogError("a record of \(self.files.directory) does not read as an audit record; run connector audit verify")
            }
            let seq = record.entry.seq
            guard seq > self.lastSeq, seq < limit else { continue }
            if seq > self.lastSeq + 1 {
                if filling { lines += try self.rotated(before: seq) }
                if self.lastSeq > 0, seq > self.lastSeq + 1 { self.gaps.append((self.lastSeq + 1)...(seq - 1)) }
            }
            lines.append(String(decoding: line, as: UTF8.self))
            self.lastSeq = seq
        }
        return lines
    }

    private static func inode(of path: String) -> UInt64? {
        var status = stat()
        guard stat(path, &status) == 0 else { return nil }
        return UInt64(status.st_ino)
    }
}
