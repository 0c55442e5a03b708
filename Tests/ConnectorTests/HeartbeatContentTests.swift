import Connector
import Foundation
import RelayAPI
import Testing
import TunnelCore

/// What leaves the customer's network in a heartbeat: exactly these fields, and nothing that names
/// or locates a machine.
@Suite struct HeartbeatContentTests {
    static let expectedFields: Set<String> = [
        "clusterID", "nodeID", "sourceType", "connectorVersion", "decisions",
        "privacy", "privacy.mode", "privacy.components",
        "health", "health.osName", "health.osVersion", "health.cpuCores", "health.cpuLoad", "health.ramTotalBytes",
        "health.ramFreeBytes", "health.diskTotalBytes", "health.diskUsedBytes", "health.serverState", "health.masterNode",
        "health.startedAt",
    ]

    func sampleRequest() throws -> (HeartbeatRequest, ConnectorConfig) {
        let config = ConnectorConfig(
            nodeID: "node-7", credentialFile: "/tmp/credential.json", relayURL: try WebSocketURL(parsing: "https://relay.example:8443", acceptHTTPS: true),
            caFile: "/tmp/ca.pem", components: [try Component(name: "ui", url: "http://10.1.2.3:8080"), try Component(name: "api", url: "http://db-host.internal:9000/api")],
            privacyMode: .readOnly, masterNode: true)
        let credential = ConnectorCredential(clusterID: "acme", nodeID: "node-7", credential: "rac_secret-never-sent-in-a-heartbeat")
        let health = NodeHealthProbe(masterNode: true, startedAt: Date(), diskPath: "/").sample()
        return (HeartbeatDriver.makeRequest(config: config, credential: credential, health: health), config)
    }

    @Test func exactlyTheDocumentedFieldsLeaveTheConnector() throws {
        let (request, _) = try self.sampleRequest()
        let json = try JSONSerialization.jsonObject(with: try APIJSON.encoder().encode(request)) as! [String: Any]
        #expect(Self.keyPaths(json) == Self.expectedFields)
    }

    @Test func noAddressesHostNamesOrSecrets() throws {
        let (request, _) = try self.sampleRequest()
        let text = String(decoding: try APIJSON.encoder().encode(request), as: UTF8.self)
        let hostName = ProcessInfo.processInfo.hostName
        for forbidden in ["10.1.2.3", "db-host.internal", ":8080", ":9000", "/api", "rac_", "credential", hostName] where !forbidden.isEmpty {
            #expect(!text.contains(forbidden), "heartbeat contains \(forbidden)")
        }
        #expect(request.privacy.components == ["api", "ui"])
        #expect(request.privacy.mode == .readOnly)
        #expect(request.sourceType == "server")
    }

    @Test func healthIsReadFromThisMachine() throws {
        let health = NodeHealthProbe(masterNode: false, startedAt: Date(timeIntervalSince1970: 1_700_000_000), diskPath: "/").sample()
        #expect(health.cpuCores == ProcessInfo.processInfo.activeProcessorCount)
        #expect(health.ramTotalBytes > 0 && health.ramFreeBytes > 0 && health.ramFreeBytes <= health.ramTotalBytes)
        #expect(health.diskTotalBytes > 0 && health.diskUsedBytes <= health.diskTotalBytes)
        #expect(!health.osName.isEmpty && health.osVersion != "")
        #expect(health.masterNode == false)
        #expect(health.serverState == "running")
    }

    static func keyPaths(_ object: [String: Any], prefix: String = "") -> Set<String> {
        var paths: Set<String> = []
        for (key, value) in object {
            let path = prefix.isEmpty ? key : "\(prefix).\(key)"
            paths.insert(path)
            if let nested = value as? [String: Any] { paths.formUnion(self.keyPaths(nested, prefix: path)) }
        }
        return paths
    }
}
