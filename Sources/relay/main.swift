import ArgumentParser
import Foundation
import Logging
import NIOPosix
import Relay
import ServiceLifecycle
import TunnelCore
import UnixSignals

@main
struct RelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Relay node: registration, heartbeats and the ops API; accepts connector tunnels and expert sessions.")

    @Option(name: .shortAndLong, help: "Path to relay.yaml (see Config/relay.yaml).")
    var config: String = "relay.yaml"

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level = .info

    @Flag(help: "Validate the config file and exit.")
    var checkConfig = false

    func run() async throws {
        // Each line reaches a redirected log as it is written, not when the relay exits.
        setvbuf(stdout, nil, _IOLBF, 0)
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "relay")
        logger.logLevel = self.logLevel
        let config = try RelayConfig.load(path: self.config)
        // The certificate chain and key load and match, as a start needs, before anything is
        // created on disk (data_dir, the bootstrap token).
        _ = try TLSFiles.serverContext(certificateFile: config.certificateFile, privateKeyFile: config.privateKeyFile)
        if self.checkConfig {
            print("\(self.config): OK (certificate and key match; data in \(config.dataDirectory), node \(config.nodeName))")
            return
        }
        let control = try RelayServer.openEmbeddedControl(config: config, logger: logger)
        let bootstrapPath = config.dataDirectory + "/bootstrap-ops-token"
        let firstStart = try await control.createBootstrapToken(at: bootstrapPath)
        if firstStart {
            // The path only, and before anything can fail: the token itself never goes to a log.
            print("first start: an ops token named \"bootstrap\" is in \(bootstrapPath) (mode 0600);")
        }
        let server = try RelayServer(config: config, control: control, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        let address = try await server.start()
        // Said once the group traps SIGTERM and SIGINT (before any service runs): a stop right after
        // "listening" is kept. SIGHUP is trapped too: the relay reads its config at start only.
        let announceLogger = logger
        let announce = ClosureService {
            let hangups = await UnixSignalsSequence(trapping: .sighup)
            print("relay listening on \(address.display)")
            if firstStart {
                let ip = address.ipAddress ?? "127.0.0.1"
                let host = ["0.0.0.0", "::"].contains(ip) ? "127.0.0.1" : ip.contains(":") ? "[\(ip)]" : ip
                print(
                    "use it to create your own: relayctl tokens create --relay https://\(host):\(address.port ?? config.listenPort) --ca CA_FILE --token-file \(bootstrapPath) --name NAME --role ops")
                print("(CA_FILE: the CA certificate that signed \(config.certificateFile); then revoke bootstrap: relayctl tokens revoke bootstrap)")
            }
            for await _ in hangups.cancelOnGracefulShutdown() {
                announceLogger.notice("SIGHUP: the relay reads relay.yaml at start only; restart it to apply changes")
            }
        }
        var services = ServiceGroupConfiguration(
            services: server.services + [announce], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        // The drain (drain_timeout) and closing the tunnels after it; past that, the stop is forced.
        services.maximumGracefulShutdownDuration = .milliseconds(config.drainTimeoutMilliseconds) + .seconds(15)
        try await ServiceGroup(configuration: services).run()
        logger.info("relay stopped")
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
