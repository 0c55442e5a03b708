@testable import CustomerAudit
import DemoComponentKit
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Relay
import RelayCtlKit
import Testing
import TunnelCore

/// Stopping a relay node (SIGTERM: a graceful shutdown of its services) drains it: requests in
/// flight finish, new ones wait for a connection elsewhere (here: the same node, restarted), and
/// every connection closes with 1012 so that relayctl and connectors come back on their own.
@Suite(.serialized) struct RelayDrainTests {
    @Test func aDrainingRelayFinishesTheDownloadAndTheSessionGoesOnAfterItsRestart() async throws {
        // The drain's bound is the test's to pass (never, here): on a machine loaded by the whole
        // suite starting at once, the download once took longer than 30 s of real time and was cut
        // at the bound; `theRelaysDrainIsBounded` covers the bound itself.
        let deadlines = Deadlines.Manual()
        let stack = try await TestStack.start(drainDeadlines: deadlines.deadlines)
        let closes = NIOLockedValueBox<[WebSocketPeerClosed]>([])
        // The request asked mid-drain waits for the drain and the restart; on a loaded machine that
        // can take longer than relayctl's 30 s.
        var target = try stack.sessionTarget()
        target.reconnectWait = .seconds(120)
        let client = try SessionClient(target: target, group: TestStack.group, logger: TestStack.quietLogger) { closed in
            closes.withLockedValue { $0.append(closed) }
        }
        try await client.connect()
        let session = try await LocalListener.startConduit(host: "127.0.0.1", port: 0, session: client, group: TestStack.group)
        let port = session.localAddress!.port!
        let size = 6 << 20
        let download = try await PacedDownload.start(port: port, path: "/bytes/\(size)")
        try await stack.waitUntil("the download to start") { download.received > 0 }
        let sessionID = try #require(stack.relay.sessions.all.first?.record.id)

        async let stopped: Void = stack.relayServices.stop()
        try await stack.waitUntil("the relay to stop accepting") { !(await Self.accepts(port: stack.relayPort)) }
        // The browser's next request, asked while the node drains: not on the draining connection
        // (GOAWAY), but on the next one relayctl dials: it waits for the node to come back.
        let later = Task { try await TestHTTPConnection.request(port: port, .GET, "/api/status") }
        #expect(stack.relay.registry.tunnels(cluster: "demo").count == 1, "the tunnel stays while the download runs")
        download.readFreely()
        let result = try await download.result()
        #expect(result.status == 200 && result.bodyBytes == size && result.sha256 == DemoComponent.sha256OfPattern(size: size))
        await stopped
        #expect(closes.withLockedValue { $0 }.map(\.code) == [.unknown(WireCloseCode.relayDraining)], "relayctl is told the node drained")
        try await stack.waitUntil("the connector to see its tunnel close") { stack.connector.connectedURLs.isEmpty }

        let (restarted, services) = try await stack.restartRelay()
        try await stack.waitUntil("the connector to dial the restarted node") { restarted.registry.tunnels(cluster: "demo").count == 1 }
        let answer = try await later.value
        #expect(answer.status == .ok, "the request asked during the drain is answered after the restart: \(answer.text)")
        #expect(closes.withLockedValue { $0 }.count == 1, "relayctl's session goes on: no close since the drain")

        let ended = try #require(try await restarted.control.store.session(id: sessionID))
        #expect(ended.endReason?.contains("draining") == true && ended.endedAt != nil, "\(String(describing: ended.endReason))")
        try? await session.close()
        await services.stop()
        await stack.stop()
    }

    /// A request that never finishes holds the drain for `drain_timeout` at most (the deadline
    /// driven by the test); the customer's audit still records it.
    @Test func theRelaysDrainIsBounded() async throws {
        let trickle = try await TestComponentServer.start { TrickleComponent() }
        let deadlines = Deadlines.Manual()
        let stack = try await TestStack.start(
            extraComponents: ["trickle": trickle.url], drainDeadlines: deadlines.deadlines)
        let closes = NIOLockedValueBox<[WebSocketPeerClosed]>([])
        let client = try SessionClient(
            target: try stack.sessionTarget(component: "trickle"), group: TestStack.group, logger: TestStack.quietLogger
        ) { closed in closes.withLockedValue { $0.append(closed) } }
        try await client.connect()
        let session = try await LocalListener.startConduit(host: "127.0.0.1", port: 0, session: client, group: TestStack.group)
        // 1 MiB at 50 KiB/s: still running when the drain's deadline passes.
        let download = try await PacedDownload.start(port: session.localAddress!.port!, path: "/slow")
        try await stack.waitUntil("the slow download to start") { download.received > 0 }
        #expect(stack.privacy.runningRequests == 1, "the download runs at the connector")
        async let stopped: Void = stack.relayServices.stop()
        // The drain's bound, and the hard cut 5 s after it for a peer that reads nothing.
        try await stack.waitUntil("the drain's deadlines to be armed") { deadlines.armed == 2 }
        #expect(closes.withLockedValue { $0 }.isEmpty, "nothing is cut before drain_timeout")
        deadlines.expireAll()
        await stopped
        try await stack.waitUntil("relayctl to hear why") { !closes.withLockedValue { $0 }.isEmpty }
        #expect(closes.withLockedValue { $0 }.first?.code == .unknown(WireCloseCode.relayDraining))
        try await stack.waitUntil("the connector to record the cut request") {
            let records = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 500)
            return records.contains { $0.event == "request" && $0.path == "/slow" && $0.status == 200 }
        }
        try? await session.close()
        await stack.stop()
        try await trickle.close()
    }

    /// Whether a TCP connection to the port is accepted right now.
    static func accepts(port: Int) async -> Bool {
        do {
            let channel = try await ClientBootstrap(group: TestStack.group).connect(host: "127.0.0.1", port: port).get()
            try? await channel.close()
            return true
        } catch {
            return false
        }
    }
}
