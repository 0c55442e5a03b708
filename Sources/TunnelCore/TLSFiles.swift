import Foundation
import NIOCore
import NIOSSL

/// Why TLS material could not be loaded: names the file and the setting it came from, never the key's content.
public struct TLSSetupError: Error, CustomStringConvertible {
    public var setting: String
    public var path: String
    public var reason: String
    public var description: String { "\(self.setting) (\(self.path)): \(self.reason)" }
}

public enum TLSFiles {
    /// TLS 1.2 suites allowed besides TLS 1.3 (whose suites are all AEAD): forward-secret AEAD only,
    /// as Mozilla's "intermediate" profile (without finite-field DHE, which BoringSSL does not offer).
    public static let tls12CipherSuites = [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    ].joined(separator: ":")

    /// Server side: certificate chain and private key from PEM files.
    public static func serverContext(
        certificateFile: String, privateKeyFile: String, certificateSetting: String = "tls.certificate_file",
        keySetting: String = "tls.private_key_file"
    ) throws -> NIOSSLContext {
        let chain = try Self.certificates(certificateFile, setting: certificateSetting)
        let key: NIOSSLPrivateKey
        try Self.mustExist(privateKeyFile, setting: keySetting)
        do {
            key = try NIOSSLPrivateKey(file: privateKeyFile, format: .pem)
        } catch {
            throw TLSSetupError(setting: keySetting, path: privateKeyFile, reason: "cannot read a PEM private key")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        configuration.cipherSuites = Self.tls12CipherSuites
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            // BoringSSL checks the key against the certificate here; its own words name a build path.
            throw TLSSetupError(
                setting: keySetting, path: privateKeyFile,
                reason: "does not match the certificate in \(certificateSetting) (\(certificateFile)); use the key the certificate was issued for")
        }
    }

    /// Client side: trusts only the CA certificates in `caFile`, not the system store, and checks the
    /// server's name against its certificate.
    /// nil: the system's trust store (relayctl against a relay with a public certificate).
    public static func clientContext(caFile: String?, setting: String = "relay.ca_file") throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let caFile { configuration.trustRoots = .certificates(try Self.certificates(caFile, setting: setting)) }
        configuration.certificateVerification = .fullVerification
        configuration.minimumTLSVersion = .tlsv12
        configuration.cipherSuites = Self.tls12CipherSuites
        return try NIOSSLContext(configuration: configuration)
    }

    private static func mustExist(_ path: String, setting: String) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            throw TLSSetupError(setting: setting, path: path, reason: "no such file")
        }
    }

    static func certificates(_ path: String, setting: String) throws -> [NIOSSLCertificate] {
        try Self.mustExist(path, setting: setting)
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMFile(path)
        } catch {
            throw TLSSetupError(setting: setting, path: path, reason: "cannot read PEM certificates")
        }
        guard !certificates.isEmpty else {
            throw TLSSetupError(setting: setting, path: path, reason: "no certificate in the file")
        }
        return certificates
    }
}
