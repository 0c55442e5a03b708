import ConfigKit
import DemoComponentKit
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import Relay
import RelayCtlKit
import TestSupport
import Testing
import TunnelCore

/// local port -> relay -> connector -> component, on real TLS sockets on loopback.
@Suite(.serialized) struct CorePathTests {
    @Test func smallGetReachesTheComponent() async throws {
        let stack = try await TestStack.start()
        let session = try await stack.openSession()
        let port = session.localAddress!.port!
        let page = try await TestHTTPConnection.request(port: port, .GET, "/")
        #expect(page.status == .ok)
        #expect(page.text.contains("Cluster component \"ui\""))
        let api = try await TestHTTPConnection.request(port: port, .GET, "/api/status")
        #expect(api.status == .ok)
        #expect(api.headers.first(name: "content-type") == "application/json")
        #expect(api.text == "{\"component\":\"ui\",\"healthy\":true}\n")
        try await session.close()
        await stack.stop()
    }

    @Test func componentSeesItsOwnHostAndNoRelayHeaders() async throws {
        let stack = try await TestStack.start()
        let session = try await stack.openSession()
        let response = try await TestHTTPConnection.request(
            port: session.localAddress!.port!, .GET, "/headers", headers: [("x-relay-expert", "mallory"), ("x-custom", "kept")])
        #expect(response.status == .ok)
        #expect(response.text.contains("\"host\":\"127.0.0.1:\(stack.component.port)\""))
        #expect(response.text.contains("\"x-custom\":\"kept\""))
        #expect(!response.text.contains("x-relay"), "\(response.text)")
        try await session.close()
        await stack.stop()
    }

    @Test func tenMiBDownloadAndUploadArriveIntact() async throws {
        let stack = try await TestStack.start()
        let session = try await stack.openSession()
        let port = session.localAddress!.port!
        let size = 10 << 20
        let download = try await TestHTTPConnection.request(port: port, .GET, "/bytes/\(size)")
        #expect(download.status == .ok)
        #expect(download.bodyBytes == size)
        #expect(download.sha256 == DemoComponent.sha256OfPattern(size: size))

        var generator = SystemRandomNumberGenerator()
        var body = [UInt8](repeating: 0, count: size)
        body.withUnsafeMutableBytes { raw in
            for index in stride(from: 0, to: size, by: 8) { raw.storeBytes(of: generator.next() as UInt64, toByteOffset: index, as: UInt64.self) }
        }
        let upload = try await TestHTTPConnection.request(port: port, .POST, "/upload", body: body)
        #expect(upload.status == .ok)
        #expect(upload.text == "{\"bytes\":\(size),\"sha256\":\"\(sha256Hex(body))\"}\n")

        let chunked = try await TestHTTPConnection.request(port: port, .PUT, "/upload", body: Array(body[0..<300_001]), chunked: true)
        #expect(chunked.text == "{\"bytes\":300001,\"sha256\":\"\(sha256Hex(Array(body[0..<300_001])))\"}\n")
        try await session.close()
        await stack.stop()
    }

    /// The demo component itself: exact bodies, so a keep-alive connection parses response after response.
    @Test func demoComponentSendsExactlyContentLengthBytes() async throws {
        let component = try await DemoComponent.start(group: TestStack.group)
        let connection = try await TestHTTPConnection.connect(port: component.port)
        for size in [70_000, 5, 1 << 20, 0, 3] {
            let response = try await connection.request(.GET, "/bytes/\(size)")
            #expect(response.bodyBytes == size)
            #expect(response.sha256 == DemoComponent.sha256OfPattern(size: size))
        }
        await connection.close()
        try await component.close()
    }

    @Test func keepAliveConnectionCarriesManyRequests() async throws {
        let stack = try await TestStack.start()
        let session = try await stack.openSession()
        let connection = try await TestHTTPConnection.connect(port: session.localAddress!.port!)
        for size in [0, 1, 1000, 70_000, 5] {
            let response = try await connection.request(.GET, "/bytes/\(size)")
            #expect(response.status == .ok)
            #expect(response.bodyBytes == size)
        }
        await connection.close()
        #expect(stack.component.counters.requests == 5)
        #expect(stack.component.counters.connections == 1, "the connector reuses its keep-alive connection to the component")
        try await session.close()
        await stack.stop()
    }

    /// More requests than NIOHTTP2's reset budget (200 per 30 s): finished streams must close with
    /// END_STREAM, not RST_STREAM, or the relay drops the connection as abusive.
    @Test func manyMoreRequestsThanTheResetBudgetOnOneSession() async throws {
        let stack = try await TestStack.start()
        let session = try await stack.openSession()
        let connection = try await TestHTTPConnection.connect(port: session.localAddress!.port!)
        var statuses: [UInt: Int] = [:]
        for _ in 0..<400 {
            let response = try await connection.request(.GET, "/bytes/100")
            statuses[response.status.code, default: 0] += 1
        }
        #expect(statuses == [200: 400])
        await connection.close()
        try await session.close()
        await stack.stop()
    }

    @Test func http10AndConnectionCloseClientsGetWholeBodies() async throws {
        let stack = try await TestStack.start()
        let session = try await stack.openSession()
        let url = "http://127.0.0.1:\(session.localAddress!.port!)/bytes/70000"
        for flags in [["--http1.0"], ["-H", "Connection: close"]] {
            let output = try await runCurl(flags + ["-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url])
            #expect(output == "200 70000", "curl \(flags)")
        }
        try await session.close()
        await stack.stop()
    }

    @Test func headRequestsGetHeadersOnly() async throws {
        let stack = try await TestStack.start()
        let session = try await stack.openSession()
        let url = "http://127.0.0.1:\(session.localAddress!.port!)/bytes/12345"
        let output = try await runCurl(["-s", "--max-time", "10", "-I", url])
        #expect(output.hasPrefix("HTTP/1.1 200 OK"), "\(output)")
        #expect(output.lowercased().contains("content-length: 12345"), "\(output)")
        // The connection is still usable afterwards: HEAD left no body bytes behind.
        let connection = try await TestHTTPConnection.connect(port: session.localAddress!.port!)
        let head = try await connection.request(.HEAD, "/bytes/70000")
        let get = try await connection.request(.GET, "/api/status")
        #expect(head.status == .ok && head.bodyBytes == 0)
        #expect(head.headers.first(name: "content-length") == "70000")
        #expect(get.text == "{\"component\":\"ui\",\"healthy\":true}\n")
        await connection.close()
        try await session.close()
        await stack.stop()
    }

    @Test func hundredConcurrentRequestsAllCorrect() async throws {
        let stack = try await TestStack.start()
        let session = try await stack.openSession()
        let port = session.localAddress!.port!
        let results = try await withThrowingTaskGroup(of: (Int, TestResponse).self) { group in
            for index in 0..<100 {
                group.addTask {
                    let size = 1000 + index * 997
                    return (size, try await TestHTTPConnection.request(port: port, .GET, "/bytes/\(size)"))
                }
            }
            var all: [(Int, TestResponse)] = []
            for try await result in group { all.append(result) }
            return all
        }
        #expect(results.count == 100)
        for (size, response) in results {
            #expect(response.status == .ok)
            #expect(response.bodyBytes == size)
            #expect(response.sha256 == DemoComponent.sha256OfPattern(size: size))
        }
        #expect(stack.relay.registry.tunnels(cluster: "demo").count == 1, "all on the one tunnel")
        try await session.close()
        await stack.stop()
    }

    @Test func anUnknownComponentIsRefusedUpFrontAndByTheConnectorAlone() async throws {
        let stack = try await TestStack.start()
        let tunnelBefore = stack.relay.registry.tunnels(cluster: "demo").first?.id
        // The relay knows the names the connector reported: the session is refused at once.
        do {
            _ = try await stack.openSession(component: "nope")
            Issue.record("a session to a component no node offers must be refused")
        } catch let error as DialError {
            #expect(error.kind == .rejected(status: 404))
            #expect(error.message.contains("cluster \"demo\" offers no component \"nope\"; it offers ui"), "\(error.message)")
        }
        // A relay that names it anyway: the connector refuses that stream alone.
        let request = try #require(try await stack.control.store.requests(clusterID: "demo", states: [.approved]).first)
        let rogue = try await RogueRelay.send(stack, method: .GET, target: "/", headers: RogueRelay.identity(request: request.id, component: "nope"))
        #expect(rogue.status == 404 && rogue.error == "unknown_component" && rogue.text.contains("component \\\"nope\\\" is not offered"), "\(rogue)")
        #expect(stack.component.counters.requests == 0)

        let good = try await stack.openSession(component: "ui")
        let ok = try await TestHTTPConnection.request(port: good.localAddress!.port!, .GET, "/api/status")
        #expect(ok.status == .ok)
        #expect(stack.relay.registry.tunnels(cluster: "demo").first?.id == tunnelBefore, "the tunnel was not replaced")
        try await good.close()
        await stack.stop()
    }

    @Test func componentDownIs502AndTheTunnelGoesOn() async throws {
        // A port that refuses: bind one, note it, close it.
        let closed = try await ServerBootstrap(group: TestStack.group).bind(host: "127.0.0.1", port: 0).get()
        let deadPort = closed.localAddress!.port!
        try await closed.close()
        let stack = try await TestStack.start(extraComponents: ["down": "http://127.0.0.1:\(deadPort)"])
        let tunnelBefore = stack.relay.registry.tunnels(cluster: "demo").first?.id
        let down = try await stack.openSession(component: "down")
        let up = try await stack.openSession(component: "ui")
        let downPort = down.localAddress!.port!
        let upPort = up.localAddress!.port!

        // A long download in flight on the same tunnel while the other stream fails.
        async let big = TestHTTPConnection.request(port: upPort, .GET, "/bytes/\(4 << 20)")
        let failed = try await TestHTTPConnection.request(port: downPort, .GET, "/")
        #expect(failed.status == .badGateway)
        #expect(failed.headers.first(name: WireHeader.error) == "upstream_unavailable")
        #expect(failed.text.contains("component \\\"down\\\" is not reachable"))
        #expect(!failed.text.contains(String(deadPort)), "the component's address stays on the customer side")
        let bigResponse = try await big
        #expect(bigResponse.bodyBytes == 4 << 20)
        #expect(try await TestHTTPConnection.request(port: upPort, .GET, "/api/status").status == .ok)
        #expect(stack.relay.registry.tunnels(cluster: "demo").first?.id == tunnelBefore)
        try await down.close()
        try await up.close()
        await stack.stop()
    }

    @Test func approvedButNoConnectorYetIs503WithTheReason() async throws {
        let stack = try await TestStack.start()
        let request = try await stack.createRequest(cluster: "other", role: .viewer)
        #expect(request.state == .pending, "cluster other never heartbeated, so its mode is unknown")
        _ = try await stack.control.approve(request, by: "test", now: stack.clock.now())
        let client = try SessionClient(target: try stack.sessionTarget(cluster: "other"), group: TestStack.group, logger: TestStack.quietLogger)
        do {
            try await client.connect()
            Issue.record("connected without a tunnel")
        } catch let error as DialError {
            #expect(error.kind == .rejected(status: 503))
            #expect(error.message.contains("cluster \"other\" has no connector connected to this relay yet"), "\(error)")
        }
        await stack.stop()
    }
}

/// Handshake refusals: credentials and certificates.
@Suite(.serialized) struct HandshakeTests {
    func dialTunnel(
        host: String = "127.0.0.1", port: Int, cluster: String, node: String = "node-1", secret: String, caDir: String = TestCerts.trusted
    ) async throws -> Channel {
        try await RogueSession.dial(
            host: host, port: port, path: WirePath.tunnel, link: .tunnel,
            headers: [("authorization", "Bearer \(secret)"), (WireHeader.cluster, cluster), (WireHeader.node, node)], caDirectory: caDir
        ).0
    }

    func rejection(_ body: () async throws -> Void) async -> DialError? {
        do {
            try await body()
            return nil
        } catch let error as DialError {
            return error
        } catch {
            Issue.record("unexpected error \(error)")
            return nil
        }
    }

    /// Under another relay URL (the same relay by another name): a node keeps one tunnel per URL.
    @Test func aSecondTunnelWithTheNodeCredentialIsAccepted() async throws {
        let stack = try await TestStack.start()
        let good = try await self.dialTunnel(host: "localhost", port: stack.relayPort, cluster: "demo", secret: stack.credential.credential)
        try await stack.waitForTunnels(2)
        try await good.close()
        try await stack.waitForTunnels(1)
        await stack.stop()
    }

    @Test func wrongExpertTokenIsRefused() async throws {
        let stack = try await TestStack.start()
        let client = try SessionClient(target: try stack.sessionTarget(token: "wrong-token-0123456789abcdef0123"), group: TestStack.group,
                                       logger: TestStack.quietLogger)
        let error = await self.rejection { try await client.connect() }
        #expect(error?.kind == .rejected(status: 401))
        #expect(error?.message.contains("invalid credentials") == true)
        #expect(!(error?.message.contains("wrong-token") ?? true))

        let unknownCluster = try SessionClient(target: try stack.sessionTarget(cluster: "ghost"), group: TestStack.group,
                                               logger: TestStack.quietLogger)
        let notFound = await self.rejection { try await unknownCluster.connect() }
        #expect(notFound?.kind == .rejected(status: 404))
        #expect(notFound?.message.contains("404 cluster \"ghost\" is not known to this relay") == true, "\(String(describing: notFound))")
        await stack.stop()
    }

    @Test func connectorRefusesARelayCertificateFromAnotherCA() async throws {
        let stack = try await TestStack.start(approve: false)
        _ = try await stack.createRequest(cluster: "demo", role: .viewer)
        let error = await self.rejection {
            _ = try await self.dialTunnel(port: stack.relayPort, cluster: "demo", secret: stack.credential.credential, caDir: TestCerts.other)
        }
        #expect(error?.kind == .failed)
        #expect(error?.message.contains("TLS handshake failed") == true, "\(String(describing: error))")
        await stack.stop()
    }

    /// The handshake deadline is driven by the test (`Deadlines.Manual`), not waited for.
    @Test func connectionsThatNeverUpgradeAreClosedAtTheHandshakeTimeout() async throws {
        let deadlines = Deadlines.Manual()
        let (_, port, services) = try await TestStack.relayAlone(handshakeDeadlines: deadlines.deadlines)
        // A peer that connects and says nothing: no TLS, no upgrade.
        let silent = try await ClientBootstrap(group: TestStack.group).connect(host: "127.0.0.1", port: port).get()
        try await TestWait.poll { deadlines.armed > 0 }
        #expect(deadlines.armed == 1 && silent.isActive, "open until its deadline passes")
        deadlines.expireAll()
        try await TestWait.poll { !silent.isActive }
        #expect(!silent.isActive, "the relay kept a silent connection open past its deadline")
        try? await silent.close()
        await services.stop()
    }

    @Test func upgradedTunnelsOutliveTheHandshakeTimeout() async throws {
        let deadlines = Deadlines.Manual()
        let stack = try await TestStack.start(handshakeDeadlines: deadlines.deadlines)
        let session = try await stack.openSession()
        let tunnel = try #require(stack.relay.registry.tunnels(cluster: "demo").first)
        // Every deadline still armed passes now (a heartbeat connection in flight, say); the tunnel's
        // and the session's were cancelled when they upgraded.
        deadlines.expireAll()
        #expect(try await TestHTTPConnection.request(port: session.localAddress!.port!, .GET, "/api/status").status == .ok)
        #expect(stack.relay.registry.tunnels(cluster: "demo").map(\.id) == [tunnel.id])
        try await session.close()
        await stack.stop()
    }

    @Test func plainHTTPSGetsAClearAnswer() async throws {
        let stack = try await TestStack.start(approve: false)
        let port = stack.relayPort
        let health = try await curl(["https://127.0.0.1:\(port)/healthz"])
        #expect(health.contains("200"))
        let noUpgrade = try await curl(["-H", "Authorization: Bearer \(stack.credential.credential)", "-H", "x-relay-cluster: demo",
                                        "-H", "x-relay-node: node-1", "-H", "sec-websocket-protocol: relay-tunnel.v1",
                                        "https://127.0.0.1:\(port)/v1/tunnel"])
        #expect(noUpgrade.contains("426"))
        await stack.stop()
    }

    /// curl with the test CA: prints the body and the status code.
    func curl(_ arguments: [String]) async throws -> String {
        try await runCurl(["-s", "--max-time", "10", "--cacert", TestCerts.trusted + "/ca.pem", "-w", "%{http_code}"] + arguments)
    }
}

/// Runs curl and returns what it printed (stdout), on a thread of its own (see `TestProcess.run`).
func runCurl(_ arguments: [String]) async throws -> String {
    try await TestProcess.run("/usr/bin/curl", arguments).1
}

/// A misbehaving peer costs its own tunnel, never the relay or anyone else's traffic.
@Suite(.serialized) struct AbuseTests {
    /// A second "connector" for cluster demo that, once upgraded, speaks raw websocket frames.
    func rawTunnel(_ stack: TestStack) async throws -> Channel {
        let port = stack.relayPort
        var headers = HTTPHeaders()
        headers.add(name: "authorization", value: "Bearer \(stack.credential.credential)")
        headers.add(name: WireHeader.cluster, value: "demo")
        headers.add(name: WireHeader.node, value: "node-1")
        let tls = try TLSFiles.clientContext(caFile: TestCerts.trusted + "/ca.pem")
        let (channel, _) = try await WebSocketDialer.dial(
            // Another relay URL (the same relay by another name): it does not replace the connector's tunnel.
            url: try WebSocketURL(parsing: "wss://localhost:\(port)/v1/tunnel"), headers: headers, tls: tls, limits: TestStack.limits,
            group: TestStack.group
        ) { _ in () }.get()
        return channel
    }

    @Test(arguments: [
        ("text frame", WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(string: "hello"))),
        ("not HTTP/2", WebSocketFrame(fin: true, opcode: .binary, maskKey: .random(), data: ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n"))),
        ("reserved bit", WebSocketFrame(fin: true, rsv1: true, opcode: .binary, maskKey: .random(), data: ByteBuffer(string: "x"))),
    ])
    func badFramesCloseOnlyThatTunnel(_ name: String, _ frame: WebSocketFrame) async throws {
        let stack = try await TestStack.start()
        let session = try await stack.openSession()
        let rogue = try await self.rawTunnel(stack)
        try await stack.waitForTunnels(2)
        try await rogue.writeAndFlush(frame)
        // The relay drops the rogue tunnel (bounded wait: 10 s) ...
        try await stack.waitForTunnels(1)
        #expect(stack.relay.registry.tunnels(cluster: "demo").map(\.node) == ["node-1"], "\(name)")
        // ... and the real tunnel still carries requests (whichever tunnel the relay would have picked).
        for _ in 0..<4 {
            let response = try await TestHTTPConnection.request(port: session.localAddress!.port!, .GET, "/api/status")
            #expect(response.status == .ok, "\(name)")
        }
        try? await rogue.close()
        try await session.close()
        await stack.stop()
    }
}

/// A component that answers every request with a 2-byte body and, 20 ms later, 5 bytes too many.
final class SloppyComponent: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let request = String(buffer: self.unwrapInboundIn(data))
        guard request.contains("\r\n\r\n") else { return }
        context.writeAndFlush(NIOAny(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")), promise: nil)
        // The stray bytes come later, when the connector already holds the connection as idle.
        let channel = context.channel
        context.eventLoop.scheduleTask(in: .milliseconds(20)) {
            channel.writeAndFlush(ByteBuffer(string: "EXTRA"), promise: nil)
        }
    }
}

extension AbuseTests {
    @Test func aComponentSendingBytesPastItsResponseDoesNotPoisonTheNextRequest() async throws {
        let connections = NIOLockedValueBox(0)
        let closed = NIOLockedValueBox(0)
        let sloppy = try await ServerBootstrap(group: TestStack.group)
            .childChannelInitializer { channel in
                connections.withLockedValue { $0 += 1 }
                channel.closeFuture.whenComplete { _ in closed.withLockedValue { $0 += 1 } }
                return channel.pipeline.addHandler(SloppyComponent())
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let stack = try await TestStack.start(extraComponents: ["sloppy": "http://127.0.0.1:\(sloppy.localAddress!.port!)"])
        let session = try await stack.openSession(component: "sloppy")
        for round in 1...3 {
            let response = try await TestHTTPConnection.request(port: session.localAddress!.port!, .GET, "/")
            #expect(response.status == .ok)
            #expect(response.text == "ok")
            // The stray bytes arrive after the response: the connector closes the pooled connection.
            try await stack.waitUntil("connection \(round) to be dropped") { closed.withLockedValue { $0 } == round }
        }
        #expect(connections.withLockedValue { $0 } == 3, "a connection left dirty is never reused")
        try await session.close()
        await stack.stop()
        try await sloppy.close()
    }
}
