import Foundation

#if canImport(Glibc)
import Glibc
private let systemWrite = Glibc.write
#elseif canImport(Darwin)
import Darwin
private let systemWrite = Darwin.write
#endif

/// Files that hold secrets or the customer's decisions (credentials, keys, tokens, state): mode
/// 0600 from the first byte, never created readable and tightened after (`O_CREAT|O_EXCL`), and
/// on disk (fsync) before the call returns.
public enum PrivateFile {
    /// Replaces `path` atomically: a fresh temporary name beside it, written and synced, then renamed.
    public static func replace(_ path: String, with data: Data) throws {
        var random = SystemRandomNumberGenerator()
        let temporary = "\(path).\(getpid()).\(String(random.next() as UInt64, radix: 36)).tmp"
        try self.write(temporary, data)
        guard rename(temporary, path) == 0 else {
            let problem = String(cString: strerror(errno))
            unlink(temporary)
            throw PrivateFileError(path: path, problem: "cannot be replaced (\(problem))")
        }
    }

    /// Creates `path` with `data` only if nothing is there yet; false if something is.
    public static func create(_ path: String, with data: Data) throws -> Bool {
        do {
            try self.write(path, data)
            return true
        } catch let error as PrivateFileError where error.exists {
            return false
        }
    }

    private static func write(_ path: String, _ data: Data) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let exists = errno == EEXIST
            throw PrivateFileError(path: path, problem: "cannot be created (\(String(cString: strerror(errno))))", exists: exists)
        }
        var offset = 0
        let failure: String? = data.withUnsafeBytes { bytes in
            while offset < bytes.count {
                let written = systemWrite(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return String(cString: strerror(errno))
                }
                offset += written
            }
            return fsync(fd) == 0 ? nil : String(cString: strerror(errno))
        }
        close(fd)
        if let failure {
            unlink(path)
            throw PrivateFileError(path: path, problem: "cannot be written (\(failure))")
        }
    }
}

public struct PrivateFileError: Error, CustomStringConvertible {
    public var path: String
    public var problem: String
    var exists = false
    public var description: String { "\(self.path) \(self.problem)" }
}
