import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import RelayModel
import _ConnectionPoolModule

/// The shared store: several relay nodes on one PostgreSQL database (postgres-nio's pooled client).
/// Every query has a deadline; once the database is found gone, queries fail at once with
/// `StoreUnavailable` (the relay answers 503) until a background probe gets an answer again.
/// Access changes are announced to every node with NOTIFY on `accessChannel`.
public final class PostgresStore: Store {
    static let accessChannel = "relay_access_changed"

    public let settings: PostgresSettings
    private let client: PostgresClient
    let logger: Logger
    private let runner: Task<Void, Never>
    private let availability = NIOLockedValueBox(DatabaseAvailability())
    private let changes = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    private let background = NIOLockedValueBox<[Task<Void, Never>]>([])
    private let closed = NIOLockedValueBox(false)

    private init(settings: PostgresSettings, client: PostgresClient, logger: Logger) {
        self.settings = settings
        self.client = client
        self.logger = logger
        // Detached: a graceful shutdown of whatever opens the store must not stop its connections;
        // `close()` does, last.
        self.runner = Task.detached { await client.run() }
    }

    /// Connects, applies the migrations not yet applied (under an advisory lock: several nodes may
    /// start at once) and starts listening for other nodes' access changes.
    public static func open(_ settings: PostgresSettings, logger: Logger) async throws -> PostgresStore {
        try await Self.checkLogin(settings, logger: logger)
        let store = PostgresStore(settings: settings, client: PostgresClient(configuration: try Self.clientConfiguration(settings), backgroundLogger: logger), logger: logger)
        do {
            // A migration (or the wait for another node's) may take longer than a query may.
            let applied = try await store.withConnection("migrate", deadline: .seconds(3600)) { connection in
                try await PostgresSchema.migrate(connection, logger: store.logger)
            }
            if !applied.isEmpty { logger.notice("database migrated", metadata: ["applied": "\(applied.joined(separator: ", "))"]) }
        } catch {
            try? await store.close()
            throw error
        }
        store.startListening()
        return store
    }

    /// One direct connection at start: a refused login or a missing database is a setting to fix,
    /// said at once (the pool would retry it for a minute). Anything else (the server starting,
    /// unreachable) is left to the pool's retries.
    static func checkLogin(_ settings: PostgresSettings, logger: Logger) async throws {
        let tls: PostgresConnection.Configuration.TLS
        if let configuration = Self.tlsConfiguration(settings) {
            tls = .require(try NIOSSLContext(configuration: configuration))
        } else {
            tls = .disable
        }
        let configuration = PostgresConnection.Configuration(
            host: settings.host, port: settings.port, username: settings.username, password: settings.password, database: settings.database, tls: tls)
        do {
            let connection = try await withDeadline(settings.operationTimeout) {
                try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
            }
            try? await connection.close()
        } catch let error as PSQLError where error.code == .server {
            let state = error.serverInfo?[.sqlState] ?? ""
            // 28: invalid authorization (a wrong password, an unknown role); 3D000: no such database.
            guard state.hasPrefix("28") || state == "3D000" else { return }
            throw PostgresLoginRefused(
                database: settings.displayURL, state: state, message: error.serverInfo?[.message] ?? "the login was refused")
        } catch {
            return
        }
    }

    /// The migrations a start would apply to this database now (`relay migrate --check`).
    public static func pendingMigrations(_ settings: PostgresSettings, logger: Logger) async throws -> [String] {
        let client = PostgresClient(configuration: try Self.clientConfiguration(settings), backgroundLogger: logger)
        let runner = Task.detached { await client.run() }
        defer { runner.cancel() }
        do {
            return try await withDeadline(settings.operationTimeout) {
                try await client.withConnection { try await PostgresSchema.pending($0, logger: logger) }
            }
        } catch is DeadlinePassed {
            throw StoreUnavailable(reason: "no answer from \(settings.displayURL) within \(settings.operationTimeout); check the url, the password and that the server runs")
        }
    }

    /// TLS as `tls:` asks (nil: disable), checked against `ca_file` or the system's roots.
    static func tlsConfiguration(_ settings: PostgresSettings) -> TLSConfiguration? {
        guard case .require(let caFile) = settings.tls else { return nil }
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let caFile { configuration.trustRoots = .file(caFile) }
        return configuration
    }

    static func clientConfiguration(_ settings: PostgresSettings) throws -> PostgresClient.Configuration {
        var tls = PostgresClient.Configuration.TLS.disable
        if let configuration = Self.tlsConfiguration(settings) {
            // postgres-nio builds its TLS context at the first connection and keeps a failure for
            // good: a bad CA file is said now, at start.
            _ = try NIOSSLContext(configuration: configuration)
            tls = .require(configuration)
        }
        var configuration = PostgresClient.Configuration(
            host: settings.host, port: settings.port, username: settings.username, password: settings.password,
            database: settings.database, tls: tls)
        // One more than the pool for queries: the LISTEN for other nodes' changes holds one for good.
        configuration.options.maximumConnections = settings.poolSize + 1
        configuration.options.connectTimeout = settings.operationTimeout
        // The server ends a statement running past operation_timeout (a lock wait, say): that call
        // fails alone, the database is not taken for gone.
        let milliseconds = settings.operationTimeout.components.seconds * 1000 + settings.operationTimeout.components.attoseconds / 1_000_000_000_000_000
        configuration.options.additionalStartupParameters = [("statement_timeout", String(milliseconds))]
        return configuration
    }

    public func close() async throws {
        guard self.closed.withLockedValue({ let was = $0; $0 = true; return !was }) else { return }
        self.availability.withLockedValue { $0.probeStopped() }
        // Under the same lock `keep` takes: no task is kept after this.
        let tasks = self.closed.withLockedValue { _ in self.background.withLockedValue { $0 } }
        for task in tasks { task.cancel() }
        self.changes.continuation.finish()
        self.runner.cancel()
        await self.runner.value
    }

    /// Why the database is taken for gone now, or nil while calls go through (for readiness checks).
    public var unavailability: String? { self.availability.withLockedValue { $0.downReason } }

    // MARK: running queries

    /// Runs `body` on a pooled connection within the deadline (`operation_timeout` and a second for
    /// the way back, unless given); a connection-level failure or a missed deadline marks the
    /// database unavailable (see the type's comment).
    func withConnection<T: Sendable>(
        _ what: String, deadline: Duration? = nil, _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        if let reason = self.availability.withLockedValue({ $0.downReason }) { throw StoreUnavailable(reason: reason) }
        let client = self.client
        let leased = NIOLockedValueBox(false)
        do {
            let result = try await withDeadline(deadline ?? self.settings.operationTimeout + .seconds(1)) {
                try await client.withConnection { connection in
                    leased.withLockedValue { $0 = true }
                    return try await body(connection)
                }
            }
            self.availability.withLockedValue { $0.answered() }
            return result
        } catch is DeadlinePassed {
            // No connection in time: the database is taken for gone. A connection that answers too
            // slowly (lock waits, a loaded server) fails this call alone, unless several in a row
            // did (connections gone silent).
            guard leased.withLockedValue({ $0 }) else {
                throw self.unavailable("no connection within \(self.settings.operationTimeout) (\(what))")
            }
            if self.availability.withLockedValue({ $0.answeredTooSlowly() }) {
                throw self.unavailable("\(DatabaseAvailability.slowLimit) calls in a row got no answer in time (\(what))")
            }
            throw StoreUnavailable(reason: "\(what) took longer than operation_timeout")
        } catch let error as PSQLError where error.code == .server && error.serverInfo?[.sqlState] == "57014" {
            // statement_timeout: this call ran too long; the database itself answers.
            throw StoreUnavailable(reason: "\(what) ran past operation_timeout")
        } catch {
            guard let reason = Self.unavailability(error) else { throw error }
            throw self.unavailable(reason)
        }
    }

    /// `body` in one transaction (READ COMMITTED).
    func transaction<T: Sendable>(
        _ what: String, _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        let logger = self.logger
        return try await self.withConnection(what) { connection in
            try await connection.query("BEGIN", logger: logger)
            do {
                let result = try await body(connection)
                // The caller gave up (its deadline passed): what it was told failed must not commit.
                guard !Task.isCancelled else { throw CancellationError() }
                try await connection.query("COMMIT", logger: logger)
                return result
            } catch {
                try? await connection.query("ROLLBACK", logger: logger)
                throw error
            }
        }
    }

    /// One statement's rows, read by `read`.
    func fetch<T: Sendable>(_ what: String, _ query: PostgresQuery, _ read: @escaping @Sendable (PostgresRandomAccessRow) throws -> T) async throws -> [T] {
        let logger = self.logger
        return try await self.withConnection(what) { try await $0.query(query, logger: logger).records(read) }
    }

    /// Why `error` means the database is not there (as opposed to a refused statement); nil for an
    /// SQL error. Built from codes only: a PSQLError's details may quote arguments.
    static func unavailability(_ error: any Error) -> String? {
        if let error = error as? ConnectionPoolError {
            switch error {
            case .connectionCreationCircuitBreakerTripped: return "connection attempts have failed for a minute"
            case .poolShutdown: return "the store is closing"
            default: return nil  // cancelled
            }
        }
        guard let error = error as? PSQLError else { return nil }
        switch error.code {
        case .server:
            let state = error.serverInfo?[.sqlState] ?? ""
            // 08: connection exceptions; 57P0x: shutting down, cannot connect now; 53300: too many connections.
            if state.hasPrefix("08") || state.hasPrefix("57P") || state == "53300" { return "the server said \(state)" }
            return nil
        case .queryCancelled:
            return nil
        default:
            return "\(error.code)"
        }
    }

    private func unavailable(_ reason: String) -> StoreUnavailable {
        guard !self.closed.withLockedValue({ $0 }) else { return StoreUnavailable(reason: "the store is closing") }
        let startProbe = self.availability.withLockedValue { $0.failed(reason) }
        let current = self.availability.withLockedValue { $0.downReason } ?? reason
        if startProbe {
            self.logger.error("database unavailable; API calls and heartbeats answer 503 until it is back", metadata: [
                "database": "\(self.settings.displayURL)", "reason": "\(current)",
            ])
            self.startProbe()
        }
        return StoreUnavailable(reason: current)
    }

    /// Asks `SELECT 1` every second until it is answered, then lets queries through again.
    private func startProbe() {
        let client = self.client
        let timeout = self.settings.operationTimeout
        let logger = self.logger
        self.keep(Task { [availability, settings] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                let answered = (try? await withDeadline(timeout) { try await client.query("SELECT 1", logger: logger).collect().count }) != nil
                if answered {
                    availability.withLockedValue { $0.recovered() }
                    logger.notice("database reachable again", metadata: ["database": "\(settings.displayURL)"])
                    return
                }
            }
        })
    }

    /// Keeps `task` to be cancelled at `close()`; cancels it at once if the store closed meanwhile.
    private func keep(_ task: Task<Void, Never>) {
        let closed = self.closed.withLockedValue { closed in
            guard !closed else { return true }
            self.background.withLockedValue { $0.append(task) }
            return false
        }
        if closed { task.cancel() }
    }

    // MARK: access changes between nodes

    public func announceAccessChange() async {
        let logger = self.logger
        do {
            try await self.withConnection("notify") {
                _ = try await $0.query("SELECT pg_notify(\(Self.accessChannel), '')", logger: logger).collect()
            }
        } catch {
            logger.warning("cannot tell the other relay nodes of an access change; they see it at their next reconcile", metadata: ["error": "\(error)"])
        }
    }

    public func accessChanges() -> AsyncStream<Void> { self.changes.stream }

    /// Holds one connection listening on `accessChannel`, again after any loss (a restart of the
    /// database, say); each (re)start counts as a change, since some may have been missed.
    private func startListening() {
        let client = self.client
        let logger = self.logger
        let changes = self.changes.continuation
        self.keep(Task.detached {
            while !Task.isCancelled {
                do {
                    try await client.withConnection { connection in
                        try await connection.listen(on: Self.accessChannel) { notifications in
                            changes.yield()
                            for try await _ in notifications { changes.yield() }
                        }
                    }
                } catch {
                    if Task.isCancelled { return }
                    logger.debug("listening for access changes stopped; again in 1 s", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: .seconds(1))
            }
        })
    }
}

/// The server refused the relay's login (wrong password, unknown role or database): a setting to fix.
public struct PostgresLoginRefused: Error, CustomStringConvertible {
    public var database: String
    public var state: String
    public var message: String
    public var description: String {
        "PostgreSQL at \(self.database) refused the login: \(self.message) (SQLSTATE \(self.state)); check postgres.url and password_file or password_env"
    }
}
