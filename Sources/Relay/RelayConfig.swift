import ConfigKit
import Foundation
import TunnelCore

/// relay.yaml, validated. See Config/relay.yaml for every key with its default.
public struct RelayConfig: Sendable {
    public struct Cluster: Sendable {
        public var id: String
        public var secret: Secret
        public init(id: String, secret: Secret) {
            self.id = id
            self.secret = secret
        }
    }

    public struct Expert: Sendable {
        public var name: String
        public var token: Secret
        public init(name: String, token: Secret) {
            self.name = name
            self.token = token
        }
    }

    public var listenHost: String
    public var listenPort: Int
    public var certificateFile: String
    public var privateKeyFile: String
    public var clusters: [Cluster]
    public var experts: [Expert]
    public var limits: TunnelLimits

    public init(
        listenHost: String = "127.0.0.1", listenPort: Int = 8443, certificateFile: String, privateKeyFile: String,
        clusters: [Cluster], experts: [Expert], limits: TunnelLimits = TunnelLimits()
    ) {
        self.listenHost = listenHost
        self.listenPort = listenPort
        self.certificateFile = certificateFile
        self.privateKeyFile = privateKeyFile
        self.clusters = clusters
        self.experts = experts
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

        var clusters: [Cluster] = []
        for entry in try root.list("clusters") {
            let id = try entry.identifier("id")
            if clusters.contains(where: { $0.id == id }) { throw entry.error("id", "cluster \"\(id)\" is listed twice") }
            clusters.append(Cluster(id: id, secret: try entry.secret("secret")))
            try entry.finish()
        }
        var experts: [Expert] = []
        for entry in try root.list("experts") {
            let name = try entry.identifier("name")
            if experts.contains(where: { $0.name == name }) { throw entry.error("name", "expert \"\(name)\" is listed twice") }
            experts.append(Expert(name: name, token: try entry.secret("token", minimumLength: 24)))
            try entry.finish()
        }
        let limits = try TunnelLimits.read(from: try root.map("limits"))
        try root.finish()
        return RelayConfig(
            listenHost: listen.host, listenPort: listen.port, certificateFile: certificate, privateKeyFile: key,
            clusters: clusters, experts: experts, limits: limits)
    }
}

