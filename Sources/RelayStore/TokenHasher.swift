import Crypto
import Foundation
import TunnelCore

/// Long random tokens (enrollment tokens, node credentials, API tokens) are stored only as
/// HMAC-SHA256 under a relay key: a keyed hash is enough for 256-bit random secrets, and a stolen
/// database without the key cannot even confirm a guess. The relay issues no secret a human
/// chooses, so there is nothing that needs a slow password hash.
public struct TokenHasher: Sendable {
    private let key: SymmetricKey

    public init(key: SymmetricKey) { self.key = key }

    /// Hex HMAC of the token text.
    public func hash(_ token: String) -> String {
        let mac = HMAC<SHA256>.authenticationCode(for: Data(token.utf8), using: self.key)
        return Hex.encode(mac)
    }

    /// Reads the 32-byte key from `path`, creating it (mode 0600) on first start.
    public static func loadOrCreateKey(at path: String) throws -> SymmetricKey {
        if let data = FileManager.default.contents(atPath: path) {
            guard data.count == 32 else { throw TokenKeyError(path: path, problem: "must hold exactly 32 bytes, has \(data.count)") }
            return SymmetricKey(data: data)
        }
        let key = SymmetricKey(size: .bits256)
        let data = key.withUnsafeBytes { Data($0) }
        do {
            // Exclusive: of two nodes starting at once on one data folder, the second reads the first's key.
            guard try PrivateFile.create(path, with: data) else { return try self.loadOrCreateKey(at: path) }
        } catch let error as PrivateFileError {
            throw TokenKeyError(path: path, problem: error.problem)
        }
        return key
    }
}

public struct TokenKeyError: Error, CustomStringConvertible {
    public var path: String
    public var problem: String
    public init(path: String, problem: String) {
        self.path = path
        self.problem = problem
    }
    public var description: String { "token hash key \(self.path) \(self.problem)" }
}

/// The kinds of secret the relay issues. The prefix tells a person (and secret scanners) what a
/// leaked string is; the rest is 256 random bits, base64url.
public enum IssuedToken: String, Sendable {
    case enrollment = "rae_"
    case credential = "rac_"
    case api = "rat_"

    public func generate() -> String {
        var bytes = [UInt8](repeating: 0, count: 32)
        var generator = SystemRandomNumberGenerator()
        for index in bytes.indices { bytes[index] = generator.next() }
        let base64 = Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        return self.rawValue + base64
    }

    /// Shape check only (prefix, length, alphabet), before any lookup.
    public func isWellFormed(_ token: String) -> Bool {
        guard token.hasPrefix(self.rawValue) else { return false }
        let body = token.utf8.dropFirst(self.rawValue.utf8.count)
        return body.count == 43 && body.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a) || byte == 0x2d || byte == 0x5f
        }
    }
}
