import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct AuditLogError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// The files of one audit log: `audit.jsonl` is written to; when it would pass the size limit it
/// is renamed `audit-<first seq, 12 digits>.jsonl` and a new one begins. The chain runs on across
/// files: the first line of a new file carries the hash of the last line of the one before.
public struct AuditFiles: Sendable {
    public let directory: String
    public static let activeName = "audit.jsonl"

    public init(directory: String) { self.directory = directory }

    public var activePath: String { self.path(Self.activeName) }
    func path(_ name: String) -> String { (self.directory as NSString).appendingPathComponent(name) }

    static func rotatedName(firstSeq: Int64) -> String {
        let digits = String(firstSeq)
        return "audit-" + String(repeating: "0", count: max(0, 12 - digits.count)) + digits + ".jsonl"
    }

    /// Every file of the log, oldest first (rotated ones by their first seq, then the active one).
    public func all() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: self.directory)) ?? []
        let rotated = names.filter { $0.hasPrefix("audit-") && $0.hasSuffix(".jsonl") }.sorted()
        let active = names.contains(Self.activeName) ? [Self.activeName] : []
        return (rotated + active).map(self.path)
    }
}

/// Appends records to the customer's audit log. Writes run on one serial queue in arrival order;
/// records that arrive while a write is in progress go out together with one `fdatasync`
/// (group commit). A completion runs only once its record is on disk.
///
/// A batch that cannot be written (disk full, I/O error) is taken back whole: the file is cut to
/// where it was and the chain goes on from the last record on disk, so a failure never looks like
/// tampering. Until a write succeeds again the log reports `failure`, and the connector refuses
/// new requests (it never lets through what it cannot record).
public final class AuditLog: @unchecked Sendable {
    public let files: AuditFiles
    public let maxFileBytes: Int
    /// Rotated files kept besides the active one; older ones are deleted (0 keeps all).
    public let maxRotatedFiles: Int

    private let queue = DispatchQueue(label: "customer-audit")
    // Queue-confined state.
    private var fd: Int32 = -1
    private var size = 0
    private var fileFirstSeq: Int64 = 1
    private var nextSeq: Int64 = 1
    private var lastHash = AuditChain.genesis
    private var pending: [(line: [UInt8], seq: Int64, prev: String, resumes: Bool, done: (@Sendable (Result<Int64, Error>) -> Void)?)] = []
    private var flushScheduled = false
    private let failureBox = LockedFailure()

    /// Why the last write failed and since when; nil while writes succeed.
    public var failure: (since: Date, message: String)? { self.failureBox.value }
    private let lastProbe = LockedFailure()

    /// While writes fail, tries one record at most once a second (the connector refuses every
    /// request meanwhile, so nothing else would find out that the disk has room again).
    public func probeWhileFailing(now: Date = Date()) {
        guard let failure = self.failure else { return }
        if let last = self.lastProbe.value, now.timeIntervalSince(last.since) < 1 { return }
        self.lastProbe.replace((now, ""))
        self.append(Self.resumed(after: failure, now: now))
    }

    static let resumedEvent = "audit.resumed"

    /// The record of an outage, written once the log can be written again.
    static func resumed(after outage: (since: Date, message: String), now: Date) -> AuditEntry {
        AuditEntry(
            time: now, event: Self.resumedEvent,
            reason: "the audit log could not be written from \(AuditChain.formatTime(outage.since)) (\(outage.message)); the connector refused every request meanwhile")
    }

    /// Opens (or creates) the log in `directory` (mode 0700; files 0600) and continues its chain.
    /// A torn last line (power lost mid-write, so never acknowledged) is cut off and recorded.
    public init(directory: String, maxFileBytes: Int = 64 << 20, maxRotatedFiles: Int = 0, now: Date = Date()) throws {
        self.files = AuditFiles(directory: directory)
        self.maxFileBytes = maxFileBytes
        self.maxRotatedFiles = maxRotatedFiles
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let torn = try self.recover()
        try self.openActive()
        if torn > 0 {
            self.append(
                AuditEntry(time: now, event: "audit.recovered", reason: "dropped a torn final line of \(torn) bytes (written when the machine stopped)"))
        }
    }

    deinit {
        if self.fd >= 0 { close(self.fd) }
    }

    /// Appends `entry` (its `seq` and `prev` are assigned here); `done` runs once it is durable.
    public func append(_ entry: AuditEntry, done: (@Sendable (Result<Int64, Error>) -> Void)? = nil) {
        self.queue.async {
            var entry = entry.bounded()
            entry.seq = self.nextSeq
            entry.prev = self.lastHash
            let (line, hash) = AuditChain.line(for: entry)
            self.nextSeq += 1
            self.lastHash = hash
            self.pending.append((line, entry.seq, entry.prev, entry.event == Self.resumedEvent, done))
            if !self.flushScheduled {
                self.flushScheduled = true
                self.queue.async { self.flush() }
            }
        }
    }

    /// Appends and waits until the record is on disk; returns its seq.
    @discardableResult
    public func appendDurably(_ entry: AuditEntry) async throws -> Int64 {
        try await withCheckedThrowingContinuation { continuation in
            self.append(entry) { continuation.resume(with: $0) }
        }
    }

    /// Waits until everything appended so far is on disk.
    public func sync() {
        self.queue.sync {}
        self.queue.sync {}
    }

    private func flush() {
        self.flushScheduled = false
        let batch = self.pending
        self.pending = []
        guard let first = batch.first else { return }
        var bytes: [UInt8] = []
        for item in batch { bytes += item.line + [UInt8(ascii: "\n")] }
        var failure: Error?
        do {
            // A batch goes into one file: rotate before it, never in the middle.
            if self.size > 0 && self.size + bytes.count > self.maxFileBytes { try self.rotate(nextFirstSeq: first.seq) }
            let start = self.size
            do {
                try self.writeAll(bytes)
                if fdatasync(self.fd) != 0 { throw AuditLogError("fdatasync failed: \(String(cString: strerror(errno)))") }
            } catch {
                // Take the whole batch back: cut what reached the file, go on from the record before.
                _ = ftruncate(self.fd, off_t(start))
                self.size = start
                throw error
            }
        } catch {
            failure = error
            self.nextSeq = first.seq
            self.lastHash = first.prev
        }
        if let failure {
            self.failureBox.set((Date(), "\(failure)"))
        } else if let outage = self.failureBox.value {
            self.failureBox.set(nil)
            // The log records its own outage, once it can again (unless this batch already did).
            if !batch.contains(where: \.resumes) { self.append(Self.resumed(after: outage, now: Date())) }
        }
        for item in batch {
            item.done?(failure.map { .failure($0) } ?? .success(item.seq))
        }
    }

    private func writeAll(_ bytes: [UInt8]) throws {
        if let fault = self.faultInjection?(bytes.count) {
            if self.partialWriteForTests {
                // As a device that fails mid-write: half the bytes reach the file first.
                _ = bytes.prefix(bytes.count / 2).withUnsafeBytes { write(self.fd, $0.baseAddress, $0.count) }
                self.size += bytes.count / 2
            }
            throw AuditLogError(fault)
        }
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { write(self.fd, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                throw AuditLogError("cannot write the audit log \(self.files.activePath): \(String(cString: strerror(errno)))")
            }
            offset += written
        }
        self.size += bytes.count
    }

    private func rotate(nextFirstSeq: Int64) throws {
        _ = fdatasync(self.fd)
        close(self.fd)
        self.fd = -1
        let rotated = self.files.path(AuditFiles.rotatedName(firstSeq: self.fileFirstSeq))
        guard rename(self.files.activePath, rotated) == 0 else {
            let problem = String(cString: strerror(errno))
            try self.openActive()  // go on in the same file
            throw AuditLogError("cannot rotate the audit log to \(rotated): \(problem)")
        }
        self.fileFirstSeq = nextFirstSeq
        try self.openActive()
        if self.maxRotatedFiles > 0 {
            let old = self.files.all().dropLast()  // the active file is last
            let removed = Array(old.dropLast(self.maxRotatedFiles))
            guard !removed.isEmpty else { return }
            // The newest file removed ends where the oldest kept begins: record how far the log was
            // cut, so that `verify` tells retention from a head cut off by someone.
            let kept = old.dropFirst(removed.count).first.flatMap(Self.firstSeq(ofRotated:)) ?? nextFirstSeq
            for path in removed { unlink(path) }
            self.append(
                AuditEntry(
                    time: Date(), event: "audit.pruned", reason: "retention keeps \(self.maxRotatedFiles) rotated files",
                    detail: "removed \(removed.count) file(s) holding records up to \(kept - 1)", prunedThrough: kept - 1))
        }
    }

    /// The first seq of a rotated file, from its name.
    static func firstSeq(ofRotated path: String) -> Int64? {
        let name = (path as NSString).lastPathComponent
        guard name.hasPrefix("audit-"), name.hasSuffix(".jsonl") else { return nil }
        return Int64(name.dropFirst("audit-".count).dropLast(".jsonl".count))
    }

    /// Tests only: fails writes (the byte count is passed) with the returned message, as a full disk would.
    var faultInjection: ((Int) -> String?)?
    var partialWriteForTests = false

    /// Tests only: sets `faultInjection` on the log's queue.
    func injectFaults(_ fault: ((Int) -> String?)?) {
        self.queue.sync { self.faultInjection = fault }
    }

    private func openActive() throws {
        let fd = open(self.files.activePath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw AuditLogError("cannot open the audit log \(self.files.activePath): \(String(cString: strerror(errno)))") }
        self.fd = fd
        var info = stat()
        fstat(fd, &info)
        self.size = Int(info.st_size)
        syncDirectory(self.files.directory)
    }

    /// Finds where the chain stands; returns how many bytes of a torn last line were cut.
    private func recover() throws -> Int {
        let paths = self.files.all()
        guard let newest = paths.last else { return 0 }
        var data = try Data(contentsOf: URL(fileURLWithPath: newest))
        var torn = 0
        if let last = data.last, last != UInt8(ascii: "\n") {
            let keep = (data.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 }) ?? 0
            torn = data.count - keep
            guard truncate(newest, off_t(keep)) == 0 else {
                throw AuditLogError("cannot cut the torn last line of \(newest): \(String(cString: strerror(errno)))")
            }
            data = data.prefix(keep)
        }
        let lines = data.split(separator: UInt8(ascii: "\n"))
        if newest.hasSuffix(AuditFiles.activeName), let first = lines.first, case .success(let record) = AuditChain.read(first) {
            self.fileFirstSeq = record.entry.seq
        }
        var lastLine = lines.last
        if lastLine == nil, paths.count > 1 {
            // An empty active file after a rotation: the chain ends in the newest rotated file.
            lastLine = try Data(contentsOf: URL(fileURLWithPath: paths[paths.count - 2])).split(separator: UInt8(ascii: "\n")).last
        }
        guard let lastLine else { return torn }
        switch AuditChain.read(lastLine) {
        case .success(let record):
            self.nextSeq = record.entry.seq + 1
            self.lastHash = record.hash
            if lines.isEmpty { self.fileFirstSeq = self.nextSeq }
        case .failure:
            throw AuditLogError(
                "the last line of the audit log in \(self.files.directory) is not a valid record; run `connector audit verify` and keep the files for inspection")
        }
        return torn
    }
}

func syncDirectory(_ path: String) {
    let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return }
    _ = fsync(fd)
    close(fd)
}

/// The failure state, readable from any thread.
final class LockedFailure: @unchecked Sendable {
    private let lock = NSLock()
    private var state: (since: Date, message: String)?

    var value: (since: Date, message: String)? {
        self.lock.lock()
        defer { self.lock.unlock() }
        return self.state
    }

    func replace(_ value: (since: Date, message: String)?) {
        self.lock.lock()
        defer { self.lock.unlock() }
        self.state = value
    }

    func set(_ value: (since: Date, message: String)?) {
        self.lock.lock()
        defer { self.lock.unlock() }
        // The first failure's time stays while writes keep failing.
        if let value, let current = self.state {
            self.state = (current.since, value.message)
        } else {
            self.state = value
        }
    }
}
