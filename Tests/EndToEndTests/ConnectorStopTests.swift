@testable import CustomerAudit
import Connector
import DemoComponentKit
import Foundation
import NIOCore
import NIOPosix
import TestSupport
import Testing
import TunnelCore

/// Stopping a connector (SIGTERM: a graceful shutdown of its services) lets the requests in
/// flight finish, refuses new ones with a reason, closes its tunnels, and leaves a complete audit.
@Suite(.serialized) struct ConnectorStopTests {
    @Test func aStoppedConnectorFinishesTheDownloadInFlightThenClosesItsTunnels() async throws {
        // A drain long enough for a loaded machine: this test is about finishing, the next one about the bound.
        let stack = try await TestStack.start { config in config.drainMilliseconds = 120_000 }
        let session = try await stack.openSession()
        let port = session.localAddress!.port!
        // Far more than the path buffers (two stream windows, each hop's write limit, relayctl's
        // socket buffer: about 5 MiB) beyond where the reader holds (4 MiB): the connector's stream
        // stays open until the test reads freely, whatever the scheduling. With 6 MiB the connector
        // could hand over its last byte early, stop at once, and answer no request while stopping.
        let size = 12 << 20
        let download = try await PacedDownload.start(port: port, path: "/bytes/\(size)")
        try await stack.waitUntil("the download to start") { download.received > 0 }
        #expect(stack.privacy.runningRequests == 1)

        async let stopped: Void = stack.connectorServices.stop()
        // While it drains: new requests are refused with the reason, the download goes on.
        var refusal: TestResponse?
        try await stack.waitUntil("a new request to be refused") {
            refusal = try await TestHTTPConnection.request(port: port, .GET, "/api/status")
            return refusal?.status == .serviceUnavailable
        }
        #expect(refusal?.headers.first(name: WireHeader.error) == "connector_stopping", "\(refusal?.text ?? "")")
        // While the download is still running at the connector, its tunnel stays. (The kernel's
        // socket buffers can grow large enough to take its last byte early: then the connector has
        // nothing running and closes; the download still completes, checked below.)
        if stack.privacy.runningRequests == 1 {
            #expect(stack.relay.registry.tunnels(cluster: "demo").count == 1 || stack.privacy.runningRequests == 0, "the tunnel stays while a request runs")
        }
        download.readFreely()
        let result = try await download.result(seconds: 110)  // within the drain's 120 s
        #expect(result.status == 200 && result.bodyBytes == size && result.sha256 == DemoComponent.sha256OfPattern(size: size))
        await stopped
        try await stack.waitForTunnels(0)

        let records = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 500)
        let downloaded = try #require(records.last { $0.event == "request" && $0.path == "/bytes/\(size)" })
        #expect(downloaded.status == 200 && downloaded.bytesOut == Int64(size) && downloaded.decision == "allow")
        #expect(records.contains { $0.event == "session.end" && $0.reason == "the connector stopped" })
        #expect(records.contains { $0.event == "request" && $0.reason?.contains("connector_stopping") == true })
        try? await session.close()
        await stack.stop()
    }

    /// A request that never finishes holds the stop for `relay.drain_timeout` at most (on the
    /// connector's clock, driven by the test).
    @Test func theDrainIsBounded() async throws {
        let trickle = try await TestComponentServer.start { TrickleComponent() }
        let clock = ManualClock()
        let stack = try await TestStack.start(
            extraComponents: ["trickle": trickle.url], approve: false, timers: clock
        ) { config in config.drainMilliseconds = 300 }
        try await stack.waitUntil("the first heartbeat's answer") { stack.driver.answersReceived == 1 }
        _ = try await stack.createRequest(cluster: "demo", role: .admin)
        clock.advance(by: .seconds(1))  // the next heartbeat brings the flag
        try await stack.waitForTunnels(1)
        let session = try await stack.openSession(component: "trickle")
        // 1 MiB at 50 KiB/s: still running when the drain's time is up.
        let download = try await PacedDownload.start(port: session.localAddress!.port!, path: "/slow")
        try await stack.waitUntil("the slow download to start") { download.received > 0 }
        #expect(stack.privacy.runningRequests == 1, "the download runs at the connector")
        async let stopped: Void = stack.connectorServices.stop()
        try await ConnectorTimerTests.untilSleeping(clock, .milliseconds(300))
        #expect(stack.relay.registry.tunnels(cluster: "demo").count == 1, "the tunnel stays until the drain is over")
        clock.advance(by: .milliseconds(300))
        await stopped
        try await stack.waitForTunnels(0)
        let records = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 500)
        #expect(records.contains { $0.event == "request" && $0.path == "/slow" && $0.status == 200 }, "the cut download is recorded too")
        try? await session.close()
        await stack.stop()
        try await trickle.close()
    }
}
