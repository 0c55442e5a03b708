import Foundation
import PrivacyPolicy
import RelayAPI
import RelayModel

/// The customer CLI's messages over the control socket (`state_dir/control.sock`, HTTP/1.1 + JSON,
/// encoded like the relay's API: `APIJSON`).
public enum ControlPath {
    public static let status = "/v1/status"
    public static let requests = "/v1/requests"
    public static let sessions = "/v1/sessions"
    public static let mode = "/v1/mode"
    public static let reload = "/v1/reload"
    /// Asks the relay now (a heartbeat), for `requests list --watch`; answers the requests known.
    public static let refresh = "/v1/refresh"
    public static func decide(_ id: Int64, _ verdict: ApprovalDecision.Verdict) -> String { "/v1/requests/\(id)/\(verdict.rawValue)" }
    public static func revoke(_ id: Int64) -> String { "/v1/requests/\(id)/revoke" }
    public static func kill(_ session: String) -> String { "/v1/sessions/\(session)/kill" }
}

public struct ConnectorStatus: Codable, Sendable, Equatable {
    public var cluster: String
    public var node: String
    public var mode: PrivacyMode
    /// "config" or "customer CLI (NAME at TIME)".
    public var modeSource: String
    public var components: [String]
    public var tunnels: [String]
    public var remoteUIRequested: Bool?
    public var lastHeartbeatAt: Date?
    /// Why the last heartbeat failed (a proxy refusing, the relay unreachable); nil once one is answered.
    public var heartbeatFailure: String?
    public var liveSessions: Int
    public var pendingRequests: Int
    public var auditDirectory: String
    /// Set while the audit log cannot be written (every request is refused meanwhile): since when and why.
    public var auditFailure: String?
    /// A mode set with `connector mode`, in force over the file's until `connector mode config`.
    public var modeOverride: ModeOverride?
    /// The config file as it is now: its path, its mode, and why it does not load (the connector
    /// then runs on the settings it read at `settingsLoadedAt`).
    public var configFile: String?
    public var configFileMode: PrivacyMode?
    public var configProblem: String?
    public var settingsLoadedAt: Date?
    /// Heartbeats, tunnels, requests and bytes since the connector started.
    public var figures: ConnectorFigures.Counts?
}

/// A session as the connector has seen it.
public struct ConnectorSession: Codable, Sendable, Equatable {
    public var id: String
    public var expert: String
    public var role: AccessRole
    public var component: String
    public var accessRequest: Int64
    public var startedAt: Date
    public var lastActivityAt: Date
    public var requests: Int64
    public var refused: Int64
    public var bytesIn: Int64
    public var bytesOut: Int64
    public var liveStreams: Int
    public var endedAt: Date?
    public var endReason: String?
}

public struct ConnectorRequests: Codable, Sendable, Equatable {
    /// Waiting for the customer (from the relay's last heartbeat answer).
    public var pending: [PendingApproval]
    /// The customer's decisions, newest first.
    public var decided: [CustomerApproval]
    /// Requests the relay ended (revoked, expired, rejected), newest first.
    public var ended: [RelayEndedRequest]
}

public struct CustomerActor: Codable, Sendable, Equatable {
    /// The customer's user name (the CLI sends $USER).
    public var by: String
    public var reason: String?
    /// The request as the customer was shown it (approve and reject refuse if it changed since).
    public var expected: PendingApproval?
    public init(by: String, reason: String? = nil, expected: PendingApproval? = nil) {
        self.by = by
        self.reason = reason
        self.expected = expected
    }
}

public struct ModeChange: Codable, Sendable, Equatable {
    /// The new mode, or nil to go back to the config file's.
    public var mode: PrivacyMode?
    public var by: String
    public init(mode: PrivacyMode?, by: String) {
        self.mode = mode
        self.by = by
    }
}

/// The answer to a settings change: what is in force now.
public struct SettingsApplied: Codable, Sendable, Equatable {
    public var mode: PrivacyMode
    public var changes: [String]
    public var streamsReset: Int
    public var sessionsEnded: Int
    /// The mode the config file sets as it reads now (hidden while `modeOverride` is set); nil
    /// while the file does not load (`configProblem` says why).
    public var fileMode: PrivacyMode?
    public var modeOverride: ModeOverride?
    public var configProblem: String?
}

/// The config file as it reads now, for `status`.
public struct ConfigFileCheck: Sendable {
    public var path: String
    public var mode: PrivacyMode?
    public var problem: String?
}
