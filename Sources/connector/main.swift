import ArgumentParser
import Connector
import Logging
import NIOPosix
import TunnelCore

@main
struct ConnectorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connector",
        abstract: "Cluster-side connector: dials out to the relay and serves the allowed components. Never listens.")

    @Option(name: .shortAndLong, help: "Path to connector.yaml (see Config/connector.yaml).")
    var config: String = "connector.yaml"

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level = .info

    @Flag(help: "Validate the config file and exit.")
    var checkConfig = false

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "connector")
        logger.logLevel = self.logLevel
        let config = try ConnectorConfig.load(path: self.config)
        if self.checkConfig {
            print("\(self.config): OK (cluster \(config.clusterID), node \(config.nodeID), \(config.components.count) components)")
            return
        }
        let connector = try TunnelConnector(config: config, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        connector.start()
        logger.info(
            "connector started",
            metadata: ["cluster": "\(config.clusterID)", "node": "\(config.nodeID)", "relays": "\(config.relayURLs.count)"])
        let signal = await TerminationSignal.wait()
        logger.info("shutting down", metadata: ["signal": "\(signal)"])
        await connector.stop()
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
