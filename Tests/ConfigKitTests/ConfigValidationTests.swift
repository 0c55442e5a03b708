import ConfigKit
import Connector
import Foundation
import Relay
import RelayStore
import Testing
import TunnelCore

private let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

private let goodRelay = """
    listen: 127.0.0.1:0
    tls:
      certificate_file: relay.pem
      private_key_file: relay.key
    data_dir: data
    tunnel_urls: [wss://relay-a.example:8443, "wss://relay-b.example:8443/v1/tunnel"]
    heartbeat_interval: 30s
    limits:
      max_frame_size: 64KiB
      handshake_timeout: 5s
    """

private let goodConnector = """
    node_id: node-1
    credential_file: credential.json
    relay:
      url: https://127.0.0.1:8443
      ca_file: ca.pem
    heartbeat:
      interval: 60s
      disabled_interval: 300s
    privacy:
      mode: approvedOnly
      denied_paths: [/secrets, "//api/./certs/"]
      max_session: 2h
      idle_timeout: 10m
    components:
      ui: http://127.0.0.1:8080
      api: http://localhost:9000/api/
      db:
        url: http://127.0.0.1:7000
        case_insensitive_paths: false
        denied_paths: /admin
        pass_headers: [X-WEBAUTH-USER]
        viewer_websocket_paths: [/ws/live, "//metrics/./stream"]
    """

/// One bad config and the error it must produce. Described by key and message only, so the
/// fixture's (fake) secrets stay out of the test output.
struct BadConfig: Sendable, CustomTestStringConvertible {
    var yaml: String
    var key: String
    var message: String
    init(_ yaml: String, _ key: String, _ message: String) {
        self.yaml = yaml
        self.key = key
        self.message = message
    }
    var testDescription: String { "\(key.isEmpty ? "(file)" : key): \(message)" }

    /// Parsing must fail with a `ConfigError` that names `key`, mentions `message` and starts with the file name.
    func expectRejected<T>(file: String, _ parse: (String, String) throws -> T) {
        do {
            _ = try parse(self.yaml, file)
            Issue.record("accepted a bad config; expected an error at \(self.key)")
        } catch let error as ConfigError {
            #expect(error.key == self.key, "\(error)")
            #expect(error.description.contains(self.message), "\(error)")
            #expect(error.description.hasPrefix("\(file): "), "\(error)")
        } catch {
            Issue.record("unexpected error type: \(error)")
        }
    }
}

/// Replaces one line of a YAML document (by its exact text) or appends one.
private func edit(_ yaml: String, replace old: String? = nil, with new: String) -> String {
    guard let old else { return yaml + "\n" + new }
    precondition(yaml.contains(old), "fixture has no line \(old)")
    return yaml.replacingOccurrences(of: old, with: new)
}

@Suite struct RelayConfigTests {
    @Test func goodConfigParsesWithPathsRelativeToTheFile() throws {
        let config = try RelayConfig.parse(yaml: goodRelay, file: "/etc/relay/relay.yaml")
        #expect(config.listenPort == 0)
        #expect(config.certificateFile == "/etc/relay/relay.pem")
        #expect(config.dataDirectory == "/etc/relay/data")
        #expect(config.tunnelURLs == ["wss://relay-a.example:8443/v1/tunnel", "wss://relay-b.example:8443/v1/tunnel"])
        #expect(config.heartbeatIntervalSeconds == 30)
        #expect(config.limits.maxFrameSize == 65536)
        #expect(config.limits.handshakeTimeout == .seconds(5))
        #expect(config.limits.maxConcurrentStreams == TunnelLimits().maxConcurrentStreams)
    }

    /// A shared store: the password read from its file (never from the URL), TLS verified against
    /// the CA file, the nodes' shared token key.
    @Test func aPostgresStoreIsReadWithItsPasswordFromAFile() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("relay-config-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try "canary-db-password\nignored\n".write(toFile: folder + "/db-password", atomically: true, encoding: .utf8)
        let yaml = goodRelay + """

            public_url: wss://relay-a.example.com:8443
            node_ttl: 45s
            token_hash_key_file: keys/token-hash.key
            store: postgres
            postgres:
              url: postgres://relay@db.example.com:6543/relay
              password_file: db-password
              tls: require
              ca_file: db-ca.pem
              pool_size: 20
              operation_timeout: 2s
            """
        let config = try RelayConfig.parse(yaml: yaml, file: folder + "/relay.yaml")
        var expected = PostgresSettings(host: "db.example.com", port: 6543, username: "relay", database: "relay", password: "canary-db-password")
        expected.tls = .require(caFile: folder + "/db-ca.pem")
        expected.poolSize = 20
        expected.operationTimeout = .seconds(2)
        #expect(config.store == .postgres(expected))
        #expect(config.publicURL == "wss://relay-a.example.com:8443/v1/tunnel")
        #expect(config.ownTunnelURL(boundPort: 1) == "wss://relay-a.example.com:8443/v1/tunnel")
        #expect(config.nodeTTLMilliseconds == 45_000)
        #expect(config.tokenHashKeyPath == folder + "/keys/token-hash.key")
        #expect(try RelayConfig.parse(yaml: goodRelay, file: folder + "/relay.yaml").store == .sqlite, "SQLite unless told")
    }

    @Test func shippedExampleIsValid() throws {
        let path = repoRoot.appendingPathComponent("Config/relay.yaml").path
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let config = try RelayConfig.parse(yaml: text, file: path)
        #expect(config.listenPort == 8443)
        #expect(config.limits == TunnelLimits(), "the example documents the defaults")
    }

    @Test(arguments: [
        BadConfig(edit(goodRelay, with: "listn: 1.2.3.4:5"), "listn", "unknown key"),
        BadConfig(edit(goodRelay, with: "admin_listen: 9464"), "admin_listen", "host:port"),
        BadConfig(edit(goodRelay, with: "log:\n  format: xml"), "log.format", "text"),
        BadConfig(edit(goodRelay, replace: "listen: 127.0.0.1:0", with: "listen: localhost"), "listen", "host:port"),
        BadConfig(edit(goodRelay, replace: "listen: 127.0.0.1:0", with: "listen: 127.0.0.1:70000"), "listen", "host:port"),
        BadConfig(edit(goodRelay, replace: "  private_key_file: relay.key", with: "  private_key: relay.key"), "tls.private_key_file", "required"),
        BadConfig(edit(goodRelay, replace: "  certificate_file: relay.pem", with: ""), "tls.certificate_file", "required"),
        BadConfig(edit(goodRelay, with: "node_name: \"bad name!\""), "node_name", "letters, digits"),
        BadConfig(edit(goodRelay, replace: "tunnel_urls: [wss://relay-a.example:8443, \"wss://relay-b.example:8443/v1/tunnel\"]", with: "tunnel_urls: [ws://a:1]"),
         "tunnel_urls[0]", "plain ws://"),
        BadConfig(edit(goodRelay, replace: "heartbeat_interval: 30s", with: "heartbeat_interval: 10ms"), "heartbeat_interval", "between"),
        BadConfig(edit(goodRelay, with: "reconcile_interval: 1h"), "reconcile_interval", "between"),
        BadConfig(edit(goodRelay, replace: "  max_frame_size: 64KiB", with: "  max_frame_size: 1KiB"), "limits.max_frame_size", "16384"),
        BadConfig(edit(goodRelay, replace: "  max_frame_size: 64KiB", with: "  max_frame_size: lots"), "limits.max_frame_size", "expected a size"),
        BadConfig(edit(goodRelay, replace: "  handshake_timeout: 5s", with: "  handshake_timeout: soon"), "limits.handshake_timeout", "duration"),
        BadConfig(edit(goodRelay, replace: "  handshake_timeout: 5s", with: "  handshake_timeout: 0s"), "limits.handshake_timeout", "between"),
        BadConfig(edit(goodRelay, replace: "  handshake_timeout: 5s", with: "  max_concurrent_streams: many"), "limits.max_concurrent_streams", "whole number"),
        BadConfig(edit(goodRelay, replace: "  handshake_timeout: 5s", with: "  max_concurrent_streams: 0"), "limits.max_concurrent_streams", "1 ... 10000"),
        BadConfig(edit(goodRelay, replace: "  handshake_timeout: 5s", with: "  max_streams: 5"), "limits.max_streams", "unknown key"),
        BadConfig(edit(goodRelay, with: "data_dir: x"), "", "duplicated key(s): 'data_dir'"),
        BadConfig(edit(goodRelay, with: "clusters: []"), "clusters", "unknown key"),
        BadConfig(edit(goodRelay, with: "store: mysql"), "store", "one of sqlite, postgres"),
        BadConfig(edit(goodRelay, with: "store: postgres"), "postgres", "required with store: postgres"),
        BadConfig(edit(goodRelay, with: "postgres:\n  url: postgres://relay@db/relay"), "postgres", "only with store: postgres"),
        BadConfig(edit(goodRelay, with: "store: postgres\npostgres:\n  url: postgres://relay:s3cret@db/relay"), "postgres.url", "must not hold the password"),
        BadConfig(edit(goodRelay, with: "store: postgres\npostgres:\n  url: mysql://relay@db/relay"), "postgres.url", "postgres://USER@HOST"),
        BadConfig(edit(goodRelay, with: "store: postgres\npostgres:\n  url: postgres://relay@db/relay?sslmode=disable"), "postgres.url", "takes no parameters"),
        BadConfig(edit(goodRelay, with: "store: postgres\npostgres:\n  url: postgres://relay@db/relay\n  password_file: /nonexistent/pw"), "postgres.password_file", "cannot read"),
        BadConfig(edit(goodRelay, with: "store: postgres\npostgres:\n  url: postgres://relay@db/relay\n  password_env: RELAY_TEST_UNSET_VARIABLE"), "postgres.password_env", "not set"),
        BadConfig(edit(goodRelay, with: "store: postgres\npostgres:\n  url: postgres://relay@db/relay\n  ca_file: ca.pem"), "postgres.ca_file", "only with tls: require"),
        BadConfig(edit(goodRelay, with: "store: postgres\npostgres:\n  url: postgres://relay@db/relay\n  pool_size: 0"), "postgres.pool_size", "1 ... 500"),
        BadConfig(edit(goodRelay, with: "store: postgres\npostgres:\n  url: postgres://relay@db/relay\n  pool: 5"), "postgres.pool", "unknown key"),
        BadConfig(edit(goodRelay, with: "public_url: http://relay-a.example"), "public_url", "use wss://"),
        BadConfig(edit(goodRelay, with: "node_ttl: 1s"), "node_ttl", "between"),
        BadConfig("listen: [1, 2]", "listen", "expected a string"),
        BadConfig("- a\n- b", "", "mapping"),
        BadConfig("listen: \"unterminated", "", "not valid YAML"),
    ])
    func everyBadValueIsRejectedNamingItsKey(_ bad: BadConfig) {
        bad.expectRejected(file: "relay.yaml") { try RelayConfig.parse(yaml: $0, file: $1) }
    }

}

@Suite struct ConnectorConfigTests {
    @Test func goodConfigParses() throws {
        let config = try ConnectorConfig.parse(yaml: goodConnector, file: "/opt/c/connector.yaml")
        #expect(config.nodeID == "node-1")
        #expect(config.credentialFile == "/opt/c/credential.json")
        #expect(config.relayURL.httpsBase == "https://127.0.0.1:8443")
        #expect(config.privacyMode == .approvedOnly)
        #expect(config.heartbeat.enabledIntervalMilliseconds == 60_000)
        #expect(config.heartbeat.disabledIntervalMilliseconds == 300_000)
        #expect(config.backoff == Backoff.Policy() && config.backoff.graceMilliseconds == 10_000, "reconnect defaults")
        #expect(config.drainMilliseconds == 10_000)
        let tuned = try ConnectorConfig.parse(
            yaml: edit(goodConnector, replace: "  ca_file: ca.pem", with: "  ca_file: ca.pem\n  reconnect_grace: 30s\n  drain_timeout: 1m"),
            file: "/opt/c/connector.yaml")
        #expect(tuned.backoff.graceMilliseconds == 30_000 && tuned.drainMilliseconds == 60_000)
        #expect(config.caFile == "/opt/c/ca.pem")
        #expect(config.components.map(\.name) == ["ui", "api", "db"])
        #expect(config.deniedPathPrefixes == ["/secrets", "/api/certs/"], "normalised like request paths")
        #expect(config.maxSessionMilliseconds == 7_200_000 && config.idleTimeoutMilliseconds == 600_000)
        #expect(!config.components[2].caseInsensitivePaths && config.components[2].deniedPathPrefixes == ["/admin"])
        #expect(config.components[0].caseInsensitivePaths, "case-insensitive unless the customer says otherwise")
        #expect(config.components[2].passedHeaders == ["x-webauth-user"] && config.components[0].passedHeaders.isEmpty)
        #expect(config.components[2].viewerWebSocketPaths == ["/ws/live", "/metrics/stream"], "normalised like request paths")
        #expect(config.components[0].viewerWebSocketPaths.isEmpty, "viewers get no websockets unless the customer lists where")
        #expect(config.privacyRules().components["db"]?.viewerWebSocketPaths == ["/ws/live", "/metrics/stream"])
        #expect(config.stateDirectory == "/opt/c/connector-state" && config.audit.directory == "/opt/c/connector-state/audit")
        #expect(config.components[1].host == "localhost")
        #expect(config.components[1].port == 9000)
        #expect(config.components[1].basePath == "/api")
        #expect(config.components[0].authority == "127.0.0.1:8080")
    }

    /// Fail closed: no word from the customer means every request waits for their approval.
    @Test func withoutAPrivacyBlockOrModeTheConnectorRunsApprovedOnly() throws {
        let noBlock = edit(goodConnector, replace: "privacy:\n  mode: approvedOnly\n  denied_paths: [/secrets, \"//api/./certs/\"]\n  max_session: 2h\n  idle_timeout: 10m\n", with: "")
        #expect(!noBlock.contains("privacy:"))
        #expect(try ConnectorConfig.parse(yaml: noBlock, file: "/c.yaml").privacyMode == .approvedOnly)
        let noMode = edit(goodConnector, replace: "  mode: approvedOnly\n", with: "")
        #expect(try ConnectorConfig.parse(yaml: noMode, file: "/c.yaml").privacyMode == .approvedOnly)
    }

    /// `relay.proxy`: a URL, or a map with credentials from a file and a no_proxy list.
    @Test func theProxyIsReadWithItsPasswordFromAFile() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("proxy-config-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try "s3cret-proxy-password\n".write(toFile: folder + "/proxy.pass", atomically: true, encoding: .utf8)
        let short = try ConnectorConfig.parse(
            yaml: edit(goodConnector, replace: "  ca_file: ca.pem", with: "  ca_file: ca.pem\n  proxy: http://proxy.corp:3128"), file: folder + "/c.yaml")
        #expect(short.proxy == OutboundProxy(host: "proxy.corp", port: 3128))
        let full = try ConnectorConfig.parse(
            yaml: edit(
                goodConnector, replace: "  ca_file: ca.pem",
                with: "  ca_file: ca.pem\n  proxy:\n    url: http://proxy.corp:8080\n    username: svc\n    password_file: proxy.pass\n    no_proxy: [relay.lan]"),
            file: folder + "/c.yaml")
        let proxy = try #require(full.proxy)
        #expect(proxy.username == "svc" && proxy.password == "s3cret-proxy-password" && proxy.noProxy == ["relay.lan"])
        #expect("\(proxy)" == "http://proxy.corp:8080 (basic auth as svc)", "the password never prints")
        #expect(!proxy.applies(to: "relay.lan") && !proxy.applies(to: "a.relay.lan") && proxy.applies(to: "relay.example.com"))
        #expect(!OutboundProxy(host: "p", port: 1, noProxy: ["*"]).applies(to: "anything"))
    }

    @Test func shippedExampleIsValid() throws {
        let path = repoRoot.appendingPathComponent("Config/connector.yaml").path
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let config = try ConnectorConfig.parse(yaml: text, file: path)
        #expect(config.components.map(\.name) == ["ui"])
        #expect(config.limits == TunnelLimits())
    }

    @Test(arguments: [
        BadConfig(edit(goodConnector, with: "proxy: yes"), "proxy", "unknown key"),
        BadConfig(edit(goodConnector, with: "cluster_id: demo"), "cluster_id", "unknown key"),
        BadConfig(edit(goodConnector, with: "metrics_textfile: /tmp/connector.txt"), "metrics_textfile", "must end in .prom"),
        BadConfig(edit(goodConnector, with: "log:\n  format: xml"), "log.format", "text"),
        BadConfig(edit(goodConnector, with: "log:\n  level: loud"), "log.level", "trace"),
        BadConfig(edit(goodConnector, replace: "node_id: node-1", with: "node_id: a/b"), "node_id", "letters, digits"),
        BadConfig(edit(goodConnector, replace: "  url: https://127.0.0.1:8443", with: "  url: http://127.0.0.1:8443"), "relay.url", "plain http://"),
        BadConfig(edit(goodConnector, replace: "  url: https://127.0.0.1:8443", with: "  url: https://127.0.0.1:99999"), "relay.url", "bad port"),
        BadConfig(edit(goodConnector, replace: "  url: https://127.0.0.1:8443", with: ""), "relay.url", "required"),
        BadConfig(edit(goodConnector, replace: "  mode: approvedOnly", with: "  mode: sometimes"), "privacy.mode", "must be one of"),
        BadConfig(edit(goodConnector, replace: "pass_headers: [X-WEBAUTH-USER]", with: "pass_headers: [cookie]"), "components.db.pass_headers", "not a header the connector strips"),
        BadConfig(edit(goodConnector, replace: "  disabled_interval: 300s", with: "  disabled_interval: 10s"), "heartbeat.disabled_interval", "between"),
        BadConfig(edit(goodConnector, replace: "  ca_file: ca.pem", with: ""), "relay.ca_file", "required"),
        BadConfig(edit(goodConnector, replace: "  ca_file: ca.pem", with: "  ca_file: ca.pem\n  reconnect_initial: 5s\n  reconnect_max: 1s"),
         "relay.reconnect_max", "between"),
        BadConfig(edit(goodConnector, replace: "  ca_file: ca.pem", with: "  ca_file: ca.pem\n  drain_timeout: 2h"), "relay.drain_timeout", "between"),
        BadConfig(edit(goodConnector, replace: "  ca_file: ca.pem", with: "  ca_file: ca.pem\n  proxy: https://proxy:3128"), "relay.proxy", "http:// URL"),
        BadConfig(edit(goodConnector, replace: "  ca_file: ca.pem", with: "  ca_file: ca.pem\n  proxy: http://svc:hunter2hunter2@proxy:3128"), "relay.proxy", "password_file"),
        BadConfig(edit(goodConnector, replace: "  ca_file: ca.pem", with: "  ca_file: ca.pem\n  proxy:\n    url: http://proxy:3128\n    username: svc"), "relay.proxy.username", "needs a password"),
        BadConfig(edit(goodConnector, replace: "  ca_file: ca.pem", with: "  ca_file: ca.pem\n  proxy:\n    url: http://proxy:3128\n    password_file: pw"), "relay.proxy.password_file", "needs a username"),
        BadConfig(edit(goodConnector, replace: "  ca_file: ca.pem", with: "  ca_file: ca.pem\n  reconnect_grace: later"), "relay.reconnect_grace", "duration"),
        BadConfig(edit(goodConnector, replace: "  ui: http://127.0.0.1:8080", with: "  ui: https://127.0.0.1:8080"), "components.ui", "http://"),
        BadConfig(edit(goodConnector, replace: "  ui: http://127.0.0.1:8080", with: "  ui: http://user:pw@127.0.0.1:8080"), "components.ui", "no credentials"),
        BadConfig(edit(goodConnector, replace: "  ui: http://127.0.0.1:8080", with: "  ui: http://127.0.0.1:notaport"), "components.ui", "bad host or port"),
        BadConfig(edit(goodConnector, replace: "  ui: http://127.0.0.1:8080", with: "  \"../etc\": http://127.0.0.1:8080"), "components.../etc", "component names"),
        BadConfig(edit(goodConnector, replace: "  api: http://localhost:9000/api/", with: "  api:"), "components.api", "needs a URL"),
        BadConfig(edit(goodConnector, replace: "[/secrets, ", with: "[secrets, "), "privacy.denied_paths", "not a path"),
        BadConfig(edit(goodConnector, replace: "[/ws/live, ", with: "[ws/live, "), "components.db.viewer_websocket_paths", "not a path"),
        BadConfig(edit(goodConnector, replace: "  idle_timeout: 10m", with: "  idle_timeout: soon"), "privacy.idle_timeout", "duration"),
        BadConfig(edit(goodConnector, replace: "    case_insensitive_paths: false", with: "    case_insensitive: true"), "components.db.case_insensitive", "unknown key"),
        BadConfig(edit(goodConnector, replace: "    url: http://127.0.0.1:7000", with: "    url: ftp://x"), "components.db.url", "http://"),
        BadConfig(edit(goodConnector, replace: "    denied_paths: /admin", with: "    denied_paths: /admin?x=1"), "components.db.denied_paths", "no query"),
        BadConfig(String(goodConnector[..<goodConnector.range(of: "components:")!.lowerBound]) + "components: {}\n", "components", "needs at least one component"),
    ])
    func everyBadValueIsRejectedNamingItsKey(_ bad: BadConfig) {
        bad.expectRejected(file: "connector.yaml") { try ConnectorConfig.parse(yaml: $0, file: $1) }
    }
}

@Suite struct ValueParsingTests {
    @Test func sizesAndDurations() {
        #expect(parseSize("65536") == 65536)
        #expect(parseSize("64KiB") == 65536)
        #expect(parseSize("4MiB") == 4 << 20)
        #expect(parseSize("1 GiB") == 1 << 30)
        #expect(parseSize("-1") == nil)
        #expect(parseSize("12XB") == nil)
        #expect(parseDurationMilliseconds("250ms") == 250)
        #expect(parseDurationMilliseconds("10s") == 10_000)
        #expect(parseDurationMilliseconds("5m") == 300_000)
        #expect(parseDurationMilliseconds("8h") == 28_800_000)
        #expect(parseDurationMilliseconds("7") == 7000)
        #expect(parseDurationMilliseconds("ten") == nil)
    }
}
