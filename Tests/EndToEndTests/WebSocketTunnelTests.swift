@testable import Connector
import CustomerAudit
import DemoComponentKit
import Foundation
import NIOCore
import NIOHTTP1
import NIOWebSocket
import RelayAPI
import RelayCtlKit
import Testing
import TunnelCore

/// A component's websocket through the whole path: browser-like client -> relayctl's local port
/// (HTTP/1.1 upgrade) -> relay -> connector (one extended CONNECT stream on each HTTP/2 link) ->
/// the component (its own HTTP/1.1 upgrade).
@Suite(.serialized) struct WebSocketTunnelTests {
    static func open(_ port: Int, _ path: String, host: String = "127.0.0.1", headers: [(String, String)] = []) async throws -> TestWebSocket {
        switch try await TestWebSocket.connect(port: port, path: path, host: host, headers: headers) {
        case .upgraded(let socket): return socket
        case .refused(let status, let headers, let body):
            Issue.record("refused: \(status.code) \(headers.first(name: WireHeader.error) ?? "") \(body)")
            throw TestWebSocket.Timeout(what: "an upgrade")
        }
    }

    @Test func messagesEchoBothWaysAndTheCustomerAuditsOpenAndClose() async throws {
        let stack = try await TestStack.start()
        let listener = try await stack.openSession()
        let port = listener.localAddress!.port!
        let socket = try await Self.open(port, "/ws/echo", headers: [("sec-websocket-protocol", "demo.v1")])
        #expect(socket.response.headers.first(name: "sec-websocket-protocol") == "demo.v1", "the component's choice reaches the client")

        try await socket.send(text: "hello through the tunnel")
        let echo = try await socket.next()
        #expect(echo.opcode == .text && String(buffer: echo.unmaskedData) == "hello through the tunnel")

        // One 10 MiB message, both ways, byte for byte.
        let block = (0..<(64 << 10)).map { DemoComponent.patternByte(at: $0 &* 7) }
        var big = socket.channel.allocator.buffer(capacity: 10 << 20)
        for index in 0..<160 {
            big.writeBytes(block)
            big.writeInteger(UInt32(index))  // no two blocks alike
        }
        try await socket.send(.binary, big)
        // Generous: 20 MiB masked and unmasked byte by byte on a debug build, beside the other
        // suites and a rebuild, once took over 60 s.
        let back = try await socket.next(seconds: 180)
        #expect(back.opcode == .binary && back.unmaskedData == big)

        try await socket.close()
        try await stack.waitUntil("the component to see the websocket closed") { stack.component.counters.webSocketsClosed == 1 }
        #expect(stack.component.counters.webSocketsOpened == 1)

        try await stack.waitUntil("the websocket's audit record") {
            stack.privacy.audit.sync()
            return try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 100).contains { $0.event == "websocket" }
        }
        let records = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 100)
        let opened = try #require(records.first { $0.event == "websocket.open" })
        let closed = try #require(records.first { $0.event == "websocket" })
        #expect(opened.path == "/ws/echo" && opened.decision == "allow" && opened.expert == "alice" && opened.component == "ui")
        #expect(closed.path == "/ws/echo" && closed.method == "GET" && closed.status == 200 && closed.decision == "allow")
        // Frame bytes each way: the 10 MiB message and the text, with their frame headers.
        #expect((closed.bytesIn ?? 0) > 10 << 20 && (closed.bytesOut ?? 0) > 10 << 20)
        #expect(closed.durationMs != nil)
        try await listener.close()
        await stack.stop()
    }

    @Test func aLiveViewPushesWithoutBeingAsked() async throws {
        let stack = try await TestStack.start()
        let listener = try await stack.openSession()
        let socket = try await Self.open(listener.localAddress!.port!, "/ws/live")
        let first = try await socket.next()
        let second = try await socket.next()
        #expect(String(buffer: first.unmaskedData) == "{\"tick\":1}" && String(buffer: second.unmaskedData) == "{\"tick\":2}")
        try await socket.close()
        try await listener.close()
        await stack.stop()
    }

    @Test func aPageFromAnotherSiteCannotOpenOneButTheListenersOwnPagesCan() async throws {
        let stack = try await TestStack.start()
        let listener = try await stack.openSession()
        let port = listener.localAddress!.port!
        guard case .refused(let status, let headers, let body) = try await TestWebSocket.connect(
            port: port, path: "/ws/echo", headers: [("origin", "https://evil.example")])
        else {
            Issue.record("a cross-site websocket was let through")
            return
        }
        #expect(status == .forbidden && headers.first(name: WireHeader.error) == "cross_site_request")
        #expect(body.contains("https://evil.example"))
        #expect(stack.component.counters.webSocketsOpened == 0, "nothing reached the component")

        // Another of the port's own names is another origin too: a page is trusted on its own host only.
        guard case .refused(let other, _, _) = try await TestWebSocket.connect(
            port: port, path: "/ws/echo", host: "127.0.0.1", headers: [("origin", "http://localhost:\(port)")])
        else {
            Issue.record("a page of another host of the port opened a websocket")
            return
        }
        #expect(other == .forbidden)
        for host in ["127.0.0.1", "localhost", "ui.demo.localhost"] {
            let origin = "http://\(host):\(port)"
            let socket = try await Self.open(port, "/ws/echo", host: host, headers: [("origin", origin)])
            try await socket.send(text: origin)
            #expect(String(buffer: try await socket.next().unmaskedData) == origin)
            try await socket.close()
        }
        try await listener.close()
        await stack.stop()
    }

    @Test func aComponentThatRefusesTheUpgradeAnswersThroughAndPlainRequestsGoOn() async throws {
        let stack = try await TestStack.start()
        let listener = try await stack.openSession()
        let port = listener.localAddress!.port!
        // The demo component upgrades only /ws/echo and /ws/live: elsewhere its 404 comes back.
        guard case .refused(let status, _, _) = try await TestWebSocket.connect(port: port, path: "/nowhere") else {
            Issue.record("the component never agreed to this upgrade")
            return
        }
        #expect(status == .notFound)
        // A success that is not the 101 is no websocket: the component's HTTP/1 connection would
        // otherwise read the websocket's bytes as requests the policy never saw.
        guard case .refused(let notUpgraded, let headers, let body) = try await TestWebSocket.connect(port: port, path: "/api/status") else {
            Issue.record("a 200 without switching protocols was taken for a websocket")
            return
        }
        #expect(notUpgraded == .badGateway && headers.first(name: WireHeader.error) == "upstream_unavailable", "\(body)")
        #expect(body.contains("without switching to a websocket"))
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/api/status").status == .ok)
        try await listener.close()
        await stack.stop()
    }

    @Test func aModeChangeCutsARunningWebSocket() async throws {
        let stack = try await TestStack.start()
        let listener = try await stack.openSession()
        let socket = try await Self.open(listener.localAddress!.port!, "/ws/live")
        _ = try await socket.next()
        let applied: SettingsApplied = try await CustomerControlTests.control(stack).post(ControlPath.mode, ModeChange(mode: .readOnly, by: "carol"))
        #expect(applied.streamsReset == 1, "readOnly lowers alice to viewer, who gets no websockets on paths not listed")
        try await stack.waitUntil("the websocket to be cut") { !socket.channel.isActive }
        try await listener.close()
        await stack.stop()
    }

    /// The customer's kill and the session's maximum length cut a running websocket like any
    /// running request, and its record says why.
    @Test(arguments: ["kill", "length"]) func aKillOrTheLengthLimitCutsARunningWebSocket(_ how: String) async throws {
        let stack = try await TestStack.start { config in config.maxSessionMilliseconds = 3_600_000 }
        let listener = try await stack.openSession()
        let socket = try await Self.open(listener.localAddress!.port!, "/ws/live")
        _ = try await socket.next()
        if how == "kill" {
            let live: [ConnectorSession] = try await CustomerControlTests.control(stack).get(ControlPath.sessions)
            let _: ConnectorSession = try await CustomerControlTests.control(stack).post(ControlPath.kill(live[0].id), CustomerActor(by: "carol"))
        } else {
            stack.clock.advance(seconds: 3601)
            stack.privacy.sweep()  // what the once-a-second sweep does, on the moved clock
        }
        try await stack.waitUntil("the websocket to be cut") { !socket.channel.isActive }
        try await stack.waitUntil("the websocket's record") {
            try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 200).contains { $0.event == "websocket" }
        }
        let record = try #require(try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 200).last { $0.event == "websocket" })
        let why = how == "kill" ? "killed by the customer (carol)" : "maximum session length"
        #expect(record.reason?.hasPrefix("stream reset:") == true && record.reason?.contains(why) == true, "\(String(describing: record.reason))")
        try await listener.close()
        await stack.stop()
    }

    /// An open websocket keeps its session alive while it carries bytes, and not a moment longer
    /// than the customer's idle timeout once it carries nothing.
    @Test func anOpenWebSocketThatCarriesNothingEndsAtTheIdleTimeout() async throws {
        let stack = try await TestStack.start { config in config.idleTimeoutMilliseconds = 60_000 }
        let listener = try await stack.openSession()
        let socket = try await Self.open(listener.localAddress!.port!, "/ws/echo")
        try await socket.send(text: "still here")
        _ = try await socket.next()
        stack.clock.advance(seconds: 45)
        try await socket.send(text: "and here")  // bytes 45 s in: the idle clock starts again
        _ = try await socket.next()
        stack.clock.advance(seconds: 45)  // 90 s since the session began, 45 s since the last byte
        stack.privacy.sweep()  // what the once-a-second sweep does, on the moved clock
        #expect(socket.channel.isActive && stack.privacy.sessions.first?.endReason == nil, "45 s without bytes is not idle yet")
        stack.clock.advance(seconds: 20)
        try await stack.waitUntil("the idle websocket to be cut") { !socket.channel.isActive }
        #expect(stack.privacy.sessions.first?.endReason == "the session was idle for the customer's idle timeout (1m)")
        try await listener.close()
        await stack.stop()
    }

    @Test func viewersOpenWebSocketsOnlyWhereTheCustomerListsThem() async throws {
        let stack = try await TestStack.start { config in config.components[0].viewerWebSocketPaths = ["/ws/live"] }
        let session = try SessionClient(target: try stack.sessionTarget(role: .viewer), group: TestStack.group, logger: TestStack.quietLogger)
        try await session.connect()
        let listener = try await LocalListener.startConduit(host: "127.0.0.1", port: 0, session: session, group: TestStack.group)
        let port = listener.localAddress!.port!
        let live = try await Self.open(port, "/ws/live")
        #expect(try await live.next().opcode == .text)
        try await live.close()
        guard case .refused(let status, let headers, _) = try await TestWebSocket.connect(port: port, path: "/ws/echo") else {
            Issue.record("a viewer opened a websocket the customer did not list")
            return
        }
        #expect(status == .forbidden && headers.first(name: WireHeader.error) == "role_forbids_websocket")
        try await listener.close()
        await stack.stop()
    }

    /// A client that stops reading holds the component back: what is in flight stays bounded by
    /// the windows and buffers of the path, not by what the component has to send.
    @Test func aSlowReaderHoldsTheComponentBackAndLosesNothing() async throws {
        let stack = try await TestStack.start()
        let listener = try await stack.openSession()
        // 32 MiB at once from the component. What moves before it stalls is what the kernel buffers
        // on the two plain TCP links and the HTTP/2 windows allow (10-12 MiB here), not all of it.
        let socket = try await Self.open(listener.localAddress!.port!, "/ws/flood")
        _ = socket.channel.setOption(ChannelOptions.autoRead, value: false)
        let total = DemoComponent.floodBytes
        try await stack.waitUntil("the component to have sent something") { stack.component.counters.webSocketBytesSent > 0 }
        var previous = -1
        try await stack.waitUntil("the component's writes to stall") {
            try await Task.sleep(for: .milliseconds(500))
            let now = stack.component.counters.webSocketBytesSent
            defer { previous = now }
            return now == previous
        }
        let inFlight = stack.component.counters.webSocketBytesSent
        #expect(inFlight < total / 2, "the component was held back after \(inFlight) of \(total) bytes")
        // Reading again, every message arrives whole and in order.
        _ = socket.channel.setOption(ChannelOptions.autoRead, value: true)
        socket.channel.read()
        for index in 0..<(total >> 18) {
            let message = try await socket.next(seconds: 60)
            let data = message.unmaskedData
            #expect(data.readableBytes == 256 << 10 && data.getInteger(at: data.readerIndex, as: UInt8.self) == UInt8(truncatingIfNeeded: index))
        }
        #expect(stack.component.counters.webSocketBytesSent == total)
        try await socket.close()
        try await listener.close()
        await stack.stop()
    }

    /// A live view that streams for longer than the idle timeout, with no request beside it, keeps
    /// the session: the engineer's next click is served.
    @Test func aStreamingLiveViewCountsAsActivityForTheNextRequest() async throws {
        let stack = try await TestStack.start { config in config.idleTimeoutMilliseconds = 60_000 }
        let listener = try await stack.openSession()
        let port = listener.localAddress!.port!
        let live = try await Self.open(port, "/ws/live")
        _ = try await live.next()
        for _ in 0..<3 {
            stack.clock.advance(seconds: 40)
            let moved = stack.clock.now()
            // A push stamped after the jump (not one already on its way: on a loaded machine the
            // client's queue holds older ones), then what the once-a-second sweep does.
            try await stack.waitUntil("a push stamped on the moved clock") {
                let stamps = stack.privacy.webSocketActivity
                return !stamps.isEmpty && stamps.allSatisfy { $0 >= moved }
            }
            stack.privacy.sweep()
        }
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/api/status").status == .ok, "120 s in, and never 60 s without bytes")
        #expect(live.channel.isActive)
        try await live.close()
        try await listener.close()
        await stack.stop()
    }
}
