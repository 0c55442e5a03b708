import ConfigKit
import Foundation
import TunnelCore

/// A component the customer allows experts to reach: a name the relay may use, and the local
/// address only the connector knows.
public struct Component: Sendable, Equatable {
    public var name: String
    public var host: String
    public var port: Int
    /// Path prefix of the component's URL ("" for the root); requests are mapped under it.
    public var basePath: String

    public init(name: String, url: String) throws(ComponentURLError) {
        self.name = name
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

/// connector.yaml, validated. See Config/connector.yaml for every key with its default.
public struct ConnectorConfig: Sendable {
    public var clusterID: String
    public var nodeID: String
    public var secret: Secret
    public var relayURLs: [WebSocketURL]
    public var caFile: String
    public var components: [Component]
    public var limits: TunnelLimits
    public var backoff: Backoff.Policy

    public init(
        clusterID: String, nodeID: String, secret: Secret, relayURLs: [WebSocketURL], caFile: String,
        components: [Component], limits: TunnelLimits = TunnelLimits(), backoff: Backoff.Policy = .init()
    ) {
        self.clusterID = clusterID
        self.nodeID = nodeID
        self.secret = secret
        self.relayURLs = relayURLs
        self.caFile = caFile
        self.components = components
        self.limits = limits
        self.backoff = backoff
    }

    public static func load(path: String) throws -> ConnectorConfig {
        try self.parse(yaml: try ConfigMap.readFile(path), file: path)
    }

    public static func parse(yaml: String, file: String) throws -> ConnectorConfig {
        let root = try ConfigMap(yaml: yaml, file: file)
        let cluster = try root.identifier("cluster_id")
        let node = try root.identifier("node_id")
        let secret = try root.secret("secret")

        guard let relay = try root.map("relay") else { throw root.error("relay", "is required (urls, ca_file)") }
        let urlTexts = try relay.strings("urls")
        guard !urlTexts.isEmpty else { throw relay.error("urls", "needs at least one wss:// URL") }
        var urls: [WebSocketURL] = []
        for (index, text) in urlTexts.enumerated() {
            do {
                urls.append(try WebSocketURL(parsing: text))
            } catch {
                throw relay.error("urls[\(index)]", "\(error)")
            }
        }
        let caFile = try relay.requiredFilePath("ca_file")
        var backoff = Backoff.Policy()
        backoff.initialMilliseconds = try relay.durationMilliseconds(
            "reconnect_initial", default: backoff.initialMilliseconds, range: 10...60_000)
        backoff.maximumMilliseconds = try relay.durationMilliseconds(
            "reconnect_max", default: backoff.maximumMilliseconds, range: backoff.initialMilliseconds...3_600_000)
        try relay.finish()

        guard let componentMap = try root.map("components") else {
            throw root.error("components", "is required: name -> http://host:port of each component experts may reach")
        }
        var components: [Component] = []
        for name in componentMap.keys() {
            guard Identifier.isValid(name) else { throw componentMap.error(name, "component names must be \(Identifier.rule)") }
            guard let url = try componentMap.string(name) else { throw componentMap.error(name, "needs a URL") }
            do {
                components.append(try Component(name: name, url: url))
            } catch {
                throw componentMap.error(name, "\(error)")
            }
        }
        if components.isEmpty { throw root.error("components", "needs at least one component") }
        let limits = try TunnelLimits.read(from: try root.map("limits"))
        try root.finish()
        return ConnectorConfig(
            clusterID: cluster, nodeID: node, secret: secret, relayURLs: urls, caFile: caFile, components: components,
            limits: limits, backoff: backoff)
    }
}
