import Foundation
import TestSupport
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

    /// The system calls each program makes while it starts, serves and stops (traced with strace)
    /// are all ones its unit's filter allows: a refused call would fail (EPERM) only in production,
    /// where no test looks. (The filter once denied @resources; the Swift runtime calls setpriority.)
    @Test(
        .enabled(if: ["/usr/bin/systemd-analyze", "/usr/bin/strace", "/usr/bin/pkill"].allSatisfy(FileManager.default.isExecutableFile(atPath:))),
        arguments: ["relay", "connector"])
    func theSystemCallsTheProgramsMakeAreAllowedByTheirUnit(_ name: String) async throws {
        let folder = TestStack.temporaryDirectory("syscalls-\(name)")
        let arguments: [String]
        let ready: String
        if name == "relay" {
            try "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ntls:\n  certificate_file: \(TestCerts.trusted)/relay.pem\n  private_key_file: \(TestCerts.trusted)/relay.key\ndata_dir: \(folder)/data\n"
                .write(toFile: folder + "/relay.yaml", atomically: true, encoding: .utf8)
            arguments = ["--config", folder + "/relay.yaml"]
            ready = "relay listening on"
        } else {
            try "node_id: n1\ncredential_file: credential.json\nstate_dir: state\nrelay:\n  url: https://127.0.0.1:9\n  ca_file: \(TestCerts.trusted)/ca.pem\ncomponents:\n  ui: http://127.0.0.1:9\n"
                .write(toFile: folder + "/connector.yaml", atomically: true, encoding: .utf8)
            FileManager.default.createFile(
                atPath: folder + "/credential.json", contents: Data(#"{"clusterID":"c","nodeID":"n1","credential":"rcc_x"}"#.utf8),
                attributes: [.posixPermissions: 0o600])
            arguments = ["run", "--config", folder + "/connector.yaml"]
            ready = "connector started"
        }
        let trace = folder + "/syscalls"
        let traced = try RunningProcess("/usr/bin/strace", ["-f", "-qq", "-c", "-o", trace, TestProcess.binary(name)] + arguments)
        defer { traced.killNow() }
        guard try await TestWait.poll(seconds: 60, { (traced.stdout + traced.stderr).contains(ready) }) else {
            throw TestFailure("\(name) did not start under strace: \(traced.stdout) \(traced.stderr)")
        }
        if name == "relay", let port = traced.stdout.firstMatch(of: #/listening on 127\.0\.0\.1:(\d+)/#).map({ String($0.1) }) {
            _ = try await runCurl(["-s", "--max-time", "30", "--cacert", TestCerts.trusted + "/ca.pem", "https://127.0.0.1:\(port)/healthz"])
        }
        _ = try await TestProcess.run("/usr/bin/pkill", ["-TERM", "-P", String(traced.pid)])  // the program, not strace
        _ = await traced.exitStatus()
        let used = Set(try String(contentsOfFile: trace, encoding: .utf8).split(separator: "\n").compactMap { line -> String? in
            guard let last = line.split(separator: " ").last, last.allSatisfy({ $0.isLowercase || $0.isNumber || $0 == "_" }) else { return nil }
            return last == "total" || last == "syscall" ? nil : String(last)
        })
        #expect(used.count > 30, "traced \(used.count) system calls")

        let unit = try String(contentsOfFile: "\(Self.config)/\(name).service", encoding: .utf8)
        var allowed: Set<String> = []
        var denied: Set<String> = []
        for line in unit.split(separator: "\n") where line.hasPrefix("SystemCallFilter=") {
            let value = line.dropFirst("SystemCallFilter=".count)
            let groups = value.dropFirst(value.hasPrefix("~") ? 1 : 0).split(separator: " ").map(String.init)
            for group in groups {
                let calls = try await Self.syscalls(group)
                if value.hasPrefix("~") { denied.formUnion(calls) } else { allowed.formUnion(calls) }
            }
        }
        #expect(used.subtracting(allowed).isEmpty, "\(name) calls what its filter does not allow: \(used.subtracting(allowed).sorted())")
        // fchown: SQLite calls it only when running as root (these tests do; the unit never does).
        let refused = used.intersection(denied).subtracting(["fchown"])
        #expect(refused.isEmpty, "\(name) calls what its unit refuses: \(refused.sorted())")
    }

    /// The system calls of a systemd group (`@system-service`), nested groups expanded.
    static func syscalls(_ group: String) async throws -> Set<String> {
        guard group.hasPrefix("@") else { return [group] }
        let (_, out, _) = try await TestProcess.run("/usr/bin/systemd-analyze", ["syscall-filter", group])
        var calls: Set<String> = []
        for line in out.split(separator: "\n").dropFirst() {
            let item = line.trimmingCharacters(in: .whitespaces)
            guard !item.isEmpty, !item.hasPrefix("#") else { continue }
            calls.formUnion(item.hasPrefix("@") ? try await Self.syscalls(item) : [item])
        }
        return calls
    }
}
