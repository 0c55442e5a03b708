import Foundation
import RelayAPI
import RelayModel
import RelayCtlKit
import Testing
import TunnelCore

@testable import Relay

/// Refusals of unauthenticated callers cannot flood the audit trail; what callers write into it is
/// capped and escaped; the trail has a retention.
@Suite struct AnonymousDenialTests {
    typealias Key = DenialKey

    @Test func theFirstOfAMinuteIsRecordedTheRestSummedUp() {
        var aggregator = DenialAggregator(maxKeys: 3)
        let start = Date(timeIntervalSince1970: 1_800_000_000)  // on a minute boundary
        let key = Key(source: "10.0.0.1", action: "heartbeat", reason: "invalid node credential")
        #expect(aggregator.count(key, at: start).record == key)
        for second in 1..<60 { #expect(aggregator.count(key, at: start.addingTimeInterval(Double(second))).record == nil) }
        let other = Key(source: "10.0.0.2", action: "heartbeat", reason: "invalid node credential")
        #expect(aggregator.count(other, at: start.addingTimeInterval(30)).record == other, "each source is told apart")
        // The next minute starts: the previous one is summed up, and the first refusal is recorded again.
        let next = aggregator.count(key, at: start.addingTimeInterval(61))
        #expect(next.record == key)
        #expect(next.summaries == [.init(key: key, minute: start, count: 59)], "one summary; a single refusal needs none")
        #expect(aggregator.flush(at: start.addingTimeInterval(62)).isEmpty, "the minute is not over yet")
        #expect(aggregator.flush(at: start.addingTimeInterval(125)) == [])
    }

    @Test func sourcesBeyondTheCapFoldIntoOther() {
        var aggregator = DenialAggregator(maxKeys: 2)
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let keys = (1...5).map { Key(source: "10.0.0.\($0)", action: "session.open", reason: "bad token") }
        let recorded = keys.map { aggregator.count($0, at: now).record?.source }
        #expect(recorded == ["10.0.0.1", "10.0.0.2", "other", nil, nil])
        let summaries = aggregator.flush(at: now.addingTimeInterval(60))
        #expect(summaries.map(\.key.source) == ["other"] && summaries.first?.count == 2)
        // Several may be recorded one by one a minute (the connector's refusals per session).
        var tally = MinuteTally<String>(recordedPerMinute: 3) { _ in "other" }
        #expect((0..<5).map { _ in tally.count("s1", at: now).record } == ["s1", "s1", "s1", nil, nil])
        #expect(tally.close("s1") == 2 && tally.close("s1") == 0)
    }

    @Test func auditedTextIsCappedAndEscaped() {
        #expect(AuditText.clean("ticket 42") == "ticket 42")
        #expect(AuditText.clean("a\nb\r\u{1b}[31m\\") == "a\\nb\\r\\u{1b}[31m\\\\")
        let long = AuditText.clean(String(repeating: "é", count: 500))!
        #expect(long.utf8.count <= 256 && long.hasSuffix("..."))
        #expect(AuditText.clean(nil) == nil)
    }

    @Test func aFloodOfBadCredentialsLeavesTwoRecordsPerSourceAndMinute() async throws {
        let fixture = try Fixture()
        for _ in 0..<200 {
            await #expect(throws: Error.self) {
                _ = try await fixture.control.authenticateUser(bearer: "relay_tok_nonsense", action: "session.open", source: "198.51.100.7")
            }
        }
        fixture.advance(60)
        try await fixture.control.auditHousekeeping()
        let records = try await fixture.deniedAudit(action: "session.open")
        #expect(records.count == 2, "\(records.map { $0.reason ?? "" })")
        #expect(records.first?.reason == "invalid, expired or revoked token (from 198.51.100.7)")
        #expect(records.last?.reason?.hasPrefix("199 more like this from 198.51.100.7") == true)
    }

    @Test func recordsPastRetentionArePruned() async throws {
        let fixture = try Fixture()
        let now = fixture.now
        try await fixture.store.appendAudit([
            AuditRecord(time: now.addingTimeInterval(-401 * 86_400), actor: "relay", action: "old"),
            AuditRecord(time: now.addingTimeInterval(-399 * 86_400), actor: "relay", action: "kept"),
        ])
        try await fixture.control.auditHousekeeping()
        let actions = try await fixture.store.audit(since: nil, afterID: 0, limit: 100).map(\.action)
        #expect(actions == ["kept"])
    }

    @Test func reasonsWithControlCharactersAreRefusedAndTablesShowThemEscaped() async throws {
        let fixture = try Fixture()
        let (_, root) = try await fixture.token("root", .ops)
        _ = try await fixture.token("alice", .expert)
        _ = try await fixture.control.addCluster(CreateClusterRequest(id: "demo", description: ""), by: root)
        for reason in ["ticket 1\napprove request 2 instead", "\u{1b}[2Jclean screen", "tab\there", "bidi \u{202e}txt.exe"] {
            await #expect(throws: RelayError.self, "\(visibleText(reason))") {
                _ = try await fixture.control.createRequest(
                    CreateAccessRequest(clusterID: "demo", expert: "alice", reason: reason, role: .viewer, durationSeconds: 60), by: root)
            }
        }
        // What got in some other way (older records) is shown escaped in every table.
        #expect(TextTable.render(["REASON", "X"], [["a\nb\u{1b}[31m", "x"]]) == "REASON          X\na\\nb\\u{1b}[31m  x")
    }
}
