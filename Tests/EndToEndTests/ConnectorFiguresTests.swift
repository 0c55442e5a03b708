import Connector
import Foundation
import NIOHTTP1
import Testing
import TunnelCore

/// The connector's figures, for a customer's monitoring: `connector status --json`, and the
/// node_exporter textfile it writes (it never listens, so nothing scrapes it).
@Suite struct ConnectorFiguresTests {
    @Test func statusAndTheTextfileShowHeartbeatsTunnelsRequestsAndBytes() async throws {
        let textfile = TestStack.temporaryDirectory("textfile") + "/connector.prom"
        let stack = try await TestStack.start { $0.metricsTextfile = textfile }
        let session = try await stack.openSession()
        let port = session.localAddress!.port!
        for _ in 1...3 { #expect(try await TestHTTPConnection.request(port: port, .GET, "/bytes/1000").status == .ok) }
        let refused = try await TestHTTPConnection.request(port: port, .GET, "/..%2fsecrets")
        #expect(refused.headers.first(name: WireHeader.error) != nil)
        try await stack.waitUntil("the four requests to be counted") {
            let counts = stack.privacy.figures.counts
            return counts.requestsAllowed + counts.requestsRefused == 4
        }

        let (code, out, err) = try await TestProcess.run(
            TestProcess.binary("connector"), ["status", "--json", "--state-dir", stack.connectorConfig.stateDirectory])
        #expect(code == 0, "\(err)")
        let status = try JSONDecoder.iso8601.decode(ConnectorStatus.self, from: Data(out.utf8))
        let figures = try #require(status.figures)
        #expect(figures.requestsAllowed == 3 && figures.requestsRefused == 1)
        #expect(figures.bytesToExperts >= 3000)
        #expect(figures.heartbeatsAnswered >= 1 && figures.tunnelsOpened >= 1)
        let (_, human, _) = try await TestProcess.run(TestProcess.binary("connector"), ["status", "--state-dir", stack.connectorConfig.stateDirectory])
        #expect(human.contains("3 requests allowed, 1 refused"), "\(human)")

        // Stopping writes the file one last time: everything above is in it.
        await stack.stop()
        let scrape = Scrape(text: try String(contentsOfFile: textfile, encoding: .utf8))
        #expect(scrape.value("connector_requests_total", ["decision": "allow"]) == 3)
        #expect(scrape.value("connector_requests_total", ["decision": "deny"]) == 1)
        #expect(scrape.value("connector_tunnels_opened_total") == Double(stack.privacy.figures.counts.tunnelsOpened))
        #expect(scrape.value("connector_heartbeats_total", ["outcome": "answered"]) == Double(stack.privacy.figures.counts.heartbeatsAnswered))
        #expect(scrape.value("connector_mode", ["mode": "all"]) == 1 && scrape.value("connector_mode", ["mode": "disabled"]) == 0)
        #expect(scrape.value("connector_info", ["cluster": "demo", "node": "node-1", "version": ProductVersion.current]) == 1)
        #expect(scrape.value("connector_audit_failing") == 0)
        for family in scrape.families { #expect(scrape.text.contains("# HELP \(family) "), "\(family) has no HELP") }
        #expect(!FileManager.default.fileExists(atPath: textfile + ".tmp"), "written whole, then renamed")
        let mode = try FileManager.default.attributesOfItem(atPath: textfile)[.posixPermissions] as? Int
        #expect(mode == 0o644, "node_exporter, another user, reads it")
    }
}

extension JSONDecoder {
    static var iso8601: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
