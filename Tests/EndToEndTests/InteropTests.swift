import Foundation
import Testing

/// An independent client, built on libwebsockets (Debian's libwebsockets-dev), speaks the tunnel
/// handshake: with a node's credential the relay upgrades and opens HTTP/2 over it; without one it
/// answers 401.
@Suite(.serialized) struct InteropTests {
    @Test func aLibwebsocketsClientCompletesTheTunnelHandshakeAndGetsA401WithoutCredentials() async throws {
        let client = TestStack.temporaryDirectory("lws") + "/lws_tunnel_client"
        let source = TestCerts.repoRoot.appendingPathComponent("Tests/Interop/lws_tunnel_client.c").path
        let (built, _, compileErrors) = try await TestProcess.run("/usr/bin/cc", ["-o", client, source, "-lwebsockets"])
        guard built == 0 else {
            Issue.record("cannot build the libwebsockets client (apt-get install libwebsockets-dev, as .ci/run does): \(compileErrors)")
            return
        }
        let stack = try await TestStack.start()
        let tunnel = try #require(stack.relay.registry.tunnels(cluster: "demo").first)
        // Dialed as `localhost`, so it does not replace the connector's own tunnel (dialed as 127.0.0.1).
        let target = ["localhost", "\(stack.relayPort)", TestCerts.trusted + "/ca.pem", "demo", "node-1"]
        let (accepted, acceptedOut, acceptedErr) = try await TestProcess.run(client, target + [stack.credential.credential])
        #expect(accepted == 0 && acceptedOut.contains("established") && acceptedOut.contains("preface"), "\(acceptedOut) \(acceptedErr)")
        let (refused, refusedOut, refusedErr) = try await TestProcess.run(client, target)
        #expect(refused == 2 && refusedOut.contains("refused: 401"), "\(refusedOut) \(refusedErr)")
        print("INTEROP libwebsockets client: with the credential: \(acceptedOut.split(separator: "\n").joined(separator: "; ")); without: \(refusedOut.split(separator: "\n").joined(separator: "; "))")
        let denied = try await stack.control.store.audit(since: nil, afterID: 0, limit: 1000).filter { $0.outcome == .denied }
        #expect(!denied.isEmpty, "the refused handshake is in the relay's audit trail")
        #expect(stack.relay.registry.tunnels(cluster: "demo").contains { $0.id == tunnel.id }, "the connector's tunnel is untouched")
        await stack.stop()
    }
}
