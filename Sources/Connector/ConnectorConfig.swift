import ConfigKit
import Foundation
import PrivacyPolicy
import RelayModel
import TunnelCore

/// A component the customer allows experts to reach: a name the relay may use, and the local
/// address only the connector knows.
public struct Component: Sendable, Equatable {
    public var name: String
    public var host: String
    public var port: Int
    /// Path prefix of the component's URL ("" for the root); requests are mapped under it.
    public var basePath: String
    /// The component treats paths without regard to case: denied prefixes are compared that way.
    public var caseInsensitivePaths: Bool
    /// Paths of this component experts may never reach (normalised, see `PrivacyRules.normalizePrefix`).
    public var deniedPathPrefixes: [String]
    /// Routing or identity headers (`PrivacyRules.strippedHeaders`) this component still receives.
    public var passedHeaders: Set<String>
    /// Where role `viewer` may open websockets (normalised prefixes; none by default).
    public var viewerWebSocketPaths: [String]

    public init(
        name: String, url: String, caseInsensitivePaths: Bool = true, deniedPathPrefixes: [String] = [], passedHeaders: Set<String> = [],
        viewerWebSocketPaths: [String] = []
    ) throws(ComponentURLError) {
        self.name = name
        self.caseInsensitivePaths = caseInsensitivePaths
        self.deniedPathPrefixes = deniedPathPrefixes
        self.passedHeaders = passedHeaders
        self.viewerWebSocketPaths = viewerWebSocketPaths
        guard url.hasPrefix("http://") else {
            throw ComponentURLError(description: "must be an http:// URL, got \"\(url)\"")
        }
        let rest = url.dropFirst("http://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = String(rest[..<slash])
        let path = String(rest[slash...])
        if authority.contains("@") || path.contains("?") || path.contains("#") {
            throw ComponentURLError(description: "must be scheme://host:port[/path] with no credentials, query or fragment")
        }
        guard let hostPort = parseHostPort(authority.contains(":") || authority.hasPrefix("[") ? authority : authority + ":80"),
            hostPort.port > 0
        else {
            throw ComponentURLError(description: "has a bad host or port: \"\(authority)\"")
        }
        self.host = hostPort.host
        self.port = hostPort.port
        self.basePath = path.hasSuffix("/") ? String(path.dropLast()) : path
    }

    /// The Host header the component expects.
    public var authority: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return self.port == 80 ? host : "\(host):\(self.port)"
    }
}

public struct ComponentURLError: Error, CustomStringConvertible {
    public var description: String
}

/// Where and how the customer's audit log is written.
public struct AuditSettings: Sendable, Equatable {
    public var directory: String
    public var maxFileBytes: Int = 64 << 20
    /// Rotated files kept besides the active one (0 keeps all).
    public var maxFiles: Int = 100
    /// Refused requests recorded one by one per session and minute; the rest are counted in one
    /// record, so an expert cannot push older records out through retention by being refused.
    public var refusalsPerMinute: Int = 60

    public init(directory: String, maxFileBytes: Int = 64 << 20, maxFiles: Int = 100) {
        self.directory = directory
        self.maxFileBytes = maxFileBytes
        self.maxFiles = maxFiles
    }
}

/// connector.yaml, validated. See Config/connector.yaml for every key with its default.
public struct ConnectorConfig: Sendable {
    public var nodeID: String
    /// What kind of installation this is, reported in heartbeats ("server").
    public var sourceType: String
    /// Where `connector register` keeps the node's credential (mode 0600).
    public var credentialFile: String
    /// The relay's API base URL (`https://host:port`); tunnel URLs come from heartbeat answers.
    public var relayURL: WebSocketURL
    /// Hosts besides the relay's own whose tunnel URLs the connector dials (`relay.allowed_hosts`).
    public var allowedRelayHosts: [String] = []
    /// Which tunnel URLs of a heartbeat answer are dialed.
    public var tunnelURLPolicy: TunnelURLPolicy { TunnelURLPolicy(relayHost: self.relayURL.host, allowedHosts: self.allowedRelayHosts) }
    public var caFile: String
    public var components: [Component]
    public var limits: TunnelLimits
    public var backoff: Backoff.Policy
    public var heartbeat: HeartbeatStateMachine.Configuration
    public var privacyMode: PrivacyMode
    /// Denied for every component (normalised prefixes).
    public var deniedPathPrefixes: [String]
    /// Session limits (0: none).
    public var maxSessionMilliseconds: Int64
    public var idleTimeoutMilliseconds: Int64
    /// Reported in the node's health: whether this node is the cluster's master node.
    public var masterNode: Bool
    /// Customer approvals, the CLI's settings and the control socket live here (mode 0700).
    public var stateDirectory: String
    public var audit: AuditSettings
    /// Idle kept-alive connections to components are closed after this many milliseconds (below
    /// common server keep-alive timeouts, so a connection is never reused as the server closes it).
    public var componentIdleMilliseconds: Int64 = 2000
    /// When the connector stops, requests in flight get this long to finish before the tunnels
    /// close (`relay.drain_timeout`).
    public var drainMilliseconds: Int64 = 10_000
    /// A component's response head must come within this long of the request's end, or the
    /// request fails with 504 `upstream_timeout` (`upstream_timeout`; read at start).
    public var upstreamTimeoutMilliseconds: Int64 = 60_000
    /// The HTTP proxy every connection to the relay goes through (CONNECT), if any (`relay.proxy`).
    public var proxy: OutboundProxy?
    /// `log:`: level and format (text or JSON lines).
    public var log = LogSettings()
    /// `metrics_textfile`: where to write the connector's figures for node_exporter's textfile
    /// collector (`*.prom`), every `metrics_textfile_interval`; nil: not written.
    public var metricsTextfile: String?
    public var metricsTextfileIntervalMilliseconds: Int64 = 15_000

    public init(
        nodeID: String, sourceType: String = "server", credentialFile: String, relayURL: WebSocketURL, caFile: String,
        components: [Component], limits: TunnelLimits = TunnelLimits(), backoff: Backoff.Policy = .init(),
        heartbeat: HeartbeatStateMachine.Configuration = .init(), privacyMode: PrivacyMode = .all, masterNode: Bool = false,
        deniedPathPrefixes: [String] = [], maxSessionMilliseconds: Int64 = 0, idleTimeoutMilliseconds: Int64 = 0,
        stateDirectory: String? = nil, audit: AuditSettings? = nil, allowedRelayHosts: [String] = []
    ) {
        self.allowedRelayHosts = allowedRelayHosts
        self.nodeID = nodeID
        self.sourceType = sourceType
        self.credentialFile = credentialFile
        self.relayURL = relayURL
        self.caFile = caFile
        self.components = components
        self.limits = limits
        self.backoff = backoff
        self.heartbeat = heartbeat
        self.privacyMode = privacyMode
        self.masterNode = masterNode
        self.deniedPathPrefixes = deniedPathPrefixes
        self.maxSessionMilliseconds = maxSessionMilliseconds
        self.idleTimeoutMilliseconds = idleTimeoutMilliseconds
        let state = stateDirectory ?? ((credentialFile as NSString).deletingLastPathComponent as NSString).appendingPathComponent("connector-state")
        self.stateDirectory = state
        self.audit = audit ?? AuditSettings(directory: (state as NSString).appendingPathComponent("audit"))
    }

    /// The privacy settings as the stream policy reads them, in `mode`.
    public func privacyRules(mode: PrivacyMode? = nil) -> PrivacyRules {
        PrivacyRules(
            mode: mode ?? self.privacyMode,
            components: self.components.map {
                ComponentRules(
                    name: $0.name, authority: $0.authority, caseInsensitivePaths: $0.caseInsensitivePaths,
                    deniedPathPrefixes: $0.deniedPathPrefixes, passedHeaders: $0.passedHeaders, viewerWebSocketPaths: $0.viewerWebSocketPaths)
            },
            deniedPathPrefixes: self.deniedPathPrefixes, maxSessionMilliseconds: self.maxSessionMilliseconds,
            idleTimeoutMilliseconds: self.idleTimeoutMilliseconds)
    }

    /// Where a connector started from `configPath` keeps its state (`state_dir`), read on its own:
    /// the customer's commands find the control socket and the audit log through it even while
    /// another part of the file is broken (a typo must never block the kill switch).
    /// `unread` says why `state_dir` could not be read from the file (the default was taken).
    public static func stateDirectory(configPath: String) -> (path: String, unread: String?) {
        let base = (configPath as NSString).deletingLastPathComponent
        let fallback = base.isEmpty ? Self.defaultStateFolder : (base as NSString).appendingPathComponent(Self.defaultStateFolder)
        guard let text = try? ConfigMap.readFile(configPath) else { return (fallback, nil) }
        guard let root = try? ConfigMap(yaml: text, file: configPath) else {
            return (fallback, "\(configPath) is not valid YAML, so its state_dir could not be read")
        }
        guard let directory = try? root.filePath("state_dir") else { return (fallback, nil) }
        return (directory, nil)
    }

    static let defaultStateFolder = "connector-state"

    public static func load(path: String) throws -> ConnectorConfig {
        try self.parse(yaml: try ConfigMap.readFile(path), file: path)
    }

    public static func parse(yaml: String, file: String) throws -> ConnectorConfig {
        let root = try ConfigMap(yaml: yaml, file: file)
        let node = try root.identifier("node_id")
        let sourceType = try root.string("source_type", default: "server")
        guard Identifier.isValid(sourceType) else { throw root.error("source_type", "must be \(Identifier.rule)") }
        let credentialFile = try root.filePath("credential_file") ?? root.resolve("connector-credential.json")

        guard let relay = try root.map("relay") else { throw root.error("relay", "is required (url, ca_file)") }
        let relayURL: WebSocketURL
        do {
            relayURL = try WebSocketURL(parsing: try relay.requiredString("url"), acceptHTTPS: true)
        } catch let error as WebSocketURLError {
            throw relay.error("url", "\(error)")
        }
        let caFile = try relay.requiredFilePath("ca_file")
        let allowedHosts = try relay.strings("allowed_hosts")
        for host in allowedHosts {
            let bare = host.hasPrefix("*.") ? String(host.dropFirst(2)) : host
            guard !bare.isEmpty, !bare.contains("/"), !bare.contains(":"), !bare.contains("*") else {
                throw relay.error("allowed_hosts", "\"\(host)\" is not a host name (a name, or *.name for every name under it)")
            }
        }
        var backoff = Backoff.Policy()
        backoff.initialMilliseconds = try relay.durationMilliseconds(
            "reconnect_initial", default: backoff.initialMilliseconds, range: 10...60_000)
        backoff.maximumMilliseconds = try relay.durationMilliseconds(
            "reconnect_max", default: backoff.maximumMilliseconds, range: backoff.initialMilliseconds...3_600_000)
        backoff.graceMilliseconds = try relay.durationMilliseconds(
            "reconnect_grace", default: backoff.graceMilliseconds, range: 0...3_600_000)
        let drain = try relay.durationMilliseconds("drain_timeout", default: 10_000, range: 0...600_000)
        let proxy = try Self.proxy(relay)
        try relay.finish()

        var heartbeat = HeartbeatStateMachine.Configuration()
        if let map = try root.map("heartbeat") {
            heartbeat.enabledIntervalMilliseconds = try map.durationMilliseconds(
                "interval", default: heartbeat.enabledIntervalMilliseconds, range: 100...3_600_000)
            heartbeat.disabledIntervalMilliseconds = try map.durationMilliseconds(
                "disabled_interval", default: heartbeat.disabledIntervalMilliseconds, range: heartbeat.enabledIntervalMilliseconds...86_400_000)
            heartbeat.jitterFraction = Double(try map.int("jitter_percent", default: 10, range: 0...50)) / 100
            heartbeat.retryMilliseconds = try map.durationMilliseconds(
                "retry_interval", default: min(heartbeat.retryMilliseconds, heartbeat.enabledIntervalMilliseconds), range: 100...3_600_000)
            try map.finish()
        }
        // Fail closed: without a word from the customer, every request waits for their approval.
        var mode = PrivacyMode.approvedOnly
        var denied: [String] = []
        var maxSession: Int64 = 8 * 3_600_000
        var idle: Int64 = 30 * 60_000
        if let privacy = try root.map("privacy") {
            let text = try privacy.oneOf("mode", PrivacyMode.allCases.map(\.rawValue), default: PrivacyMode.approvedOnly.rawValue)
            mode = PrivacyMode(rawValue: text)!
            denied = try Self.prefixes(privacy, "denied_paths")
            maxSession = try privacy.durationMilliseconds("max_session", default: maxSession, range: 0...30 * 86_400_000)
            idle = try privacy.durationMilliseconds("idle_timeout", default: idle, range: 0...30 * 86_400_000)
            try privacy.finish()
        }
        let state = try root.filePath("state_dir") ?? root.resolve(Self.defaultStateFolder)
        var audit = AuditSettings(directory: (state as NSString).appendingPathComponent("audit"))
        if let map = try root.map("audit") {
            audit.directory = try map.filePath("directory") ?? audit.directory
            audit.maxFileBytes = try map.size("max_file_size", default: audit.maxFileBytes, range: 4096...(1 << 40))
            audit.maxFiles = try map.int("max_files", default: audit.maxFiles, range: 0...1_000_000)
            audit.refusalsPerMinute = try map.int("refusals_per_minute", default: audit.refusalsPerMinute, range: 1...100_000)
            try map.finish()
        }
        var master = false
        if let health = try root.map("health") {
            master = try health.bool("master_node", default: false)
            try health.finish()
        }

        guard let componentMap = try root.map("components") else {
            throw root.error("components", "is required: name -> http://host:port of each component experts may reach")
        }
        var components: [Component] = []
        for name in componentMap.keys() {
            guard Identifier.isValid(name) else { throw componentMap.error(name, "component names must be \(Identifier.rule)") }
            // Either `name: URL`, or `name: {url, case_insensitive_paths, denied_paths, pass_headers, viewer_websocket_paths}`.
            var url: String?
            var caseInsensitive = true
            var passed: Set<String> = []
            var componentDenied: [String] = []
            var viewerWebSockets: [String] = []
            var scope = componentMap
            var key = name
            if let map = try? componentMap.map(name) {
                url = try map.string("url")
                caseInsensitive = try map.bool("case_insensitive_paths", default: true)
                componentDenied = try Self.prefixes(map, "denied_paths")
                passed = try Self.passedHeaders(map)
                viewerWebSockets = try Self.prefixes(map, "viewer_websocket_paths")
                try map.finish()
                scope = map
                key = "url"
            } else {
                url = try componentMap.string(name)
            }
            guard let url, !url.isEmpty else { throw scope.error(key, "needs a URL") }
            do {
                components.append(
                    try Component(
                        name: name, url: url, caseInsensitivePaths: caseInsensitive, deniedPathPrefixes: componentDenied, passedHeaders: passed,
                        viewerWebSocketPaths: viewerWebSockets))
            } catch {
                throw scope.error(key, "\(error)")
            }
        }
        if components.isEmpty { throw root.error("components", "needs at least one component") }
        let limits = try TunnelLimits.read(from: try root.map("limits"))
        let upstreamTimeout = try root.durationMilliseconds("upstream_timeout", default: 60_000, range: 1000...3_600_000)
        let log = try LogSettings.read(try root.map("log"))
        let textfile = try root.filePath("metrics_textfile")
        if let textfile, !textfile.hasSuffix(".prom") {
            throw root.error("metrics_textfile", "must end in .prom (node_exporter's textfile collector reads only those)")
        }
        let textfileInterval = try root.durationMilliseconds("metrics_textfile_interval", default: 15_000, range: 1000...3_600_000)
        try root.finish()
        var config = ConnectorConfig(
            nodeID: node, sourceType: sourceType, credentialFile: credentialFile, relayURL: relayURL, caFile: caFile,
            components: components, limits: limits, backoff: backoff, heartbeat: heartbeat, privacyMode: mode, masterNode: master,
            deniedPathPrefixes: denied, maxSessionMilliseconds: maxSession, idleTimeoutMilliseconds: idle, stateDirectory: state, audit: audit,
            allowedRelayHosts: allowedHosts)
        config.drainMilliseconds = drain
        config.upstreamTimeoutMilliseconds = upstreamTimeout
        config.proxy = proxy
        config.log = log
        config.metricsTextfile = textfile
        config.metricsTextfileIntervalMilliseconds = textfileInterval
        return config
    }

    /// `relay.proxy`: `http://host:port`, or `{url, username, password_file, no_proxy}`; url
    /// `environment` takes HTTPS_PROXY and NO_PROXY. The password comes from password_file or env
    /// CONNECTOR_PROXY_PASSWORD, never from connector.yaml itself.
    static func proxy(_ relay: ConfigMap, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> OutboundProxy? {
        guard relay.has("proxy") else { return nil }
        var url: String
        var username: String?
        var passwordFile: String?
        var noProxy: [String] = []
        var scope = relay
        var key = "proxy"
        if let map = try? relay.map("proxy") {
            url = try map.requiredString("url")
            username = try map.string("username")
            passwordFile = try map.filePath("password_file")
            noProxy = try map.strings("no_proxy")
            try map.finish()
            scope = map
            key = "url"
        } else {
            url = try relay.requiredString("proxy")
        }
        var proxy: OutboundProxy
        do {
            if url == "environment" {
                guard let found = try OutboundProxy.fromEnvironment(environment) else {
                    throw OutboundProxyError(message: "is environment, but HTTPS_PROXY is not set")
                }
                proxy = found
                proxy.noProxy += noProxy
            } else {
                proxy = try OutboundProxy(url: url, noProxy: noProxy)
                if proxy.password != nil {
                    throw OutboundProxyError(message: "must not hold a password: give it in password_file or env CONNECTOR_PROXY_PASSWORD")
                }
            }
        } catch let error as OutboundProxyError {
            throw scope.error(key, error.message)
        }
        if let username = username ?? proxy.username {
            proxy.username = username
            if let passwordFile {
                guard let data = FileManager.default.contents(atPath: passwordFile), let text = String(data: data, encoding: .utf8) else {
                    throw scope.error("password_file", "cannot read \(passwordFile)")
                }
                proxy.password = text.trimmingCharacters(in: .whitespacesAndNewlines)
            } else if let text = environment["CONNECTOR_PROXY_PASSWORD"] {
                proxy.password = text
            } else if proxy.password == nil {
                throw scope.error("username", "needs a password: password_file, or env CONNECTOR_PROXY_PASSWORD")
            }
        } else if passwordFile != nil {
            throw scope.error("password_file", "needs a username")
        }
        return proxy
    }

    /// `pass_headers`: names from the stripped list only, so a typo cannot pass silently.
    private static func passedHeaders(_ map: ConfigMap) throws -> Set<String> {
        Set(
            try map.strings("pass_headers").map { text in
                let name = text.lowercased()
                guard PrivacyRules.isStripped(name) else {
                    throw map.error("pass_headers", "\(quotedText(text)) is not a header the connector strips; only those need passing")
                }
                return name
            })
    }

    private static func prefixes(_ map: ConfigMap, _ key: String) throws -> [String] {
        try map.strings(key).map { text in
            guard let prefix = PrivacyRules.normalizePrefix(text) else {
                throw map.error(key, "\(quotedText(text)) is not a path: paths start with / and have no query")
            }
            return prefix
        }
    }
}

private func quotedText(_ text: String) -> String { "\"\(text)\"" }
