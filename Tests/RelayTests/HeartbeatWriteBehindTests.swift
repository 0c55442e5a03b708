import Foundation
import Relay
import RelayAPI
import RelayModel
import RelayStore
import Testing

@testable import Relay

/// A heartbeat that changes only the time and the node's health costs no write: both are kept in
/// memory, shown by the API at once, and written behind in one transaction per flush.
@Suite struct HeartbeatWriteBehindTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    func node(_ id: String = "n1", mode: PrivacyMode = .all, at seconds: TimeInterval, load: Double = 0.5) -> NodeRecord {
        NodeRecord(
            clusterID: "demo", nodeID: id, sourceType: "server", connectorVersion: "1.0", privacyMode: mode,
            privacyJSON: "{\"mode\":\"\(mode.rawValue)\"}", healthJSON: "{\"cpuLoad\":\(load)}",
            lastHeartbeatAt: Self.t0.addingTimeInterval(seconds), registeredAt: Self.t0, remoteUIRequested: false)
    }

    @Test func onlyTheFirstBeatAndChangesAreWrittenAtOnce() {
        var liveness = NodeLiveness()
        #expect(liveness.beat(self.node(at: 0)) == .write, "a node not seen since the relay started")
        liveness.stored(self.node(at: 0), registeredAt: Self.t0)
        #expect(liveness.beat(self.node(at: 60, load: 0.9)) == .kept(previous: self.node(at: 0)))
        #expect(liveness.beat(self.node(mode: .disabled, at: 120)) == .write, "a mode change is written at once")
        #expect(liveness.beat(self.node("n2", at: 120)) == .write)
    }

    @Test func keptBeatsAreFlushedOnceWithTheirLatestTimeAndHealth() {
        var liveness = NodeLiveness()
        liveness.stored(self.node(at: 0), registeredAt: Self.t0)
        _ = liveness.beat(self.node(at: 60, load: 0.7))
        _ = liveness.beat(self.node(at: 120, load: 0.9))
        let flushed = liveness.takeUnwritten()
        #expect(flushed.map(\.lastHeartbeatAt) == [Self.t0.addingTimeInterval(120)])
        #expect(flushed.map(\.healthJSON) == ["{\"cpuLoad\":0.9}"])
        #expect(liveness.takeUnwritten().isEmpty, "nothing twice")
        liveness.unflushed(flushed)
        #expect(liveness.takeUnwritten().count == 1, "a failed flush goes out with the next")
    }

    @Test func readsShowTheLatestBeatBeforeItIsWritten() {
        var liveness = NodeLiveness()
        liveness.stored(self.node(at: 0), registeredAt: Self.t0)
        _ = liveness.beat(self.node(at: 60, load: 0.9))
        let shown = liveness.overlay([self.node(at: 0)])
        #expect(shown.map(\.lastHeartbeatAt) == [Self.t0.addingTimeInterval(60)])
        #expect(shown.map(\.healthJSON) == ["{\"cpuLoad\":0.9}"])
        let cluster = ClusterRecord(id: "demo", description: "", createdAt: Self.t0, createdBy: "ops", lastHeartbeatAt: Self.t0)
        #expect(liveness.overlay(cluster).lastHeartbeatAt == Self.t0.addingTimeInterval(60))
        // A row another writer made newer wins.
        #expect(liveness.overlay([self.node(at: 90)]).map(\.lastHeartbeatAt) == [Self.t0.addingTimeInterval(90)])
    }

    @Test func aFailedWriteForgetsTheNode() {
        var liveness = NodeLiveness()
        liveness.stored(self.node(at: 0), registeredAt: Self.t0)
        liveness.forget(cluster: "demo", node: "n1")
        #expect(liveness.beat(self.node(at: 60)) == .write)
    }

    /// Through MissionControl and the SQLite store: the second heartbeat leaves the row alone, the
    /// API shows it anyway, and the flush writes it.
    @Test func theStoreIsWrittenAtTheFlush() async throws {
        let fixture = try Fixture()
        let (_, root) = try await fixture.token("root", .ops)
        let enrollment = try await fixture.control.addCluster(CreateClusterRequest(id: "demo", description: ""), by: root)
        let registered = try await fixture.control.register(RegisterRequest(enrollmentToken: enrollment.enrollmentToken, nodeID: "n1"))
        func beat(load: Double) async throws {
            let health = NodeHealth(
                osName: "Linux", osVersion: "6", cpuCores: 2, cpuLoad: load, ramTotalBytes: 1, ramFreeBytes: 1, diskTotalBytes: 1,
                diskUsedBytes: 1, serverState: "running", masterNode: true, startedAt: HeartbeatWriteBehindTests.t0)
            let body = HeartbeatRequest(
                clusterID: "demo", nodeID: "n1", sourceType: "server", connectorVersion: "1.0",
                privacy: PrivacySettings(mode: .all, components: ["ui"]), health: health)
            _ = try await fixture.control.heartbeat(body, bearer: registered.credential)
        }
        try await beat(load: 0.25)
        let first = fixture.now
        #expect(try await fixture.store.nodes(clusterID: "demo").map(\.lastHeartbeatAt) == [first], "the first heartbeat is written at once")
        fixture.advance(60)
        try await beat(load: 0.75)
        #expect(try await fixture.store.nodes(clusterID: "demo").map(\.lastHeartbeatAt) == [first], "no write for time and health")
        #expect(try await fixture.control.nodes(clusterID: "demo").map(\.lastHeartbeatAt) == [fixture.now], "the API shows it")
        #expect(try await fixture.control.cluster(id: "demo")?.lastHeartbeatAt == fixture.now)
        try await fixture.control.flushLiveness()
        let stored = try await fixture.store.nodes(clusterID: "demo")
        #expect(stored.map(\.lastHeartbeatAt) == [fixture.now])
        #expect(stored.first?.healthJSON.contains("0.75") == true)
        #expect(try await fixture.store.cluster(id: "demo")?.lastHeartbeatAt == fixture.now)
    }
}
