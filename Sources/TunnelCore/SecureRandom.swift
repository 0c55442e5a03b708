import Crypto

/// Random bytes from BoringSSL's generator (seeded from the system, no system call per draw):
/// request and session IDs and websocket masking keys are drawn on every request.
public enum SecureRandom {
    public static func bytes(_ count: Int) -> [UInt8] {
        SymmetricKey(size: SymmetricKeySize(bitCount: count * 8)).withUnsafeBytes { Array($0) }
    }

    /// `count` random bytes as lowercase hex.
    public static func hex(_ count: Int) -> String { Hex.encode(Self.bytes(count)) }
}
