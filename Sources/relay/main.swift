import ArgumentParser
import ConfigKit
import Foundation
import Logging
import NIOPosix
import Relay
import RelayStore
import ServiceLifecycle
import TunnelCore
import UnixSignals

@main
struct RelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Relay node: registration, heartbeats and the ops API; accepts connector tunnels and expert sessions.",
        discussion: """
            Examples:
              relay --config /etc/relay/relay.yaml                 # serve (the default subcommand)
              relay serve --check-config --config /etc/relay/relay.yaml
              relay migrate --check --config /etc/relay/relay.yaml  # what a start would migrate; exit 3 if anything
              relay backup --config /etc/relay/relay.yaml --to /var/backups/relay-2026-12-02   # while it runs
              relay --generate-completion-script bash > /etc/bash_completion.d/relay
            """,
        version: ProductVersion.current,
        subcommands: [Serve.self, Migrate.self, Backup.self], defaultSubcommand: Serve.self)
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the relay node (the default: relay --config relay.yaml).")

    @Option(name: .shortAndLong, help: "Path to relay.yaml (see Config/relay.yaml).")
    var config: String = "relay.yaml"

    @Option(help: "trace, debug, info, notice, warning, error or critical (default: log.level in relay.yaml, else info).")
    var logLevel: Logger.Level?

    @Flag(help: "Validate the config file and exit.")
    var checkConfig = false

    func run() async throws {
        // Each line reaches a redirected log as it is written, not when the relay exits.
        setvbuf(stdout, nil, _IOLBF, 0)
        // Trapped first: a SIGHUP while the store opens or migrates (a certificate deploy hook) must
        // not end the process; it is acted on once the relay serves.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let config = try RelayConfig.load(path: self.config)
        let logger = config.log.bootstrap(label: "relay", overridingLevel: self.logLevel)
        // The certificate chain and key load and match, as a start needs, before anything is
        // created on disk (data_dir, the bootstrap token).
        _ = try TLSFiles.serverContext(certificateFile: config.certificateFile, privateKeyFile: config.privateKeyFile)
        if self.checkConfig {
            print("\(self.config): OK (certificate and key match; data in \(config.dataDirectory), node \(config.nodeName))")
            return
        }
        let control = try await RelayServer.openControl(config: config, logger: logger)
        let bootstrapPath = config.dataDirectory + "/bootstrap-ops-token"
        let firstStart = try await control.createBootstrapToken(at: bootstrapPath)
        if firstStart {
            // The path only, and before anything can fail: the token itself never goes to a log.
            print("first start: an ops token named \"bootstrap\" is in \(bootstrapPath) (mode 0600);")
        }
        let server = try RelayServer(config: config, control: control, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        let address = try await server.start()
        // Said once the group traps SIGTERM and SIGINT (before any service runs): a stop right after
        // "listening" is kept. SIGHUP is trapped too: it reloads the TLS certificate.
        let announceLogger = logger
        let announce = ClosureService {
            print("relay listening on \(address.display)")
            if let admin = server.adminURL { print("metrics on \(admin)/metrics (probes /healthz, /readyz)") }
            if firstStart {
                let ip = address.ipAddress ?? "127.0.0.1"
                let host = ["0.0.0.0", "::"].contains(ip) ? "127.0.0.1" : ip.contains(":") ? "[\(ip)]" : ip
                print(
                    "use it to create your own: relayctl tokens create --relay https://\(host):\(address.port ?? config.listenPort) --ca CA_FILE --token-file \(bootstrapPath) --name NAME --role ops")
                print("(CA_FILE: the CA certificate that signed \(config.certificateFile); then revoke bootstrap: relayctl tokens revoke bootstrap)")
            }
            for await _ in hangups.cancelOnGracefulShutdown() {
                // A renewed certificate is taken without a restart; the rest of relay.yaml is read at start only.
                do {
                    try server.reloadCertificate()
                } catch {
                    announceLogger.error("SIGHUP: the certificate and key do not load; the ones in use stay", metadata: ["error": "\(error)"])
                }
                announceLogger.notice("SIGHUP: relay.yaml's other settings are read at start only; restart to apply them")
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

/// `relay migrate`: applies the store's pending migrations and exits (a start does the same);
/// `--check` says what would run and changes nothing.
struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply the store's pending schema migrations (a start applies them too); --check only lists them.")

    @Option(name: .shortAndLong, help: "Path to relay.yaml.")
    var config: String = "relay.yaml"

    @Flag(help: "List the migrations that would run, change nothing; exit 0 when none is pending, 3 when some are.")
    var check = false

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "relay")
        logger.logLevel = .warning
        let config = try RelayConfig.load(path: self.config)
        let store: String
        let pending: [String]
        switch config.store {
        case .sqlite:
            let path = config.dataDirectory + "/relay.sqlite"
            store = "SQLite \(path)"
            pending = try SQLiteStore.pendingMigrations(path: path)
        case .postgres(let settings):
            store = "PostgreSQL \(settings.displayURL)"
            pending = try await PostgresStore.pendingMigrations(settings, logger: logger)
        }
        if self.check {
            print(pending.isEmpty ? "\(store): up to date" : "\(store): would apply \(pending.joined(separator: ", "))")
            if !pending.isEmpty { throw ExitCode(3) }
            return
        }
        // The store alone: no token key is made or claimed here (a deploy host has not got the nodes' key).
        switch config.store {
        case .sqlite:
            try FileManager.default.createDirectory(
                atPath: config.dataDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try await SQLiteStore(path: config.dataDirectory + "/relay.sqlite").close()
        case .postgres(let settings):
            try await PostgresStore.open(settings, logger: logger).close()
        }
        print(pending.isEmpty ? "\(store): up to date" : "\(store): applied \(pending.joined(separator: ", "))")
    }
}

/// `relay backup`: the embedded store and the token hash key, copied into a new folder while the
/// relay runs (SQLite's online backup: consistent). Restoring is putting both back in `data_dir`
/// (docs/OPERATIONS.md "Backup and restore").
struct Backup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy the SQLite store and the token hash key into a new folder, safely while the relay runs.")

    @Option(name: .shortAndLong, help: "Path to relay.yaml.")
    var config: String = "relay.yaml"

    @Option(help: "The folder to create for the copy (it must not exist).")
    var to: String

    func run() async throws {
        let config = try RelayConfig.load(path: self.config)
        guard case .sqlite = config.store else {
            throw ValidationError("store: postgres is backed up with the database's own tools (pg_dump); see docs/OPERATIONS.md")
        }
        guard !FileManager.default.fileExists(atPath: self.to) else { throw ValidationError("\(self.to) exists; name a new folder") }
        try FileManager.default.createDirectory(atPath: self.to, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try SQLiteStore.backup(path: config.dataDirectory + "/relay.sqlite", to: self.to + "/relay.sqlite")
        // Without the key no stored token matches: it goes with the database.
        try FileManager.default.copyItem(atPath: config.tokenHashKeyPath, toPath: self.to + "/token-hash.key")
        print("backed up \(config.dataDirectory)/relay.sqlite and the token hash key to \(self.to)")
    }
}
