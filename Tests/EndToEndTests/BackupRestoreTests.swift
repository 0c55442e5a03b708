import Foundation
import RelayAPI
import RelayModel
import Testing
import TunnelCore

/// Backup and restore of the embedded store (docs/OPERATIONS.md): `relay backup` while the relay
/// runs, then a relay started from the copy serves what was there at the backup, tokens included.
@Suite struct BackupRestoreTests {
    @Test func aRelayRestoredFromABackupServesWhatItHeld() async throws {
        let (_, configPath, relay, api) = try await FaultTests.relayProgram("backup")
        defer { relay.killNow() }
        let _: EnrollmentResponse = try await api.call(RelayEndpoints.createCluster, body: CreateClusterRequest(id: "kept", description: "before"))
        let alice: TokenCreated = try await api.call(RelayEndpoints.createToken, body: CreateTokenRequest(name: "alice", role: .expert, ttlSeconds: nil))

        let backup = TestStack.temporaryDirectory("backup") + "/relay-backup"
        let (code, out, err) = try await TestProcess.run(TestProcess.binary("relay"), ["backup", "--config", configPath, "--to", backup])
        #expect(code == 0, "\(out) \(err)")
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: backup)) == ["relay.sqlite", "token-hash.key"])
        let _: EnrollmentResponse = try await api.call(RelayEndpoints.createCluster, body: CreateClusterRequest(id: "later", description: "after"))
        relay.terminate()
        _ = await relay.exitStatus()

        // Restore: a new node whose data_dir is the copy.
        let folder = TestStack.temporaryDirectory("restored")
        let port = try await FaultTests.freePort()
        let restoredConfig = try FaultTests.writeRelayConfig(folder: folder, port: port)
        let yaml = try String(contentsOfFile: restoredConfig, encoding: .utf8).replacingOccurrences(of: "data_dir: \(folder)/data", with: "data_dir: \(backup)")
        try yaml.write(toFile: restoredConfig, atomically: true, encoding: .utf8)
        let restored = try await FaultTests.startRelay(restoredConfig)
        defer { restored.killNow() }
        #expect(!restored.stdout.contains("first start"), "the restored store has its tokens: no new bootstrap token")
        let base = try WebSocketURL(parsing: "https://127.0.0.1:\(port)", acceptHTTPS: true)
        let opsToken = try String(contentsOfFile: URL(fileURLWithPath: configPath).deletingLastPathComponent().path + "/data/bootstrap-ops-token", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let ops = try APIClient(base: base, caFile: TestCerts.trusted + "/ca.pem", bearer: opsToken, group: TestStack.group)
        let clusters = try await ops.call(RelayEndpoints.clusters).map(\.cluster.id)
        #expect(clusters == ["kept"], "what the store held at the backup, nothing after")
        let expert = try APIClient(base: base, caFile: TestCerts.trusted + "/ca.pem", bearer: alice.secret, group: TestStack.group)
        #expect(try await expert.call(RelayEndpoints.whoami).name == "alice", "tokens still match: the key came with the copy")
        // Another backup onto the same folder is refused rather than mixed in.
        let (again, _, againErr) = try await TestProcess.run(TestProcess.binary("relay"), ["backup", "--config", restoredConfig, "--to", backup])
        #expect(again != 0 && againErr.contains("exists"))
        restored.terminate()
        _ = await restored.exitStatus()
    }
}
