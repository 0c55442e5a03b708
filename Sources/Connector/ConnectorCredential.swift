import Foundation
import Logging
import NIOCore
import RelayAPI
import TunnelCore

/// The node's identity after registration: which cluster and node it is, and the credential the
/// relay issued. Kept in a 0600 file; `description` never shows the credential.
public struct ConnectorCredential: Codable, Sendable, CustomStringConvertible {
    public var clusterID: String
    public var nodeID: String
    public var credential: String

    public init(clusterID: String, nodeID: String, credential: String) {
        self.clusterID = clusterID
        self.nodeID = nodeID
        self.credential = credential
    }

    public var description: String { "cluster \(self.clusterID), node \(self.nodeID), credential <redacted>" }

    public static func load(path: String) throws -> ConnectorCredential {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CredentialFileError(path: path, problem: "does not exist; register this node first: connector register --enrollment-token-file FILE")
        }
        if let mode = (try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int, mode & 0o077 != 0 {
            throw CredentialFileError(path: path, problem: "is readable by other users (mode \(String(mode, radix: 8))); run chmod 600 on it")
        }
        do {
            return try JSONDecoder().decode(ConnectorCredential.self, from: data)
        } catch {
            throw CredentialFileError(path: path, problem: "is not a credential file written by connector register")
        }
    }

    /// Writes the file with mode 0600 from the start (never briefly readable by others).
    public func save(path: String) throws {
        do {
            try PrivateFile.replace(path, with: try JSONEncoder().encode(self))
        } catch let error as PrivateFileError {
            throw CredentialFileError(path: path, problem: error.problem)
        }
    }
}

public struct CredentialFileError: Error, CustomStringConvertible {
    public var path: String
    public var problem: String
    public var description: String { "credential_file \(self.path) \(self.problem)" }
}

public enum ConnectorRegistration {
    /// Trades the one-time enrollment token for this node's credential and saves it.
    public static func register(
        config: ConnectorConfig, enrollmentToken: String, group: EventLoopGroup, logger: Logger
    ) async throws -> ConnectorCredential {
        let client = try APIClient(base: config.relayURL, caFile: config.caFile, bearer: nil, group: group, proxy: config.proxy)
        let answer = try await client.call(
            RelayEndpoints.register, body: RegisterRequest(enrollmentToken: enrollmentToken, nodeID: config.nodeID))
        let credential = ConnectorCredential(clusterID: answer.clusterID, nodeID: answer.nodeID, credential: answer.credential)
        try credential.save(path: config.credentialFile)
        logger.info("registered", metadata: ["cluster": "\(answer.clusterID)", "node": "\(answer.nodeID)", "credential_file": "\(config.credentialFile)"])
        return credential
    }
}
