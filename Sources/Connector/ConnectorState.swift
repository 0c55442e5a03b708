import Foundation
import RelayAPI
import PrivacyPolicy
import RelayModel
import TunnelCore

/// A privacy mode the customer set with `connector mode`, over the config file's, until cleared.
public struct ModeOverride: Codable, Sendable, Equatable {
    public var mode: PrivacyMode
    public var by: String
    public var at: Date
}

/// What the connector keeps across restarts in `state_dir/state.json` (mode 0600): the customer's
/// approvals and a mode set from the CLI. Written whole, atomically, on every change.
public struct ConnectorState: Codable, Sendable, Equatable {
    public var approvals: [CustomerApproval] = []
    public var modeOverride: ModeOverride?
    /// Access requests the relay ended (revoked, expired, rejected), as it told this connector.
    public var relayEnded: [RelayEndedRequest] = []
    /// Where the audit log is (`audit.directory`), so that `connector audit` finds it from the
    /// state directory alone.
    public var auditDirectory: String?

    public init(approvals: [CustomerApproval] = [], modeOverride: ModeOverride? = nil) {
        self.approvals = approvals
        self.modeOverride = modeOverride
    }

    private enum CodingKeys: String, CodingKey { case approvals, modeOverride, relayEnded, auditDirectory }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.approvals = try container.decodeIfPresent([CustomerApproval].self, forKey: .approvals) ?? []
        self.modeOverride = try container.decodeIfPresent(ModeOverride.self, forKey: .modeOverride)
        // Absent in state files written before the relay told connectors what it ended.
        self.relayEnded = try container.decodeIfPresent([RelayEndedRequest].self, forKey: .relayEnded) ?? []
        self.auditDirectory = try container.decodeIfPresent(String.self, forKey: .auditDirectory)
    }

    static func path(in directory: String) -> String { (directory as NSString).appendingPathComponent("state.json") }

    /// Reads the state, or an empty one when there is none yet.
    public static func load(directory: String) throws -> ConnectorState {
        let path = self.path(in: directory)
        guard FileManager.default.fileExists(atPath: path) else { return ConnectorState() }
        do {
            return try APIJSON.decoder().decode(ConnectorState.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw ConnectorStateError(description: "cannot read \(path): \(error); move it away to start with no approvals")
        }
    }

    public func save(directory: String) throws {
        try ensurePrivateDirectory(directory)
        try PrivateFile.replace(Self.path(in: directory), with: try APIJSON.encoder().encode(self))
    }

    /// Approvals by request ID, for the stream policy.
    var approvalMap: [Int64: CustomerApproval] {
        Dictionary(self.approvals.map { ($0.requestID, $0) }) { _, last in last }
    }
}

/// An access request the relay ended, and why, when this connector learned it.
public struct RelayEndedRequest: Codable, Sendable, Equatable {
    public var requestID: Int64
    /// revoked, expired or rejected.
    public var state: String
    public var reason: String
    public var at: Date
}

public struct ConnectorStateError: Error, CustomStringConvertible {
    public var description: String
}

/// Creates `path` (and parents) with mode 0700, or tightens an existing one to it.
func ensurePrivateDirectory(_ path: String) throws {
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: path)
}
