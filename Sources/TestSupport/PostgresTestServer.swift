import Foundation
import Logging
import PostgresNIO
import RelayStore

/// The PostgreSQL server the tests run against, named by `RELAY_TEST_POSTGRES_URL` (a role that may
/// create databases) and `RELAY_TEST_POSTGRES_PASSWORD_FILE`; `Scripts/postgres-test-server.sh`
/// starts a throwaway one and prints both. Each test gets a database of its own.
public enum PostgresTestServer {
    /// The server's settings, or nil when no server is configured.
    public static var settings: PostgresSettings? {
        let environment = ProcessInfo.processInfo.environment
        guard let url = environment["RELAY_TEST_POSTGRES_URL"], var settings = try? PostgresSettings.parse(url: url) else { return nil }
        if let file = environment["RELAY_TEST_POSTGRES_PASSWORD_FILE"] {
            settings.password = (try? String(contentsOfFile: file, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        settings.poolSize = 4
        // Generous: under a loaded machine a new connection (SCRAM in a debug build) has taken over
        // 5 s. Tests of the deadline itself set their own.
        settings.operationTimeout = .seconds(20)
        return settings
    }

    /// CI sets `RELAY_TEST_POSTGRES_REQUIRED=1`: there, a missing server fails the tests instead of
    /// leaving the PostgreSQL variants out.
    public static var required: Bool { ProcessInfo.processInfo.environment["RELAY_TEST_POSTGRES_REQUIRED"] == "1" }

    /// A new, empty database on the server; `drop` removes it.
    public static func makeDatabase() async throws -> PostgresSettings {
        guard var settings = self.settings else { throw MissingServer() }
        let name = "relay_test_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(16)
        try await self.admin(settings) { try await $0.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: $1) }
        settings.database = String(name)
        return settings
    }

    public static func drop(_ database: PostgresSettings) async {
        guard let settings = self.settings, database.database.hasPrefix("relay_test_") else { return }
        try? await self.admin(settings) {
            try await $0.query(PostgresQuery(unsafeSQL: "DROP DATABASE IF EXISTS \(database.database) WITH (FORCE)"), logger: $1)
        }
    }

    /// Runs `sql` as the test role, connected to the server's own database (not a test's).
    public static func administer(_ sql: String) async throws {
        guard let settings = self.settings else { throw MissingServer() }
        try await self.admin(settings) { try await $0.query(PostgresQuery(unsafeSQL: sql), logger: $1) }
    }

    private static func admin(_ settings: PostgresSettings, _ body: @escaping @Sendable (PostgresConnection, Logger) async throws -> Void) async throws {
        var logger = Logger(label: "postgres-test-server")
        logger.logLevel = .error
        let client = PostgresClient(
            configuration: PostgresClient.Configuration(
                host: settings.host, port: settings.port, username: settings.username, password: settings.password,
                database: settings.database, tls: .disable),
            backgroundLogger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            try await client.withConnection { try await body($0, logger) }
        }
    }

    public struct MissingServer: Error, CustomStringConvertible {
        public var description: String {
            "no PostgreSQL test server: set RELAY_TEST_POSTGRES_URL and RELAY_TEST_POSTGRES_PASSWORD_FILE (eval \"$(Scripts/postgres-test-server.sh start)\")"
        }
    }
}
