import DemoComponentKit
import RelayStore
import Foundation
import TestSupport
import Testing
import TunnelCore

/// Everything at the most verbose level, in JSON lines, with canary secrets everywhere a secret
/// goes: the ops and expert tokens, the enrollment token, the connector's credential, relayctl's
/// local token, the database password (with PostgreSQL), and tokens that are wrong or revoked.
/// None may appear in any program's log, any audit file, any error message or any CLI output, except
/// the one output whose purpose is to hand that secret over (`clusters add`, `tokens create`).
/// The same run follows one request by its ID across the relay's log and the customer's audit log.
@Suite(.serialized) struct SecretCanaryTests {
    @Test func noSecretReachesALogAnAuditFileAnErrorOrCLIOutput() async throws {
        let folder = TestStack.temporaryDirectory("canary")
        let ca = TestCerts.trusted + "/ca.pem"
        var database: PostgresSettings?
        if PostgresTestServer.settings != nil || PostgresTestServer.required { database = try await PostgresTestServer.makeDatabase() }
        defer { if let database { Task { await PostgresTestServer.drop(database) } } }
        var store = ""
        if let database {
            try Self.write(folder + "/db-password", database.password ?? "")
            store = "store: postgres\npostgres:\n  url: \(database.displayURL)\n  password_file: db-password\n  operation_timeout: 20s\n"
        }
        let relayYAML = """
            listen: 127.0.0.1:0
            admin_listen: 127.0.0.1:0
            tls:
              certificate_file: \(TestCerts.trusted)/relay.pem
              private_key_file: \(TestCerts.trusted)/relay.key
            data_dir: \(folder)/data
            heartbeat_interval: 1s
            log:
              level: trace
              format: json
            \(store)
            """
        try Self.write(folder + "/relay.yaml", relayYAML)
        let relay = try RunningProcess(TestProcess.binary("relay"), ["--config", folder + "/relay.yaml"])
        defer { relay.killNow() }
        guard try await TestWait.poll(seconds: 60, { relay.stdout.contains("relay listening on") }) else {
            throw TestFailure("the relay did not start: \(relay.stdout) \(relay.stderr)")
        }
        let port = try #require(relay.stdout.firstMatch(of: #/relay listening on 127\.0\.0\.1:(\d+)/#).map { String($0.1) })
        let url = "https://127.0.0.1:\(port)"
        let ops = try String(contentsOfFile: folder + "/data/bootstrap-ops-token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)

        var checked: [(what: String, text: String)] = []
        func ctl(_ arguments: [String], token: String, check: Bool = true) async throws -> (Int32, String) {
            let (code, out, err) = try await TestProcess.run(
                TestProcess.binary("relayctl"), arguments + ["--relay", url, "--ca", ca], environment: ["RELAYCTL_TOKEN": token])
            if check { checked.append(("relayctl \(arguments.prefix(2).joined(separator: " "))", out + err)) }
            return (code, out)
        }

        // The two outputs that hand a secret over, once, by design.
        let (_, added) = try await ctl(["clusters", "add", "canary", "--json"], token: ops, check: false)
        let enrollment = try #require(added.firstMatch(of: #/"enrollmentToken"\s*:\s*"([^"]+)"/#).map { String($0.1) })
        let (_, created) = try await ctl(["tokens", "create", "--name", "alice", "--role", "expert", "--json"], token: ops, check: false)
        let expert = try #require(created.firstMatch(of: #/"secret"\s*:\s*"([^"]+)"/#).map { String($0.1) })
        let (_, createdBob) = try await ctl(["tokens", "create", "--name", "bob", "--role", "expert", "--json"], token: ops, check: false)
        let revoked = try #require(createdBob.firstMatch(of: #/"secret"\s*:\s*"([^"]+)"/#).map { String($0.1) })
        _ = try await ctl(["tokens", "revoke", "bob"], token: ops)
        let wrong = "rat_" + String(repeating: "Q", count: 43)

        let component = try await DemoComponent.start(name: "ui", group: TestStack.group)
        defer { Task { try? await component.close() } }
        try Self.write(
            folder + "/connector.yaml",
            """
            node_id: n1
            credential_file: credential.json
            state_dir: state
            relay:
              url: \(url)
              ca_file: \(ca)
            heartbeat:
              interval: 1s
            privacy:
              mode: all
            components:
              ui: \(component.url)
            log:
              level: trace
              format: json
            """)
        try Self.write(folder + "/enrollment", enrollment)
        let connectorYAML = ["--config", folder + "/connector.yaml"]
        let (registered, registerOut, registerErr) = try await TestProcess.run(
            TestProcess.binary("connector"), ["register"] + connectorYAML + ["--enrollment-token-file", folder + "/enrollment"])
        #expect(registered == 0, "\(registerOut) \(registerErr)")
        checked.append(("connector register", registerOut + registerErr))
        let credentialFile = try String(contentsOfFile: folder + "/credential.json", encoding: .utf8)
        let credential = try #require(credentialFile.firstMatch(of: #/"credential"\s*:\s*"([^"]+)"/#).map { String($0.1) })
        // The same token again: refused, and the refusal does not echo it.
        let (again, againOut, againErr) = try await TestProcess.run(
            TestProcess.binary("connector"), ["register"] + connectorYAML + ["--enrollment-token-file", folder + "/enrollment"])
        #expect(again != 0)
        checked.append(("connector register (used token)", againOut + againErr))

        let connector = try RunningProcess(TestProcess.binary("connector"), ["run"] + connectorYAML)
        defer { connector.killNow() }
        _ = try await ctl(["requests", "create", "--cluster", "canary", "--role", "admin", "--duration", "1h", "--reason", "canary"], token: expert)
        try await FaultTests.waitFor("the request to be approved and the tunnel up", seconds: 60) {
            let (_, listed) = try await ctl(["clusters", "show", "canary", "--json"], token: ops, check: false)
            return listed.contains("\"tunnelsHere\" : 1") || listed.contains("\"tunnelsHere\":1")
        }

        let session = try RunningProcess(
            TestProcess.binary("relayctl"),
            ["session", "open", "--relay", url, "--ca", ca, "--cluster", "canary", "--component", "ui", "--listen", "127.0.0.1:0",
             "--local-token-file", folder + "/local-token"],
            environment: ["RELAYCTL_TOKEN": expert])
        defer { session.killNow() }
        guard try await TestWait.poll(seconds: 60, { session.stdout.contains("scripts: http://") }) else {
            throw TestFailure("no session: \(session.stdout) \(session.stderr)")
        }
        let localPort = try #require(session.stdout.firstMatch(of: #/scripts: http:\/\/127\.0\.0\.1:(\d+)/#).flatMap { Int($0.1) })
        let local = try String(contentsOfFile: folder + "/local-token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let page = try await TestHTTPConnection.request(port: localPort, .GET, "/api/status", headers: [("x-relayctl-token", local)])
        #expect(page.status == .ok)
        let refused = try await TestHTTPConnection.request(port: localPort, .GET, "/api/status", headers: [("x-relayctl-token", wrong)])
        #expect(refused.status == .unauthorized)
        checked.append(("relayctl's local port refusing a wrong token", refused.text))

        // Errors a person meets: a wrong token, a revoked one.
        for token in [wrong, revoked, ""] {
            let (code, _) = try await ctl(["clusters", "list"], token: token)
            #expect(code != 0)
        }
        // The operators' status page, signed in with the ops token (a form body at trace level), and a scrape.
        let curl = ["-s", "-i", "--max-time", "30", "--cacert", ca]
        let signIn = try await runCurl(curl + ["--data-urlencode", "token=\(ops)", "\(url)/ops/sign-in"])
        let cookie = try #require(signIn.firstMatch(of: #/relay_ops=([0-9a-f]{64})/#).map { String($0.1) })
        let statusPage = try await runCurl(curl + ["-b", "relay_ops=\(cookie)", "\(url)/ops/status"])
        #expect(statusPage.hasPrefix("HTTP/1.1 200"))
        checked.append(("status page sign-in", signIn))
        checked.append(("status page", statusPage))
        let adminURL = try #require(relay.stdout.firstMatch(of: #/metrics on (http:\/\/127\.0\.0\.1:\d+)/#).map { String($0.1) })
        let scrape = try await runCurl(["-s", "--max-time", "30", "\(adminURL)/metrics"])
        #expect(scrape.contains("relay_build_info"))
        checked.append(("/metrics", scrape))
        _ = try await ctl(["audit", "export", "--json"], token: ops)
        _ = try await ctl(["audit", "export"], token: ops)
        _ = try await ctl(["sessions", "list", "--json"], token: ops)
        for command in [["status", "--json"], ["sessions", "list"], ["requests", "list"], ["audit", "verify"], ["audit", "tail", "-n", "100"]] {
            let (_, out, err) = try await TestProcess.run(TestProcess.binary("connector"), command + connectorYAML)
            checked.append(("connector \(command.joined(separator: " "))", out + err))
        }
        if let database {
            // A wrong database password: the relay says it cannot connect, and not with what.
            let badFolder = TestStack.temporaryDirectory("canary-bad-db")
            try Self.write(badFolder + "/db-password", "canary-wrong-db-password-7f3a")
            try Self.write(
                badFolder + "/relay.yaml",
                relayYAML.replacingOccurrences(of: "data_dir: \(folder)/data", with: "data_dir: \(badFolder)/data")
                    .replacingOccurrences(of: "operation_timeout: 20s", with: "operation_timeout: 3s"))
            let (code, out, err) = try await TestProcess.run(TestProcess.binary("relay"), ["--config", badFolder + "/relay.yaml"])
            #expect(code != 0)
            #expect(err.contains("refused the login") && err.contains("28P01"), "said at once, with what to check")
            checked.append(("relay with a wrong database password", out + err))
        }

        session.terminate()
        _ = await session.exitStatus()
        connector.terminate()
        _ = await connector.exitStatus()
        relay.terminate()
        _ = await relay.exitStatus()
        checked.append(("relay stdout", relay.stdout))
        checked.append(("relay log", relay.stderr))
        checked.append(("connector log", connector.stdout + connector.stderr))
        checked.append(("relayctl session open", session.stdout + session.stderr))
        let auditFolder = folder + "/state/audit"
        for file in try FileManager.default.contentsOfDirectory(atPath: auditFolder) {
            checked.append(("customer audit \(file)", try String(contentsOfFile: auditFolder + "/" + file, encoding: .utf8)))
        }

        var canaries = [
            ("ops token", ops), ("expert token", expert), ("revoked token", revoked), ("wrong token", wrong), ("enrollment token", enrollment),
            ("connector credential", credential), ("relayctl local token", local), ("wrong database password", "canary-wrong-db-password-7f3a"),
        ]
        if let password = database?.password { canaries.append(("database password", password)) }
        for (what, text) in checked {
            for (name, secret) in canaries {
                // Only names in the message: a failure must not print the secret it found.
                let leaked = text.contains(secret)
                #expect(!leaked, "the \(name) is in \(what)")
            }
        }

        // Logs at trace, as JSON lines: each line is one object with time, level, logger and message.
        let relayLines = relay.stderr.split(separator: "\n")
        #expect(relayLines.count > 20, "trace writes plenty")
        for line in relayLines + connector.stderr.split(separator: "\n") {
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["time"] != nil && object?["level"] != nil && object?["message"] != nil, "not a JSON log line: \(line)")
        }
        #expect(relayLines.contains { $0.contains("\"level\":\"trace\"") || $0.contains("\"level\":\"debug\"") }, "the verbose levels are on")

        // One request followed: its ID in the relay's log line and in the customer's audit record.
        let sessionLine = try #require(
            relayLines.first { $0.contains("\"message\":\"session request\"") && $0.contains("\"status\":\"200\"") }, "the relay logs each request")
        let requestID = try #require(sessionLine.firstMatch(of: #/"request_id":"([0-9a-f]{32})"/#).map { String($0.1) })
        let audits = checked.filter { $0.what.hasPrefix("customer audit") }.map(\.text).joined()
        #expect(audits.contains(requestID), "the customer's audit log has request \(requestID)")
        // And an API call: the ID relayctl printed with its error is on the relay's log line and audit record.
        let refusedCall = try #require(checked.first { $0.what == "relayctl clusters list" && $0.text.contains("(request ID ") })
        let callID = try #require(refusedCall.text.firstMatch(of: #/\(request ID ([0-9a-f]{32})\)/#).map { String($0.1) })
        #expect(relayLines.contains { $0.contains("\"message\":\"api call\"") && $0.contains("\"request_id\":\"\(callID)\"") })
        #expect(relayLines.contains { $0.contains("\"message\":\"denied\"") && $0.contains("\"request_id\":\"\(callID)\"") }, "the refusal's audit record")
    }

    static func write(_ path: String, _ text: String) throws {
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o600)
    }
}
