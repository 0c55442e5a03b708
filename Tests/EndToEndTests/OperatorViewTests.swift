import Foundation
import Relay
import RelayStore
import RelayAPI
import RelayCtlKit
import RelayModel
import TestSupport
import Testing
import TunnelCore

/// What a relay operator sees: the relay program's own output, its config check, and an audit
/// trail that holds every refusal.
@Suite(.serialized) struct OperatorViewTests {
    static let relay = TestProcess.binary("relay")
    static let relayctl = TestProcess.binary("relayctl")

    static func writeRelayConfig(folder: String, certificate: String, key: String) throws -> String {
        let path = folder + "/relay.yaml"
        try """
            listen: 127.0.0.1:0
            admin_listen: 127.0.0.1:0
            tls:
              certificate_file: \(certificate)
              private_key_file: \(key)
            data_dir: \(folder)/data
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// stdout redirected to a pipe: the first-start lines arrive while the relay runs, and the
    /// command the hint names works as printed.
    @Test func theFirstStartLinesArriveAtOnceAndTheirHintWorks() async throws {
        let folder = TestStack.temporaryDirectory("relay-process")
        let config = try Self.writeRelayConfig(folder: folder, certificate: TestCerts.trusted + "/relay.pem", key: TestCerts.trusted + "/relay.key")
        let relay = try RunningProcess(Self.relay, ["--config", config])
        defer { relay.terminate() }
        guard try await TestWait.poll(seconds: 30, { relay.stdout.contains("relay listening on") }) else {
            throw TestFailure("no listening line while the relay runs: \(relay.stdout) \(relay.stderr)")
        }
        #expect(relay.isRunning)
        let lines = relay.stdout.split(separator: "\n").map(String.init)
        let port = try #require(lines.first { $0.hasPrefix("relay listening on") }?.split(separator: ":").last.flatMap { Int($0) })
        let hint = try #require(lines.first { $0.contains("use it to create your own: relayctl ") })
        // The hint as printed, with a real name: it creates a token.
        let arguments = hint.components(separatedBy: "relayctl ")[1].split(separator: " ").map { word in
            word == "NAME" ? "dave" : word == "CA_FILE" ? TestCerts.trusted + "/ca.pem" : String(word)
        }
        #expect(arguments.contains("https://127.0.0.1:\(port)"), "the hint names the relay as it listens: \(hint)")
        let (code, out, err) = try await TestProcess.run(Self.relayctl, arguments)
        #expect(code == 0 && out.contains("token dave (ops)"), "\(hint): \(out) \(err)")
        relay.terminate()
        #expect(await relay.exitStatus() == 0)
    }

    @Test func checkConfigLoadsTheCertificateAndKeyAsAStartWouldAndCreatesNothing() async throws {
        let folder = TestStack.temporaryDirectory("check-config")
        let missing = try Self.writeRelayConfig(folder: folder, certificate: folder + "/nope.pem", key: TestCerts.trusted + "/relay.key")
        let (missingCode, _, missingError) = try await TestProcess.run(Self.relay, ["--config", missing, "--check-config"])
        #expect(missingCode != 0 && missingError.contains("nope.pem") && missingError.contains("no such file"), "\(missingError)")

        let mismatched = try Self.writeRelayConfig(folder: folder, certificate: TestCerts.trusted + "/relay.pem", key: TestCerts.other + "/relay.key")
        let (checkCode, _, checkError) = try await TestProcess.run(Self.relay, ["--config", mismatched, "--check-config"])
        #expect(checkCode != 0 && checkError.contains("does not match the certificate"), "\(checkError)")
        #expect(!checkError.contains("BoringSSL") && !checkError.contains(".build"), "\(checkError)")
        // A real start fails the same way, before creating anything.
        let (startCode, _, startError) = try await TestProcess.run(Self.relay, ["--config", mismatched])
        #expect(startCode != 0 && startError.contains("does not match the certificate"))
        #expect(!FileManager.default.fileExists(atPath: folder + "/data"), "no data_dir, no bootstrap token")

        let good = try Self.writeRelayConfig(folder: folder, certificate: TestCerts.trusted + "/relay.pem", key: TestCerts.trusted + "/relay.key")
        let (goodCode, goodOut, _) = try await TestProcess.run(Self.relay, ["--config", good, "--check-config"])
        #expect(goodCode == 0 && goodOut.contains("OK"))
        #expect(!FileManager.default.fileExists(atPath: folder + "/data"))
    }

    /// An expert calling what only operators may: 403, and an audit record each, folded per
    /// caller, action and reason per minute.
    @Test func everyRefusalOfAnAuthenticatedCallerIsAudited() async throws {
        let stack = try await TestStack.start(approve: false)
        let environment: [String: String?] = [
            "RELAYCTL_TOKEN": stack.expertToken, "RELAYCTL_RELAY": "https://127.0.0.1:\(stack.relayPort)",
            "RELAYCTL_CA": TestCerts.trusted + "/ca.pem",
        ]
        let calls: [[String]] = [
            ["tokens", "list"], ["sessions", "kill", "abc"], ["audit", "export"],
            ["requests", "create", "--cluster", "demo", "--reason", "x", "--expert", "bob"],
        ]
        for call in calls {
            let (code, _, err) = try await TestProcess.run(Self.relayctl, call, environment: environment)
            #expect(code == RelayCtlExit.denied, "\(call): \(err)")
            #expect(err.split(separator: "\n").count == 1 && !err.contains("Usage"), "one line, no usage: \(err)")
        }
        let denied = try await stack.control.store.audit(since: nil, afterID: 0, limit: 1000).filter { $0.outcome == .denied && $0.actor == "expert:alice" }
        #expect(denied.map(\.action) == ["api GET /v1/tokens", "api POST /v1/sessions/abc/kill", "api GET /v1/audit", "api POST /v1/requests"])
        #expect(denied.allSatisfy { $0.reason?.contains("ops_only") == true })

        // A script repeating one refusal: the first recorded, the rest counted once the minute ends.
        stack.clock.freezeAtNextMinute()
        for _ in 0..<5 {
            do {
                let _: [TokenView] = try await stack.api(token: stack.expertToken).get(APIPath.tokens)
            } catch let error as APIError {
                #expect(error.status == 403)
            }
        }
        stack.clock.advance(seconds: 60)
        try await stack.waitUntil("the minute's summary") {
            try await stack.control.store.audit(since: nil, afterID: 0, limit: 1000).contains { $0.reason?.contains("4 more like this") == true }
        }
        let tokenRefusals = try await stack.control.store.audit(since: nil, afterID: 0, limit: 1000)
            .filter { $0.actor == "expert:alice" && $0.action == "api GET /v1/tokens" }
        #expect(tokenRefusals.count == 3, "the earlier one, the first of the minute, the summary: \(tokenRefusals.map { $0.reason ?? "" })")
        await stack.stop()
    }

    /// `relay migrate --check` says what a start would apply and changes nothing; `relay migrate`
    /// applies it; on SQLite and on PostgreSQL alike (the same history), no password in any output.
    @Test(arguments: ["sqlite", "postgres"])
    func migrateCheckSaysWhatWouldRunAndMigrateAppliesIt(_ backend: String) async throws {
        let folder = TestStack.temporaryDirectory("migrate-\(backend)")
        let config = try Self.writeRelayConfig(folder: folder, certificate: TestCerts.trusted + "/relay.pem", key: TestCerts.trusted + "/relay.key")
        var database: PostgresSettings?
        if backend == "postgres" {
            guard PostgresTestServer.settings != nil || PostgresTestServer.required else { return }
            let created = try await PostgresTestServer.makeDatabase()
            database = created
            FileManager.default.createFile(atPath: folder + "/db-password", contents: Data((created.password ?? "").utf8), attributes: [.posixPermissions: 0o600])
            let yaml = try String(contentsOfFile: config, encoding: .utf8)
                + "\nstore: postgres\npostgres:\n  url: \(created.displayURL)\n  password_file: db-password\n  operation_timeout: 20s\n"
            try yaml.write(toFile: config, atomically: true, encoding: .utf8)
        }
        defer { if let database { Task { await PostgresTestServer.drop(database) } } }
        let secret = database?.password ?? "no password"

        let (pending, pendingOut, pendingErr) = try await TestProcess.run(Self.relay, ["migrate", "--check", "--config", config])
        #expect(pending == 3 && pendingOut.contains("would apply v1, v2, v3"), "\(pendingOut) \(pendingErr)")
        if backend == "sqlite" { #expect(!FileManager.default.fileExists(atPath: folder + "/data/relay.sqlite"), "--check creates nothing") }
        let (applied, appliedOut, appliedErr) = try await TestProcess.run(Self.relay, ["migrate", "--config", config])
        #expect(applied == 0 && appliedOut.contains("applied v1, v2, v3"), "\(appliedOut) \(appliedErr)")
        let (done, doneOut, _) = try await TestProcess.run(Self.relay, ["migrate", "--check", "--config", config])
        #expect(done == 0 && doneOut.contains("up to date"), "\(doneOut)")
        for output in [pendingOut, pendingErr, appliedOut, appliedErr, doneOut] { #expect(!output.contains(secret)) }
    }

    /// Each program says its version, writes shell completions (argument-parser's) that know its
    /// subcommands, and shows examples in its help.
    @Test(arguments: [("relay", "migrate"), ("relayctl", "session"), ("connector", "register")])
    func everyProgramPrintsItsVersionCompletionsAndExamples(_ program: String, _ subcommand: String) async throws {
        let binary = TestProcess.binary(program)
        let (versionCode, version, _) = try await TestProcess.run(binary, ["--version"])
        #expect(versionCode == 0 && version.trimmingCharacters(in: .whitespacesAndNewlines) == ProductVersion.current)
        for shell in ["bash", "zsh", "fish"] {
            let (code, script, err) = try await TestProcess.run(binary, ["--generate-completion-script", shell])
            #expect(code == 0 && script.contains(subcommand), "\(program) \(shell): \(err)")
        }
        let (helpCode, help, _) = try await TestProcess.run(binary, ["--help"])
        #expect(helpCode == 0 && help.contains("Examples:") && help.contains("\(program) "), "\(help)")
    }
}
