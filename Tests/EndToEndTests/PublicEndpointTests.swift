import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import Relay
import TestSupport
import Testing
import TunnelCore

/// The relay is a public endpoint: what anyone can hold open before authenticating is bounded.
@Suite(.serialized) struct PublicEndpointTests {
    /// A TLS connection to the relay that sends `text` and then nothing.
    static func tlsConnection(port: Int, sending text: String) async throws -> Channel {
        let tls = try TLSFiles.clientContext(caFile: TestCerts.trusted + "/ca.pem")
        let channel = try await ClientBootstrap(group: TestStack.group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: "localhost"))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        // The relay may already have closed it (a loaded machine, a short deadline): that is the point.
        try? await channel.writeAndFlush(ByteBuffer(string: text))
        return channel
    }

    /// Waits (bounded: 20 s) until none of `channels` is open.
    static func waitUntilClosed(_ channels: [Channel]) async throws {
        try await TestWait.poll(seconds: 20) { !channels.contains { $0.isActive } }
    }

    /// `/readyz` for a load balancer: ready while serving (no token needed), not once draining.
    @Test func readinessSaysReadyWhileServingAndNotWhenDraining() async throws {
        let (relay, port, services) = try await TestStack.relayAlone()
        let ready = try await runCurl(["-s", "--max-time", "30", "--cacert", TestCerts.trusted + "/ca.pem", "https://127.0.0.1:\(port)/readyz"])
        #expect(ready.trimmingCharacters(in: .whitespacesAndNewlines) == #"{"status":"ready"}"#)
        await services.stop()
        let drained = await relay.readiness()
        #expect(drained.status == .serviceUnavailable)
        #expect(String(decoding: drained.body, as: UTF8.self).contains(#""draining","not listening""#), "\(String(decoding: drained.body, as: UTF8.self))")
    }

    @Test func aLargeContentLengthThenNothingIsClosedAtTheDeadline() async throws {
        var limits = TestStack.limits
        limits.handshakeTimeout = .seconds(2)
        let (relay, port, services) = try await TestStack.relayAlone(limits: limits)
        // The head comes at once (inside the handshake deadline), the promised body never does.
        var silent: [Channel] = []
        for _ in 0..<50 {
            silent.append(try await Self.tlsConnection(
                port: port, sending: "POST /v1/register HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"))
        }
        try await Self.waitUntilClosed(silent)
        #expect(silent.allSatisfy { !$0.isActive }, "slow clients are closed, not kept")
        try await Self.waitUntilHeld(relay, 0)
        // A generous bound: it waits for the answer, not for a timer (a loaded machine took over 10 s once).
        let health = try await runCurl(["-s", "--max-time", "30", "--cacert", TestCerts.trusted + "/ca.pem", "https://127.0.0.1:\(port)/healthz"])
        #expect(health.contains("ok"), "the relay still serves")
        await services.stop()
    }

    @Test func connectionsFromOneAddressAreCapped() async throws {
        var limits = TestStack.limits
        limits.handshakeTimeout = .seconds(120)  // the held connections say nothing; they must outlive the test
        let (relay, port, services) = try await TestStack.relayAlone(limits: limits) { config in
            config.connectionLimits.maxPerAddress = 10
        }
        var held: [Channel] = []
        for _ in 0..<10 {
            held.append(try await ClientBootstrap(group: TestStack.group).connect(host: "127.0.0.1", port: port).get())
        }
        try await Self.waitUntilHeld(relay, 10)
        let refused = try await ClientBootstrap(group: TestStack.group).connect(host: "127.0.0.1", port: port).get()
        try await Self.waitUntilClosed([refused])
        #expect(!refused.isActive, "the eleventh connection from one address is closed at once")
        #expect(held.allSatisfy { $0.isActive }, "the ten admitted ones stay")
        try await held[0].close()
        try await Self.waitUntilHeld(relay, 9)
        let admitted = try await ClientBootstrap(group: TestStack.group).connect(host: "127.0.0.1", port: port).get()
        try await Self.waitUntilHeld(relay, 10)
        #expect(admitted.isActive, "a closed connection makes room")
        for channel in held + [admitted] { try? await channel.close() }
        await services.stop()
    }

    static func waitUntilHeld(_ relay: RelayServer, _ count: Int) async throws {
        try await TestWait.poll { relay.connections.open == count }
        #expect(relay.connections.open == count)
    }

    /// TLS 1.3 first; on TLS 1.2 only forward-secret AEAD suites (Mozilla "intermediate").
    @Test func tlsOffersOnlyModernSuites() async throws {
        let (relay, port, services) = try await TestStack.relayAlone()
        func handshake(_ arguments: [String]) async throws -> String {
            let (_, out, err) = try await TestProcess.run(
                "/usr/bin/openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", TestCerts.trusted + "/ca.pem"] + arguments)
            return out + err
        }
        let modern = try await handshake([])
        #expect(modern.contains("TLSv1.3"), "\(modern.suffix(400))")
        let aead12 = try await handshake(["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"])
        #expect(aead12.contains("ECDHE-ECDSA-AES128-GCM-SHA256") && aead12.contains("TLSv1.2"))
        // CBC suites (without AEAD) that BoringSSL would otherwise accept.
        for weak in ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA"] {
            let refused = try await handshake(["-tls1_2", "-cipher", weak])
            #expect(!refused.contains("Cipher is \(weak)"), "\(weak): \(refused.suffix(300))")
        }
        await services.stop()
    }
}

extension PublicEndpointTests {
    /// TCP keepalive on accepted connections: the kernel's keepalive timer runs on the relay's side
    /// of an idle connection (Linux shows it in /proc/net/tcp: timer 2), not on the client's.
    @Test func acceptedConnectionsHaveTCPKeepalive() async throws {
        let deadlines = Deadlines.Manual()  // the silent connection stays until the test is done
        let (relay, port, services) = try await TestStack.relayAlone(handshakeDeadlines: deadlines.deadlines)
        let client = try await ClientBootstrap(group: TestStack.group).connect(host: "127.0.0.1", port: port).get()
        let clientPort = try #require(client.localAddress?.port)
        func timers() throws -> (relaySide: [String], clientSide: [String]) {
            // /proc files have no size: read to the end rather than by the file's length.
            let handle = try #require(FileHandle(forReadingAtPath: "/proc/net/tcp"))
            defer { try? handle.close() }
            let table = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n").dropFirst()
            var relaySide: [String] = []
            var clientSide: [String] = []
            for line in table {
                let fields = line.split(separator: " ")
                guard fields.count > 5, fields[3] == "01" else { continue }  // established
                let local = Int(fields[1].split(separator: ":")[1], radix: 16)
                let remote = Int(fields[2].split(separator: ":")[1], radix: 16)
                let timer = String(fields[5].split(separator: ":")[0])
                if local == port && remote == clientPort { relaySide.append(timer) }
                if local == clientPort && remote == port { clientSide.append(timer) }
            }
            return (relaySide, clientSide)
        }
        // The kernel lists the connection before the relay has accepted it and set its options.
        try await Self.waitUntilHeld(relay, 1)
        var seen = try timers()
        try await TestWait.poll {
            seen = try timers()
            return seen.relaySide == ["02"]
        }
        #expect(seen.relaySide == ["02"], "the relay's socket runs a keepalive timer: \(seen)")
        #expect(seen.clientSide == ["00"], "a socket without keepalive runs none (so the check can tell): \(seen)")
        try? await client.close()
        await services.stop()
    }
}
