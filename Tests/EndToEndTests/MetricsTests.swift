import Foundation
import NIOHTTP1
import Relay
import RelayAPI
import Testing
import TunnelCore

/// The relay's `/metrics` on its admin listener, scraped as Prometheus scrapes it, after what an
/// operator would want counted: a tunnel, a session and its requests, a bad token, a reconnect.
@Suite struct MetricsTests {
    @Test func aScrapeShowsTunnelsSessionsStreamsAndFailures() async throws {
        let stack = try await TestStack.start(relay: { $0.adminListen = ("127.0.0.1", 0) })
        let admin = try #require(stack.relay.adminAddress?.port)
        let session = try await stack.openSession()
        let port = session.localAddress!.port!
        let page = try await TestHTTPConnection.request(port: port, .GET, "/bytes/100000")
        #expect(page.status == .ok)
        // A refusal by the customer's connector: a path trick.
        let refused = try await TestHTTPConnection.request(port: port, .GET, "/..%2fsecrets")
        let code = try #require(refused.headers.first(name: WireHeader.error))
        // An API call with a token that does not exist.
        let api = try APIClient(
            base: try WebSocketURL(parsing: "https://127.0.0.1:\(stack.relayPort)", acceptHTTPS: true), caFile: TestCerts.trusted + "/ca.pem",
            bearer: "rat_" + String(repeating: "0", count: 43), group: TestStack.group)
        await #expect(throws: APIError.self) { let _: WhoAmI = try await api.get(APIPath.whoami) }
        // The connector redials a tunnel the relay lost: one reconnect.
        let tunnel = try #require(stack.relay.registry.tunnels(cluster: "demo").first)
        try await tunnel.channel.close()
        try await stack.waitUntil("the tunnel to be redialed") {
            stack.relay.registry.tunnels(cluster: "demo").contains { $0.id != tunnel.id }
        }
        try await stack.waitUntil("the session's requests to be counted") {
            let scrape = try await Scrape.take(port: admin)
            return scrape.value("relay_streams_opened_total") ?? 0 >= 2 && scrape.value("relay_streams_refused_total", ["code": code]) != nil
        }

        let scrape = try await Scrape.take(port: admin)
        #expect(scrape.contentType.hasPrefix("text/plain; version=0.0.4"))
        #expect(scrape.value("relay_tunnels_connected") == Double(stack.relay.registry.count))
        #expect(scrape.value("relay_clusters_connected") == 1)
        #expect(scrape.value("relay_sessions_active") == 1)
        #expect(scrape.value("relay_access_requests", ["state": "approved"]) == 1)
        #expect(scrape.value("relay_access_requests", ["state": "pending"]) == 0)
        #expect(scrape.value("relay_ready") == 1)
        #expect(scrape.value("relay_store_up") == 1)
        #expect(scrape.value("relay_build_info", ["version": ProductVersion.current]) == 1)
        #expect(scrape.value("relay_heartbeats_total", ["outcome": "ok"]) ?? 0 >= 1)
        #expect(scrape.value("relay_streams_opened_total") ?? 0 >= 1)
        #expect(scrape.value("relay_streams_refused_total", ["code": code]) == 1, "\(scrape.lines("relay_streams_refused_total"))")
        #expect(scrape.value("relay_bytes_total", ["direction": "to_expert"]) ?? 0 >= 100_000)
        #expect(scrape.value("relay_auth_failures_total", ["kind": "api_token"]) == 1)
        #expect(scrape.value("relay_auth_failures_total", ["kind": "connector_credential"]) == 0)
        // At least the forced redial (a loaded machine may add one of its own).
        #expect(scrape.value("relay_tunnel_reconnects_total") ?? 0 >= 1)
        #expect(scrape.value("relay_handshake_duration_seconds_count", ["link": "tunnel"]) ?? 0 >= 2)
        #expect(scrape.value("relay_handshake_duration_seconds_count", ["link": "session"]) == 1)
        #expect(scrape.value("relay_stream_duration_seconds_count") ?? 0 >= 1)
        #expect(scrape.value("relay_api_request_duration_seconds_count", ["route": "POST /v1/heartbeat", "status": "200"]) ?? 0 >= 1)
        #expect(scrape.value("relay_api_request_duration_seconds_count", ["route": "GET /v1/whoami", "status": "401"]) == 1)
        #expect(scrape.value("relay_store_operation_duration_seconds_count", ["operation": "heartbeat_view", "outcome": "ok"]) ?? 0 >= 1)
        // Every family says what it is.
        for family in scrape.families { #expect(scrape.text.contains("# HELP \(family) "), "\(family) has no HELP") }
        await stack.stop()
    }

    /// A refusal code from the connector becomes a label only if the programs use it: a peer cannot
    /// make a series per request.
    @Test func oddRefusalCodesShareOneSeries() {
        #expect(RelayMetrics.boundedCode("denied_path") == "denied_path")
        #expect(RelayMetrics.boundedCode("no_tunnel") == "no_tunnel")
        for odd in ["a000001", "a000002", "ünïcode", "", String(repeating: "x", count: 500)] { #expect(RelayMetrics.boundedCode(odd) == "other") }
    }

    /// A relay node of an earlier version lists nodes without their counts: still read.
    @Test func relayNodesFromAnEarlierVersionStillDecode() throws {
        let old = #"{"id":"relay-1","tunnelURL":"wss://a/v1/tunnel","startedAt":"2026-12-01T00:00:00Z","lastSeenAt":"2026-12-01T00:00:10Z","live":true}"#
        let node = try APIJSON.decoder().decode(RelayNodeView.self, from: Data(old.utf8))
        #expect(node.tunnels == 0 && node.sessions == 0 && node.live)
    }

    /// Bound beyond loopback, the admin listener speaks TLS (the relay's certificate) and `/metrics`
    /// is for ops tokens only; the probes stay open.
    @Test func metricsOnAnOpenAddressNeedTLSAndAnOpsToken() async throws {
        let stack = try await TestStack.start(approve: false, relay: { $0.adminListen = ("0.0.0.0", 0) })
        let admin = try #require(stack.relay.adminAddress?.port)
        let url = "https://127.0.0.1:\(admin)"
        let curl = ["-s", "-i", "--max-time", "30", "--cacert", TestCerts.trusted + "/ca.pem"]
        let plain = try? await TestHTTPConnection.request(port: admin, .GET, "/metrics")
        #expect(plain?.status != .ok, "no plain HTTP beyond loopback")
        let anonymous = try await runCurl(curl + ["\(url)/metrics"])
        #expect(anonymous.hasPrefix("HTTP/1.1 401") && !anonymous.contains("relay_"))
        let expert = try await runCurl(curl + ["-H", "authorization: Bearer \(stack.expertToken)", "\(url)/metrics"])
        #expect(expert.hasPrefix("HTTP/1.1 403") && expert.contains("ops_only"), "an expert token is not enough")
        let ops = try await runCurl(curl + ["-H", "authorization: Bearer \(stack.opsToken)", "\(url)/metrics"])
        #expect(ops.hasPrefix("HTTP/1.1 200"))
        #expect(ops.contains("relay_auth_failures_total{kind=\"api_token\"} 1"), "the anonymous scrape")
        #expect(ops.contains("relay_auth_failures_total{kind=\"role\"} 1"), "the expert's scrape")
        #expect(try await runCurl(curl + ["\(url)/healthz"]).hasPrefix("HTTP/1.1 200"))
        #expect(try await runCurl(curl + ["\(url)/readyz"]).hasPrefix("HTTP/1.1 200"))
        await stack.stop()
    }
}

/// One scrape, read as Prometheus reads the text format (samples only; `# HELP`/`# TYPE` kept as text).
struct Scrape {
    var text: String
    var contentType: String
    /// name{label="value",...} -> value
    var samples: [(name: String, labels: [String: String], value: Double)] = []

    static func take(port: Int) async throws -> Scrape {
        let response = try await TestHTTPConnection.request(port: port, .GET, "/metrics")
        guard response.status == .ok else { throw TestFailure("/metrics answered \(response.status): \(response.text)") }
        return Scrape(text: response.text, contentType: response.headers.first(name: "content-type") ?? "")
    }

    init(text: String, contentType: String = "") {
        self.text = text
        self.contentType = contentType
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            let series = line[..<space]
            var labels: [String: String] = [:]
            var name = String(series)
            if let open = series.firstIndex(of: "{") {
                name = String(series[..<open])
                let body = series[series.index(after: open)..<series.index(before: series.endIndex)]
                for pair in body.split(separator: ",") {
                    let parts = pair.split(separator: "=", maxSplits: 1)
                    if parts.count == 2 { labels[String(parts[0])] = String(parts[1].dropFirst().dropLast()) }
                }
            }
            self.samples.append((name, labels, value))
        }
    }

    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        self.samples.first { $0.name == name && $0.labels == labels }?.value
    }

    func lines(_ name: String) -> [String] { self.text.split(separator: "\n").map(String.init).filter { $0.hasPrefix(name) } }

    var families: Set<String> {
        Set(self.text.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.map { String($0.split(separator: " ")[2]) })
    }
}
