import ArgumentParser
import ConfigKit
import Connector
import Foundation
import Logging
import ServiceLifecycle
import NIOPosix
import TunnelCore

@main
struct ConnectorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connector",
        abstract: "Cluster-side connector: heartbeats to the relay, dials out when access is requested, serves the allowed components. Never listens.",
        discussion: """
            Examples:
              connector register --config /etc/connector/connector.yaml --enrollment-token-file enrollment.txt
              connector --config /etc/connector/connector.yaml            # run (the default subcommand)
              connector run --check-config --config /etc/connector/connector.yaml
              connector status --json
              connector requests approve 12 --as carol
              connector mode disabled --as carol                          # the customer's kill switch
              connector audit verify
            """,
        version: ProductVersion.current,
        subcommands: [
            Run.self, Register.self, Status.self, Requests.self, Sessions.self, Audit.self, Mode.self, Reload.self,
        ], defaultSubcommand: Run.self)
}

struct CommonOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "Path to connector.yaml (see Config/connector.yaml).")
    var config: String = "connector.yaml"

    @Option(help: "trace, debug, info, notice, warning, error or critical (default: log.level in connector.yaml, else info).")
    var logLevel: Logger.Level?

    /// For commands that do not read connector.yaml (they talk to the control socket).
    func logger() -> Logger {
        LogSettings().bootstrap(label: "connector", overridingLevel: self.logLevel)
    }

    /// As connector.yaml `log:` says, `--log-level` winning.
    func logger(_ config: ConnectorConfig) -> Logger {
        config.log.bootstrap(label: "connector", overridingLevel: self.logLevel)
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the connector (the default).")

    @OptionGroup var options: CommonOptions

    @Flag(help: "Validate the config file and the credential file, and exit.")
    var checkConfig = false

    func run() async throws {
        let config = try ConnectorConfig.load(path: self.options.config)
        let logger = self.options.logger(config)
        let credential = try ConnectorCredential.load(path: config.credentialFile)
        if self.checkConfig {
            let proxy = config.proxy.map { ", through the proxy \($0)" } ?? ""
            print("\(self.options.config): OK (\(credential), \(config.components.count) components, mode \(config.privacyMode.rawValue)\(proxy))")
            return
        }
        let runtime = try await ConnectorRuntime(
            config: config, credential: credential, configPath: self.options.config, group: MultiThreadedEventLoopGroup.singleton,
            logger: logger)
        let started = ReloadOnHangup(runtime: runtime) {
            logger.info(
                "connector started",
                metadata: [
                    "cluster": "\(credential.clusterID)", "node": "\(credential.nodeID)", "relay": "\(config.relayURL.httpsBase)",
                    "mode": "\(runtime.privacy.mode.rawValue)", "control": "\(runtime.control.path)", "audit": "\(config.audit.directory)",
                    "proxy": "\(config.proxy.map { "\($0)" } ?? "none")",
                ])
        }
        var services = ServiceGroupConfiguration(
            services: runtime.services + [started], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        // Requests in flight get the configured drain; past that and a margin, the group is cancelled.
        services.maximumGracefulShutdownDuration = .milliseconds(config.drainMilliseconds) + .seconds(10)
        try await ServiceGroup(configuration: services).run()
        logger.info("connector stopped")
    }
}

struct Register: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Register this node once with a one-time enrollment token; writes credential_file (mode 0600).")

    @OptionGroup var options: CommonOptions

    @Option(help: "File holding the enrollment token. Without it the token is read from env CONNECTOR_ENROLLMENT_TOKEN.")
    var enrollmentTokenFile: String?

    func run() async throws {
        let config = try ConnectorConfig.load(path: self.options.config)
        let logger = self.options.logger(config)
        let token: String
        if let path = self.enrollmentTokenFile {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ValidationError("cannot read --enrollment-token-file \(path)")
            }
            token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        } else if let text = ProcessInfo.processInfo.environment["CONNECTOR_ENROLLMENT_TOKEN"], !text.isEmpty {
            token = text
        } else {
            throw ValidationError("no enrollment token: pass --enrollment-token-file or set CONNECTOR_ENROLLMENT_TOKEN")
        }
        do {
            let credential = try await ConnectorRegistration.register(
                config: config, enrollmentToken: token, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
            print("registered: \(credential); saved to \(config.credentialFile)")
        } catch {
            FileHandle.standardError.write(Data("connector: registration failed: \(error)\n".utf8))
            throw ExitCode(4)
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
