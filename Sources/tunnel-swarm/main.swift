import ArgumentParser
import Connector
import Foundation
import Logging
import NIOPosix
import ServiceLifecycle
import TunnelCore
import UnixSignals

/// A benchmark tool, not part of the product: one process holding many connector nodes' tunnels to
/// one relay, each dialed by the real `TunnelConnector`, so the relay's memory per idle tunnel can be
/// measured with thousands attached (Scripts/perf.py). Every node shares one config and one privacy
/// guard; each has its own registered credential.
@main
struct TunnelSwarm: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tunnel-swarm", abstract: "Holds one tunnel per registered node (benchmark tool).")

    @Option(help: "connector.yaml shared by every node (relay URL, CA, limits, state_dir for the shared audit log).")
    var config: String

    @Option(help: "JSON lines, one {clusterID, nodeID, credential} per node.")
    var credentials: String

    @Option(help: "The relay's tunnel URL, e.g. wss://127.0.0.1:8443/v1/tunnel.")
    var tunnelURL: String

    func run() async throws {
        setvbuf(stdout, nil, _IOLBF, 0)
        var logger = Logger(label: "tunnel-swarm")
        logger.logLevel = .error
        let config = try ConnectorConfig.load(path: self.config)
        let url = try WebSocketURL(parsing: self.tunnelURL)
        let lines = try String(contentsOfFile: self.credentials, encoding: .utf8).split(separator: "\n")
        let nodes = try lines.map { try JSONDecoder().decode(ConnectorCredential.self, from: Data($0.utf8)) }
        let privacy = try PrivacyGuard(config: config, logger: logger)
        let group = MultiThreadedEventLoopGroup.singleton
        let tunnels = try nodes.map { try TunnelConnector(config: config, credential: $0, privacy: privacy, group: group, logger: logger) }
        for tunnel in tunnels { tunnel.keep([url]) }
        let report = ClosureService {
            var said = -1
            while !Task.isCancelled {
                let up = tunnels.filter { !$0.connectedURLs.isEmpty }.count
                if up != said {
                    print(up == tunnels.count ? "all \(up) tunnels up" : "tunnels up: \(up)/\(tunnels.count)")
                    said = up
                }
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
        let services: [any Service] = tunnels + [report]
        let serviceGroup = ServiceGroup(configuration: .init(
            services: services.map { .init(service: $0) }, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await serviceGroup.run()
    }
}
