import Crypto
import Foundation
import Logging
import RelayAPI
import RelayModel
import RelayStore
import TestSupport
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

    @Test func onlyTimeAndHealthAreLeftForLater() {
        let stored = self.node(at: 0)
        #expect(NodeLiveness.changesOnlyLiveness(self.node(at: 60, load: 0.9), stored: stored, clusterMode: .all))
        #expect(!NodeLiveness.changesOnlyLiveness(self.node(at: 60), stored: nil, clusterMode: nil), "a node's first heartbeat")
        #expect(!NodeLiveness.changesOnlyLiveness(self.node(mode: .disabled, at: 60), stored: stored, clusterMode: .all))
        #expect(!NodeLiveness.changesOnlyLiveness(self.node(at: 60), stored: stored, clusterMode: .approvedOnly),
            "the cluster holds another node's mode: this one's is written again")
    }

    @Test func keptBeatsAreFlushedOnceWithTheirLatestTimeAndHealth() {
        var liveness = NodeLiveness()
        liveness.keep(self.node(at: 60, load: 0.7))
        liveness.keep(self.node(at: 120, load: 0.9))
        liveness.keep(self.node(at: 90, load: 0.1))  // arrived late: the newer one stays
        let flushed = liveness.takeUnwritten()
        #expect(flushed.map(\.lastHeartbeatAt) == [Self.t0.addingTimeInterval(120)])
        #expect(flushed.map(\.healthJSON) == ["{\"cpuLoad\":0.9}"])
        #expect(liveness.takeUnwritten().isEmpty, "nothing twice")
        liveness.unflushed(flushed)
        #expect(liveness.takeUnwritten().count == 1, "a failed flush goes out with the next")
    }

    @Test func aWholeWriteSettlesOnlyWhatIsOlder() {
        var liveness = NodeLiveness()
        liveness.keep(self.node(at: 60))
        liveness.written(self.node(at: 120))
        #expect(liveness.takeUnwritten().isEmpty, "the write carried a newer time")
        liveness.keep(self.node(at: 180))
        liveness.written(self.node(at: 150))  // a write that finished after a newer beat was kept
        #expect(liveness.takeUnwritten().map(\.lastHeartbeatAt) == [Self.t0.addingTimeInterval(180)])
    }

    @Test func readsShowTheLatestBeatBeforeItIsWritten() {
        var liveness = NodeLiveness()
        liveness.keep(self.node(at: 60, load: 0.9))
        let shown = liveness.overlay([self.node(at: 0)])
        #expect(shown.map(\.lastHeartbeatAt) == [Self.t0.addingTimeInterval(60)])
        #expect(shown.map(\.healthJSON) == ["{\"cpuLoad\":0.9}"])
        let cluster = ClusterRecord(id: "demo", description: "", createdAt: Self.t0, createdBy: "ops", lastHeartbeatAt: Self.t0)
        #expect(liveness.overlay(cluster).lastHeartbeatAt == Self.t0.addingTimeInterval(60))
        // A row another writer made newer wins.
        #expect(liveness.overlay([self.node(at: 90)]).map(\.lastHeartbeatAt) == [Self.t0.addingTimeInterval(90)])
    }

    /// A registered node `n1` of cluster `demo` on `fixture`, and a heartbeat sender for it.
    static func enrolledNode(_ fixture: Fixture) async throws -> String {
        let (_, root) = try await fixture.token("root", .ops)
        let enrollment = try await fixture.control.addCluster(CreateClusterRequest(id: "demo", description: ""), by: root)
        return try await fixture.control.register(RegisterRequest(enrollmentToken: enrollment.enrollmentToken, nodeID: "n1")).credential
    }

    static func beat(_ control: MissionControl, credential: String, mode: PrivacyMode = .all, load: Double) async throws {
        let health = NodeHealth(
            osName: "Linux", osVersion: "6", cpuCores: 2, cpuLoad: load, ramTotalBytes: 1, ramFreeBytes: 1, diskTotalBytes: 1,
            diskUsedBytes: 1, serverState: "running", masterNode: true, startedAt: Self.t0)
        let body = HeartbeatRequest(
            clusterID: "demo", nodeID: "n1", sourceType: "server", connectorVersion: "1.0",
            privacy: PrivacySettings(mode: mode, components: ["ui"]), health: health)
        _ = try await control.heartbeat(body, bearer: credential)
    }

    /// Through MissionControl and the SQLite store: the second heartbeat leaves the row alone, the
    /// API shows it anyway, and the flush writes it.
    @Test func theStoreIsWrittenAtTheFlush() async throws {
        let fixture = try Fixture()
        let credential = try await Self.enrolledNode(fixture)
        try await Self.beat(fixture.control, credential: credential, load: 0.25)
        let first = fixture.now
        #expect(try await fixture.store.nodes(clusterID: "demo").map(\.lastHeartbeatAt) == [first], "the first heartbeat is written at once")
        fixture.advance(60)
        try await Self.beat(fixture.control, credential: credential, load: 0.75)
        #expect(try await fixture.store.nodes(clusterID: "demo").map(\.lastHeartbeatAt) == [first], "no write for time and health")
        #expect(try await fixture.control.nodes(clusterID: "demo").map(\.lastHeartbeatAt) == [fixture.now], "the API shows it")
        #expect(try await fixture.control.cluster(id: "demo")?.lastHeartbeatAt == fixture.now)
        try await fixture.control.flushLiveness()
        let stored = try await fixture.store.nodes(clusterID: "demo")
        #expect(stored.map(\.lastHeartbeatAt) == [fixture.now])
        #expect(stored.first?.healthJSON.contains("0.75") == true)
        #expect(try await fixture.store.cluster(id: "demo")?.lastHeartbeatAt == fixture.now)
    }

    /// Two relay nodes on one store: a change written by one is seen by the other, which then
    /// writes a change back instead of taking it for a repeat of what it last saw.
    @Test func aModeChangeIsWrittenWhicheverRelayNodeSawTheLastOne() async throws {
        let first = try Fixture()
        let credential = try await Self.enrolledNode(first)
        let second = MissionControl(
            store: first.store, hasher: first.hasher, settings: .init(nodeName: "relay-2"), clock: { first.now }, logger: Logger(label: "test"))
        try await Self.beat(first.control, credential: credential, mode: .approvedOnly, load: 0.1)
        first.advance(60)
        try await Self.beat(second, credential: credential, mode: .all, load: 0.2)
        first.advance(60)
        try await Self.beat(first.control, credential: credential, mode: .approvedOnly, load: 0.3)
        #expect(try await first.store.nodes(clusterID: "demo").map(\.privacyMode) == [.approvedOnly])
        #expect(try await first.store.cluster(id: "demo")?.privacyMode == .approvedOnly)
    }

    /// The reconciler writes kept heartbeats on its tick, and the store's service before it closes.
    @Test func theReconcilersTickAndTheStoresStopFlush() async throws {
        let fixture = try Fixture()
        let credential = try await Self.enrolledNode(fixture)
        try await Self.beat(fixture.control, credential: credential, load: 0.1)
        fixture.advance(60)
        try await Self.beat(fixture.control, credential: credential, load: 0.2)
        let clock = ManualClock()
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let reconciler = AccessReconciler(
            control: fixture.control, registry: TunnelRegistry(), sessions: LiveSessions(), interval: .seconds(1), clock: clock)
        let services = RunningServices([reconciler], logger: logger)
        func stored() async throws -> Date? { try await fixture.store.nodes(clusterID: "demo").first?.lastHeartbeatAt }
        #expect(try await TestWait.poll { clock.pendingSleeps == [.seconds(1)] })
        #expect(try await stored() != fixture.now, "kept until the tick")
        clock.advance(by: .seconds(1))
        #expect(try await TestWait.poll { try await stored() == fixture.now }, "written on the tick")
        await services.stop()

        fixture.advance(60)
        try await Self.beat(fixture.control, credential: credential, load: 0.3)
        let store = RunningServices([StoreService(control: fixture.control)], logger: logger)
        await store.stop()
        let reopened = try SQLiteStore(path: fixture.path)
        #expect(try await reopened.nodes(clusterID: "demo").first?.lastHeartbeatAt == fixture.now, "written before the store closed")
    }
}
