import ConfigKit
import Foundation
import TunnelCore

/// relay.yaml, validated. See Config/relay.yaml for every key with its default.
public struct RelayConfig: Sendable {
    public var listenHost: String
    public var listenPort: Int
    public var certificateFile: String
    public var privateKeyFile: String
    /// Holds the SQLite store, the token hash key and the bootstrap token.
    public var dataDirectory: String
    /// This node's name, recorded on the sessions it carries.
    public var nodeName: String
    /// A fixed list of tunnel URLs sent to connectors instead of the live relay nodes' (a load
    /// balancer's name, say); empty: every live node's, from the store.
    public var tunnelURLs: [String]
    /// This node's address as connectors and engineers reach it (`public_url`), announced in the
    /// store; nil: `wss://LISTEN/v1/tunnel`.
    public var publicURL: String?
    /// A relay node not seen for this long drops out of heartbeat answers and its sessions are ended (`node_ttl`).
    public var nodeTTLMilliseconds: Int64 = 30_000
    /// The admin listener (`admin_listen`: `/metrics`, `/healthz`, `/readyz`, plain HTTP); nil: none.
    public var adminListen: (host: String, port: Int)?
    /// `log:`: level and format (text or JSON lines).
    public var log = LogSettings()
    /// Where the records live (`store:`): the embedded SQLite file, or a PostgreSQL database shared by several nodes.
    public var store: StoreChoice = .sqlite
    /// The key tokens are hashed with (`token_hash_key_file`, default `data_dir/token-hash.key`):
    /// nodes sharing a store must share it too.
    public var tokenHashKeyFile: String?
    public var heartbeatIntervalSeconds: Int?
    public var enrollmentTTLSeconds: Int64
    /// A request the customer has not decided within this long expires (an engineer is not left waiting on it for ever).
    public var pendingRequestTTLSeconds: Int64 = 86_400
    public var maxRequestSeconds: Int64
    /// How often this node expires requests and closes tunnels and sessions whose access ended.
    public var reconcileIntervalMilliseconds: Int64
    /// Plain HTTPS (API) connections idle for this long are closed.
    public var apiIdleTimeoutMilliseconds: Int64
    public var limits: TunnelLimits
    /// Caps and paces on connections before authentication (`connections:`).
    public var connectionLimits: ConnectionLimits
    /// Audit records older than this are pruned (`audit_retention`, default 400 days).
    public var auditRetentionSeconds: Int64 = 400 * 86_400
    /// On SIGTERM, how long streams in flight get to finish before connections close (`drain_timeout`).
    public var drainTimeoutMilliseconds: Int64 = 30_000
    /// Connectors spread their redials over this window after a tunnel drops (`reconnect_spread`).
    public var reconnectSpreadMilliseconds: Int64 = 15_000

    public init(
        listenHost: String = "127.0.0.1", listenPort: Int = 8443, certificateFile: String, privateKeyFile: String,
        dataDirectory: String, nodeName: String = "relay-1", tunnelURLs: [String] = [], heartbeatIntervalSeconds: Int? = nil,
        enrollmentTTLSeconds: Int64 = 86_400, maxRequestSeconds: Int64 = 7 * 86_400, reconcileIntervalMilliseconds: Int64 = 1000,
        apiIdleTimeoutMilliseconds: Int64 = 60_000, limits: TunnelLimits = TunnelLimits(), connectionLimits: ConnectionLimits = ConnectionLimits(),
        auditRetentionSeconds: Int64 = 400 * 86_400
    ) {
        self.auditRetentionSeconds = auditRetentionSeconds
        self.connectionLimits = connectionLimits
        self.listenHost = listenHost
        self.listenPort = listenPort
        self.certificateFile = certificateFile
        self.privateKeyFile = privateKeyFile
        self.dataDirectory = dataDirectory
        self.nodeName = nodeName
        self.tunnelURLs = tunnelURLs
        self.heartbeatIntervalSeconds = heartbeatIntervalSeconds
        self.enrollmentTTLSeconds = enrollmentTTLSeconds
        self.maxRequestSeconds = maxRequestSeconds
        self.reconcileIntervalMilliseconds = reconcileIntervalMilliseconds
        self.apiIdleTimeoutMilliseconds = apiIdleTimeoutMilliseconds
        self.limits = limits
    }

    public static func load(path: String) throws -> RelayConfig {
        try self.parse(yaml: try ConfigMap.readFile(path), file: path)
    }

    /// Relative file paths in the config are taken relative to the config file's folder.
    public static func parse(yaml: String, file: String) throws -> RelayConfig {
        let root = try ConfigMap(yaml: yaml, file: file)
        let listen = try root.hostPort("listen", default: "127.0.0.1:8443")
        guard let tls = try root.map("tls") else { throw root.error("tls", "is required (certificate_file, private_key_file)") }
        let certificate = try tls.requiredFilePath("certificate_file")
        let key = try tls.requiredFilePath("private_key_file")
        try tls.finish()
        let dataDirectory = try root.filePath("data_dir") ?? root.resolve("relay-data")
        let nodeName = try root.string("node_name", default: "relay-1")
        guard Identifier.isValid(nodeName) else { throw root.error("node_name", "must be \(Identifier.rule)") }
        var tunnelURLs: [String] = []
        for (index, text) in try root.strings("tunnel_urls").enumerated() {
            do {
                var url = try WebSocketURL(parsing: text)
                if url.path == "/" { url.path = WirePath.tunnel }
                tunnelURLs.append(url.description)
            } catch {
                throw root.error("tunnel_urls[\(index)]", "\(error)")
            }
        }
        var publicURL: String?
        if let text = try root.string("public_url") {
            do {
                var url = try WebSocketURL(parsing: text)
                if url.path == "/" { url.path = WirePath.tunnel }
                publicURL = url.description
            } catch {
                throw root.error("public_url", "\(error)")
            }
        }
        let nodeTTL = try root.durationMilliseconds("node_ttl", default: 30_000, range: 3000...600_000)
        let store = try StoreChoice.read(root)
        if case .postgres = store, publicURL == nil, ["0.0.0.0", "::"].contains(listen.host) {
            // Other nodes would send connectors 127.0.0.1 for this one.
            throw root.error("public_url", "is required with store: postgres and a wildcard listen address: how connectors reach this node")
        }
        let tokenKey = try root.filePath("token_hash_key_file")
        let admin = try root.string("admin_listen", default: "127.0.0.1:9464") == "off" ? nil : try root.hostPort("admin_listen", default: "127.0.0.1:9464")
        var heartbeat: Int?
        if root.has("heartbeat_interval") {
            heartbeat = Int(try root.durationMilliseconds("heartbeat_interval", default: 60_000, range: 1000...3_600_000) / 1000)
        }
        let enrollmentTTL = try root.durationMilliseconds("enrollment_ttl", default: 86_400_000, range: 60_000...(30 * 86_400_000)) / 1000
        let pendingTTL = try root.durationMilliseconds("pending_request_ttl", default: 86_400_000, range: 60_000...(30 * 86_400_000)) / 1000
        let maxRequest = try root.durationMilliseconds("max_request_duration", default: 7 * 86_400_000, range: 60_000...(90 * 86_400_000)) / 1000
        let reconcile = try root.durationMilliseconds("reconcile_interval", default: 1000, range: 50...5000)
        let apiIdle = try root.durationMilliseconds("api_idle_timeout", default: 60_000, range: 1000...3_600_000)
        let retention = try root.durationMilliseconds("audit_retention", default: 400 * 86_400_000, range: 86_400_000...(3650 * 86_400_000)) / 1000
        let drain = try root.durationMilliseconds("drain_timeout", default: 30_000, range: 0...3_600_000)
        let spread = try root.durationMilliseconds("reconnect_spread", default: 15_000, range: 1000...600_000)
        let limits = try TunnelLimits.read(from: try root.map("limits"))
        var connections = ConnectionLimits()
        if let map = try root.map("connections") {
            connections.maxTotal = try map.int("max_total", default: connections.maxTotal, range: 1...1_000_000)
            connections.maxPerAddress = try map.int("max_per_address", default: connections.maxPerAddress, range: 1...1_000_000)
            connections.minBodyBytesPerSecond = try map.size("min_body_rate", default: connections.minBodyBytesPerSecond, range: 1...(1 << 30))
            connections.tcpKeepaliveIdleSeconds = Int(
                try map.durationMilliseconds("tcp_keepalive_idle", default: Int64(connections.tcpKeepaliveIdleSeconds) * 1000, range: 1000...7_200_000) / 1000)
            try map.finish()
        }
        let log = try LogSettings.read(try root.map("log"))
        try root.finish()
        var config = RelayConfig(
            listenHost: listen.host, listenPort: listen.port, certificateFile: certificate, privateKeyFile: key,
            dataDirectory: dataDirectory, nodeName: nodeName, tunnelURLs: tunnelURLs, heartbeatIntervalSeconds: heartbeat,
            enrollmentTTLSeconds: enrollmentTTL, maxRequestSeconds: maxRequest, reconcileIntervalMilliseconds: reconcile,
            apiIdleTimeoutMilliseconds: apiIdle, limits: limits, connectionLimits: connections, auditRetentionSeconds: retention)
        config.drainTimeoutMilliseconds = drain
        config.reconnectSpreadMilliseconds = spread
        config.pendingRequestTTLSeconds = pendingTTL
        config.publicURL = publicURL
        config.nodeTTLMilliseconds = nodeTTL
        config.store = store
        config.tokenHashKeyFile = tokenKey
        config.adminListen = admin
        config.log = log
        return config
    }

    /// This node's tunnel URL: `public_url`, or its own listen address.
    public func ownTunnelURL(boundPort: Int) -> String {
        if let publicURL = self.publicURL { return publicURL }
        let host = self.listenHost == "0.0.0.0" || self.listenHost == "::" ? "127.0.0.1" : self.listenHost
        return WebSocketURL(host: host, port: boundPort, path: WirePath.tunnel).description
    }

    public var tokenHashKeyPath: String { self.tokenHashKeyFile ?? self.dataDirectory + "/token-hash.key" }
}
