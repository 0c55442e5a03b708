import Foundation
import NIOHTTP1
import RelayAPI
import RelayModel
import Testing
import TunnelCore

/// Audit to a SIEM: `relayctl audit export --follow` and `connector audit export --follow` print
/// each record once, as JSON lines, as they are written, for a standard shipper to forward.
@Suite struct AuditExportTests {
    @Test func bothAuditsStreamNewRecordsAsJSONLines() async throws {
        let stack = try await TestStack.start()
        let relayctl = try RunningProcess(
            TestProcess.binary("relayctl"),
            ["audit", "export", "--json", "--follow", "--interval", "200ms", "--relay", "https://127.0.0.1:\(stack.relayPort)",
             "--ca", TestCerts.trusted + "/ca.pem"],
            environment: ["RELAYCTL_TOKEN": stack.opsToken])
        defer { relayctl.killNow() }
        let connector = try RunningProcess(
            TestProcess.binary("connector"),
            ["audit", "export", "--follow", "--interval", "100ms", "--state-dir", stack.connectorConfig.stateDirectory])
        defer { connector.killNow() }

        // What happens after both started: three requests through a session, and an operator's action.
        let session = try await stack.openSession()
        for index in 1...3 {
            let response = try await TestHTTPConnection.request(port: session.localAddress!.port!, .GET, "/api/status?n=\(index)")
            #expect(response.status == .ok)
        }
        let ops = try await stack.control.authenticateUser(bearer: stack.opsToken, action: "test")
        _ = try await stack.control.createToken(CreateTokenRequest(name: "dave", role: .expert, ttlSeconds: nil), by: ops)

        try await stack.waitUntil("the connector's export to print the three requests") {
            (1...3).allSatisfy { connector.stdout.contains("\"path\":\"/api/status?n=\($0)\"") }
        }
        try await stack.waitUntil("relayctl's export to print the new token") {
            relayctl.stdout.contains("\"action\":\"token.create\"") && relayctl.stdout.contains("\"subject\":\"dave\"")
        }
        relayctl.terminate()
        connector.terminate()
        _ = await relayctl.exitStatus()
        _ = await connector.exitStatus()

        // The relay's: one record per line, IDs rising, none twice.
        let relayRecords = try relayctl.stdout.split(separator: "\n").map { try APIJSON.decoder().decode(AuditRecord.self, from: Data($0.utf8)) }
        #expect(relayRecords.map(\.id) == relayRecords.map(\.id).sorted() && Set(relayRecords.map(\.id)).count == relayRecords.count)
        #expect(relayRecords.contains { $0.action == "session.start" })
        // The customer's: the stored lines, chained: each names the one before by its hash.
        let lines = connector.stdout.split(separator: "\n").map { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(!lines.isEmpty && lines.allSatisfy { $0 != nil }, "JSON lines")
        let seqs = lines.compactMap { $0?["seq"] as? Int }
        #expect(seqs == Array(1...lines.count), "every record once, in order, from the first")
        for (earlier, later) in zip(lines, lines.dropFirst()) {
            #expect(later?["prev"] as? String == earlier?["hash"] as? String, "the chain fields are in the export")
        }
        await stack.stop()
    }
}
