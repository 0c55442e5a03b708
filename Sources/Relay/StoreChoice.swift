import ConfigKit
import Foundation
import Logging
import RelayStore
import TunnelCore

/// relay.yaml `store:` and `postgres:`. The embedded SQLite file in `data_dir` is the default; with
/// `store: postgres` several relay nodes share one database.
public enum StoreChoice: Sendable, Equatable {
    case sqlite
    case postgres(PostgresSettings)

    static func read(_ root: ConfigMap) throws -> StoreChoice {
        let kind = try root.oneOf("store", ["sqlite", "postgres"], default: "sqlite")
        let section = try root.map("postgres")
        guard kind == "postgres" else {
            if section != nil { throw root.error("postgres", "is read only with store: postgres") }
            return .sqlite
        }
        guard let map = section else { throw root.error("postgres", "is required with store: postgres (url, password_file or password_env)") }
        var settings: PostgresSettings
        do {
            settings = try PostgresSettings.parse(url: try map.requiredString("url"))
        } catch let error as PostgresSettingsError {
            throw map.error("url", error.description)
        }
        settings.password = try Self.password(map)
        switch try map.oneOf("tls", ["disable", "require"], default: "disable") {
        case "require":
            settings.tls = .require(caFile: try map.filePath("ca_file"))
        default:
            if map.has("ca_file") { throw map.error("ca_file", "is used only with tls: require") }
        }
        settings.poolSize = try map.int("pool_size", default: 10, range: 1...500)
        settings.operationTimeout = .milliseconds(try map.durationMilliseconds("operation_timeout", default: 5000, range: 500...120_000))
        try map.finish()
        return .postgres(settings)
    }

    /// From a file (first line) or an environment variable; never from the URL or the command line.
    private static func password(_ map: ConfigMap) throws -> String? {
        let file = try map.filePath("password_file")
        let variable = try map.string("password_env")
        switch (file, variable) {
        case (let file?, nil):
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw map.error("password_file", "cannot read \(file)")
            }
            let password = text.split(separator: "\n", omittingEmptySubsequences: false).first.map(String.init) ?? ""
            guard !password.isEmpty else { throw map.error("password_file", "\(file) is empty") }
            return password
        case (nil, let variable?):
            guard let password = ProcessInfo.processInfo.environment[variable], !password.isEmpty else {
                throw map.error("password_env", "environment variable \(variable) is not set")
            }
            return password
        case (nil, nil):
            return nil  // trust or certificate authentication
        case (_?, _?):
            throw map.error("password_env", "give password_file or password_env, not both")
        }
    }
}

extension RelayError {
    /// The store cannot answer: a 503 that says so (the caller retries; tunnels already up go on).
    static func storeUnavailable(_ error: StoreUnavailable) -> RelayError {
        RelayError(.storeUnavailable, "\(error); try again shortly")
    }
}

extension RelayServer {
    /// Opens the store relay.yaml names (creating `data_dir`, 0700, for SQLite and the token hash
    /// key), and the business rules over it. With a shared store, every node must hash tokens with
    /// the same key: the first node's key fingerprint is kept in the store and a node with another
    /// key refuses to start (its tokens would match nothing).
    public static func openControl(config: RelayConfig, logger: Logger, clock: @escaping @Sendable () -> Date = { Date() }) async throws -> MissionControl {
        try FileManager.default.createDirectory(
            atPath: config.dataDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let key = try TokenHasher.loadOrCreateKey(at: config.tokenHashKeyPath)
        let store: any Store
        switch config.store {
        case .sqlite:
            store = try SQLiteStore(path: config.dataDirectory + "/relay.sqlite")
        case .postgres(let settings):
            store = try await PostgresStore.open(settings, logger: logger)
        }
        let hasher = TokenHasher(key: key)
        do {
            let fingerprint = hasher.hash("relay token hash key fingerprint")
            let stored = try await store.claimSetting("token_hash_key_fingerprint", value: fingerprint)
            guard stored == fingerprint else {
                throw TokenKeyError(
                    path: config.tokenHashKeyPath,
                    problem: "is not the key the other relay nodes sharing this store hash tokens with; copy theirs (token_hash_key_file)")
            }
        } catch {
            try? await store.close()
            throw error
        }
        return MissionControl(store: store, hasher: hasher, settings: Self.settings(config), clock: clock, logger: logger)
    }

    static func settings(_ config: RelayConfig) -> MissionControl.Settings {
        var settings = MissionControl.Settings(nodeName: config.nodeName)
        settings.enrollmentTTLSeconds = config.enrollmentTTLSeconds
        settings.pendingRequestTTLSeconds = config.pendingRequestTTLSeconds
        settings.maxRequestSeconds = config.maxRequestSeconds
        settings.heartbeatIntervalSeconds = config.heartbeatIntervalSeconds
        settings.auditRetentionSeconds = config.auditRetentionSeconds
        settings.reconnectSpreadMilliseconds = config.reconnectSpreadMilliseconds
        settings.nodeTTLMilliseconds = config.nodeTTLMilliseconds
        return settings
    }
}
