@testable import CustomerAudit
import Foundation
import NIOCore
import Relay
import TestSupport
import Testing
import TunnelCore

/// A websocket never ends on its own, so stopping a relay node or a connector does not wait for
/// it: it is reset at once (the page reconnects), and the stop finishes as soon as the plain
/// requests in flight have.
@Suite(.serialized) struct WebSocketDrainTests {
    @Test func aDrainingRelayResetsOpenWebSocketsInsteadOfWaitingForItsBound() async throws {
        // The drain's bound never passes unless the test says so: only the reset can end this drain.
        let deadlines = Deadlines.Manual()
        let stack = try await TestStack.start(drainDeadlines: deadlines.deadlines)
        let listener = try await stack.openSession()
        let socket = try await WebSocketTunnelTests.open(listener.localAddress!.port!, "/ws/live")
        _ = try await socket.next()
        let stopping = Task { await stack.relayServices.stop() }
        let closed = try await TestWait.poll { !socket.channel.isActive }
        #expect(closed, "the browser's websocket was closed by the drain")
        try await stack.waitUntil("the drain to finish without its bound") { stack.relay.sessions.all.isEmpty }
        deadlines.expireAll()  // lets a failed run end
        await stopping.value
        try? await listener.close()
        await stack.stop()
    }

    @Test func aStoppingConnectorResetsOpenWebSocketsAndRecordsWhy() async throws {
        // A bound far longer than the test's own waits: only the reset can end the stop in time.
        let stack = try await TestStack.start { config in config.drainMilliseconds = 600_000 }
        let listener = try await stack.openSession()
        let socket = try await WebSocketTunnelTests.open(listener.localAddress!.port!, "/ws/live")
        _ = try await socket.next()
        let stopping = Task { await stack.connectorServices.stop() }
        #expect(try await TestWait.poll { !socket.channel.isActive }, "the browser's websocket was closed by the stop")
        try await stack.waitForTunnels(0)
        await stopping.value
        let records = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 500)
        let ended = try #require(records.last { $0.event == "websocket" && $0.path == "/ws/live" })
        #expect(ended.reason == "stream reset: the connector is stopping", "\(String(describing: ended.reason))")
        try? await listener.close()
        await stack.stop()
    }
}
