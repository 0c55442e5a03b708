import Foundation
import RelayModel
import RelayStore
import Testing

/// A session's end, once recorded, is what the API and the audit show for good.
@Suite struct SessionRecordTests {
    /// The reconciler writes a live session's counts from a copy it read before the session closed;
    /// that write may land after the end is recorded, and must not reopen the session.
    @Test func aStaleLiveCopyNeverReopensAnEndedSession() async throws {
        let fixture = try Fixture()
        let live = SessionRecord(
            id: "s1", expert: "alice", clusterID: "demo", node: "node-1", component: "ui", requestID: 1, role: .admin,
            relayNode: "relay-test", startedAt: fixture.now)
        try await fixture.store.createSession(live)
        var counted = live
        counted.requests = 3
        try await fixture.store.updateSession(counted)
        #expect(try await fixture.store.session(id: "s1")?.requests == 3, "a live session's counts are written")

        var ended = counted
        ended.requests = 5
        ended.endedAt = fixture.now.addingTimeInterval(10)
        ended.endReason = "ended by the customer's connector: the customer turned remote access off"
        try await fixture.store.updateSession(ended)
        try await fixture.store.updateSession(counted)  // the stale copy, late

        let stored = try #require(try await fixture.store.session(id: "s1"))
        #expect(stored == ended)
        #expect(try await fixture.store.sessions(live: true).isEmpty)
    }
}
