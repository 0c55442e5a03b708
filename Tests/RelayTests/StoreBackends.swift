import Foundation
import Logging
import RelayStore
import TestSupport
import Testing

/// The store implementations every contract test runs against: SQLite always, PostgreSQL when a
/// test server is configured (`PostgresTestServer`; CI requires it).
enum StoreBackend: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case sqlite, postgres

    static var available: [StoreBackend] {
        PostgresTestServer.settings != nil || PostgresTestServer.required ? Self.allCases : [.sqlite]
    }

    var testDescription: String { self.rawValue }

    /// A fresh, empty database of this kind; `open` gives stores on it (several: several nodes).
    func makeDatabase() async throws -> TestDatabase {
        switch self {
        case .sqlite:
            return .sqlite(FileManager.default.temporaryDirectory.appendingPathComponent("store-\(UUID().uuidString).sqlite").path)
        case .postgres:
            return .postgres(try await PostgresTestServer.makeDatabase())
        }
    }
}

enum TestDatabase: Sendable {
    case sqlite(String)
    case postgres(PostgresSettings)

    func open() async throws -> any Store {
        switch self {
        case .sqlite(let path): return try SQLiteStore(path: path)
        case .postgres(let settings): return try await PostgresStore.open(settings, logger: storeTestLogger)
        }
    }

    func remove() async {
        switch self {
        case .sqlite(let path):
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        case .postgres(let settings):
            await PostgresTestServer.drop(settings)
        }
    }
}

/// A store on a fresh database for the length of `body`, then closed and removed.
func withStore<T>(_ backend: StoreBackend, _ body: (any Store) async throws -> T) async throws -> T {
    let database = try await backend.makeDatabase()
    let store = try await database.open()
    do {
        let result = try await body(store)
        try await store.close()
        await database.remove()
        return result
    } catch {
        try? await store.close()
        await database.remove()
        throw error
    }
}

/// Quiet unless TEST_LOG_LEVEL says otherwise (the database outage tests log on purpose).
let storeTestLogger: Logger = {
    var logger = Logger(label: "store-test")
    logger.logLevel = ProcessInfo.processInfo.environment["TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .critical
    return logger
}()
