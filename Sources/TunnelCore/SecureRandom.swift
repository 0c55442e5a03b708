#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOConcurrencyHelpers

/// Cryptographically secure random bytes, drawn from the system 256 at a time (`getentropy`: one
/// system call each) instead of 8 per call as `SystemRandomNumberGenerator` does: request and
/// session IDs and websocket masking keys are drawn on every request.
public enum SecureRandom {
    private struct Pool {
        var bytes = [UInt8](repeating: 0, count: 256)
        var used = 256
    }
    private static let pool = NIOLockedValueBox(Pool())

    public static func bytes(_ count: Int) -> [UInt8] {
        guard count < 64 else { return Self.fresh(count) }
        return Self.pool.withLockedValue { pool in
            if pool.used + count > pool.bytes.count {
                pool.bytes = Self.fresh(pool.bytes.count)
                pool.used = 0
            }
            defer { pool.used += count }
            return Array(pool.bytes[pool.used..<pool.used + count])
        }
    }

    /// `count` random bytes as lowercase hex.
    public static func hex(_ count: Int) -> String { Hex.encode(Self.bytes(count)) }

    private static func fresh(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let chunk = min(256, count - offset)
            let ok = out.withUnsafeMutableBytes { getentropy($0.baseAddress! + offset, chunk) == 0 }
            if !ok {
                var generator = SystemRandomNumberGenerator()
                for index in offset..<offset + chunk { out[index] = generator.next() }
            }
            offset += chunk
        }
        return out
    }
}
