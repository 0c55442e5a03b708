import Foundation
import Testing

/// The systemd units in Config/ as an installer would use them: they verify with
/// `systemd-analyze verify` (no unknown key, no missing program) and hold the hardening the
/// customer's and the operator's admins expect.
@Suite struct PackagingTests {
    static let config = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Config").standardizedFileURL.path

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze")), arguments: ["relay", "connector"])
    func theUnitVerifiesAndIsHardened(_ name: String) async throws {
        let unit = try String(contentsOfFile: "\(Self.config)/\(name).service", encoding: .utf8)
        // The programs as installed (/usr/local/bin) are the ones this test run built.
        let folder = TestStack.temporaryDirectory("unit")
        let binaries = URL(fileURLWithPath: TestProcess.binary(name)).deletingLastPathComponent().path + "/"
        try unit.replacingOccurrences(of: "/usr/local/bin/", with: binaries).write(toFile: "\(folder)/\(name).service", atomically: true, encoding: .utf8)
        let (code, out, err) = try await TestProcess.run("/usr/bin/systemd-analyze", ["verify", "\(folder)/\(name).service"])
        #expect(code == 0 && err.isEmpty && out.isEmpty, "systemd-analyze verify: \(out) \(err)")

        let lines = Set(unit.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) })
        for required in [
            "User=\(name)", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "CapabilityBoundingSet=",
            "StateDirectory=\(name)", "StateDirectoryMode=0700", "UMask=0077", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        ] {
            #expect(lines.contains(required), "\(name).service lacks \(required)")
        }
        if name == "connector" {
            #expect(lines.contains("SocketBindDeny=any"), "the connector may not bind an IP port")
            #expect(lines.contains("ExecReload=/bin/kill -HUP $MAINPID"), "systemctl reload re-reads connector.yaml")
        }
        let (_, security, _) = try await TestProcess.run("/usr/bin/systemd-analyze", ["security", "--offline=yes", "\(folder)/\(name).service"])
        let score = try #require(security.firstMatch(of: #/Overall exposure level for \S+: (\d+\.\d)/#).flatMap { Double($0.1) })
        #expect(score <= 2.0, "systemd-analyze security rates \(name) \(score) (lower is better)")
    }
}
