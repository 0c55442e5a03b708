import Foundation
import Logging
import RelayModel
import RelayStore
import TestSupport
import Testing

/// What only the shared store has: migrations that several nodes start at once, a database that
/// goes away and comes back, and change announcements between nodes.
@Suite(.enabled(if: PostgresTestServer.settings != nil || PostgresTestServer.required))
struct PostgresStoreTests {
    let logger = storeTestLogger

    @Test func severalNodesStartingAtOnceMigrateOnceAndCheckSaysWhatWouldRun() async throws {
        let database = try await PostgresTestServer.makeDatabase()
        #expect(try await PostgresStore.pendingMigrations(database, logger: self.logger) == ["v1", "v2", "v3"])
        #expect(try SQLiteStore.pendingMigrations(path: "/nonexistent/relay.sqlite") == ["v1", "v2", "v3"], "the same history on both")
        let stores = try await withThrowingTaskGroup(of: PostgresStore.self) { group in
            for _ in 0..<4 { group.addTask { try await PostgresStore.open(database, logger: self.logger) } }
            return try await group.reduce(into: [PostgresStore]()) { $0.append($1) }
        }
        #expect(stores.count == 4)
        #expect(try await PostgresStore.pendingMigrations(database, logger: self.logger).isEmpty)
        // Each node works on the one schema.
        try await stores[0].createToken(TokenRecord(name: "t", role: .ops, tokenHash: "h", createdAt: Date(), createdBy: "x"))
        #expect(try await stores[3].tokens().map(\.name) == ["t"])
        for store in stores { try await store.close() }
        await PostgresTestServer.drop(database)
    }

    @Test func aDatabaseThatGoesAwayFailsCallsAtOnceAndTheStoreRecoversByItself() async throws {
        var database = try await PostgresTestServer.makeDatabase()
        database.operationTimeout = .seconds(3)
        let store = try await PostgresStore.open(database, logger: self.logger)
        _ = try await store.tokens()

        // As in a restart: connections cut, new ones refused.
        try await PostgresTestServer.administer("ALTER DATABASE \(database.database) ALLOW_CONNECTIONS false")
        try await PostgresTestServer.administer(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '\(database.database)' AND pid <> pg_backend_pid()")
        // Calls find out: a lost connection, or none made in time (a slow answer alone does not count).
        #expect(try await TestWait.poll(seconds: 60) {
            _ = try? await store.tokens()
            return store.unavailability != nil
        }, "the store takes the database for gone")
        let reason = try #require(store.unavailability)
        // Every call now fails at once with that reason, not after a deadline of its own.
        let started = ContinuousClock.now
        await #expect(throws: StoreUnavailable(reason: reason)) { try await store.clusters() }
        #expect(ContinuousClock.now - started < .seconds(3), "not after a deadline of its own (3 s here)")
        #expect("\(StoreUnavailable(reason: reason))".hasPrefix("the relay's database is unavailable ("))

        try await PostgresTestServer.administer("ALTER DATABASE \(database.database) ALLOW_CONNECTIONS true")
        #expect(try await TestWait.poll { (try? await store.tokens()) != nil }, "the store answers again once the database is back")
        try await store.close()
        await PostgresTestServer.drop(database)
    }

    @Test func anAccessChangeAnnouncedByOneNodeReachesTheOthers() async throws {
        let database = try await PostgresTestServer.makeDatabase()
        let one = try await PostgresStore.open(database, logger: self.logger)
        let two = try await PostgresStore.open(database, logger: self.logger)
        var changes = two.accessChanges().makeAsyncIterator()
        _ = await changes.next()  // listening (the start counts as a change: some may have been missed)
        await one.announceAccessChange()
        #expect(await changes.next() != nil)
        try await one.close()
        try await two.close()
        #expect(await changes.next() == nil, "the stream ends when the store closes")
        await PostgresTestServer.drop(database)
    }

    @Test func thePasswordIsNeverInTheURL() throws {
        #expect(throws: PostgresSettingsError.self) { try PostgresSettings.parse(url: "postgres://relay:secret@db:5432/relay") }
        let settings = try PostgresSettings.parse(url: "postgresql://relay@db.example.com:6543/relay")
        #expect(settings == PostgresSettings(host: "db.example.com", port: 6543, username: "relay", database: "relay"))
        var withPassword = settings
        withPassword.password = "canary-db-password"
        #expect(!withPassword.displayURL.contains("canary"))
        #expect(!"\(StoreUnavailable(reason: "connectionError"))".contains("canary"))
    }
}
