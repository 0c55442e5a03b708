import Foundation
import Relay
import TestSupport
import Testing

/// Certificates and their rotation (docs/OPERATIONS.md): the relay takes a renewed certificate
/// under the same CA on SIGHUP (`reloadCertificate`), without a restart, and connectors take it at
/// their next dial without a restart of theirs: they trust the CA, not the certificate.
@Suite struct CertificateRotationTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Certs/make-dev-certs.sh").standardizedFileURL.path

    @Test func aRenewedRelayCertificateUnderTheSameCAIsTakenWithoutRestartingConnectors() async throws {
        let certs = TestStack.temporaryDirectory("rotating-certs")
        let (made, _, madeErr) = try await TestProcess.run(Self.script, [certs])
        #expect(made == 0, "\(madeErr)")
        let stack = try await TestStack.start(
            relay: { $0.certificateFile = certs + "/relay.pem"; $0.privateKeyFile = certs + "/relay.key" },
            configure: { $0.caFile = certs + "/ca.pem" })
        let first = try await Self.servedSerial(stack.relayPort, ca: certs + "/ca.pem")

        // The operator renews the certificate under the same CA and sends SIGHUP.
        let (renewed, _, renewErr) = try await TestProcess.run("/usr/bin/env", ["RELAY_ONLY=1", Self.script, certs])
        #expect(renewed == 0, "\(renewErr)")
        try stack.relay.reloadCertificate()
        let second = try await Self.servedSerial(stack.relayPort, ca: certs + "/ca.pem")
        #expect(second != first, "new connections get the renewed certificate")

        // The connector, not restarted, redials a lost tunnel and accepts the renewed certificate.
        let old = try #require(stack.relay.registry.tunnels(cluster: "demo").first)
        try await old.channel.close()
        try await stack.waitUntil("the connector to dial again, to the renewed certificate") {
            stack.relay.registry.tunnels(cluster: "demo").contains { $0.id != old.id } && stack.connector.connectedURLs.count == 1
        }
        #expect(stack.connector.lastErrors.isEmpty, "\(stack.connector.lastErrors)")

        // A pair that does not load is refused; the certificate in use stays.
        try "not a key".write(toFile: certs + "/relay.key", atomically: true, encoding: .utf8)
        #expect(throws: (any Error).self) { try stack.relay.reloadCertificate() }
        #expect(try await Self.servedSerial(stack.relayPort, ca: certs + "/ca.pem") == second)
        await stack.stop()
    }

    /// The operator's way: `kill -HUP` on the running program.
    @Test func sighupReloadsTheCertificateOfTheRunningRelay() async throws {
        let certs = TestStack.temporaryDirectory("hup-certs")
        #expect(try await TestProcess.run(Self.script, [certs]).0 == 0)
        let folder = TestStack.temporaryDirectory("hup")
        let port = try await FaultTests.freePort()
        let config = try FaultTests.writeRelayConfig(folder: folder, port: port)
        let yaml = try String(contentsOfFile: config, encoding: .utf8).replacingOccurrences(of: TestCerts.trusted, with: certs)
        try yaml.write(toFile: config, atomically: true, encoding: .utf8)
        let relay = try await FaultTests.startRelay(config)
        defer { relay.killNow() }
        let first = try await Self.servedSerial(port, ca: certs + "/ca.pem")
        #expect(try await TestProcess.run("/usr/bin/env", ["RELAY_ONLY=1", Self.script, certs]).0 == 0)
        relay.send(SIGHUP)
        var served = first
        _ = try await TestWait.poll(seconds: 30) {
            served = try await Self.servedSerial(port, ca: certs + "/ca.pem")
            return served != first
        }
        #expect(served != first, "the renewed certificate is served after SIGHUP")
        #expect(relay.isRunning, "SIGHUP does not stop the relay")
        relay.terminate()
        #expect(await relay.exitStatus() == 0)
    }

    /// The serial of the certificate the relay serves, verified against `ca`.
    static func servedSerial(_ port: Int, ca: String) async throws -> String {
        let (code, out, err) = try await TestProcess.run(
            "/bin/sh",
            ["-c", "openssl s_client -connect 127.0.0.1:\(port) -CAfile \(ca) -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -serial"])
        guard code == 0, out.hasPrefix("serial=") else { throw TestFailure("no verified certificate on port \(port): \(out) \(err)") }
        return out.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
