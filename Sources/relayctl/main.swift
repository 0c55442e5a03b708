import ArgumentParser
import ConfigKit
import Foundation
import Logging
import NIOPosix
import RelayCtlKit
import TunnelCore

@main
struct RelayCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relayctl",
        abstract: "Operate the relay and open sessions to cluster components.",
        subcommands: [Session.self])
}

struct Session: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Expert sessions.", subcommands: [Open.self])
}

struct RelayOptions: ParsableArguments {
    @Option(help: "Relay base URL (env RELAYCTL_RELAY).")
    var relay: String = ProcessInfo.processInfo.environment["RELAYCTL_RELAY"] ?? "wss://127.0.0.1:8443"

    @Option(help: "CA certificate that signed the relay's certificate (env RELAYCTL_CA).")
    var ca: String = ProcessInfo.processInfo.environment["RELAYCTL_CA"] ?? "Certs/dev/ca.pem"

    @Option(help: "File holding your token. Without it the token is read from env RELAYCTL_TOKEN.")
    var tokenFile: String?

    func token() throws -> Secret {
        if let path = self.tokenFile {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ValidationError("cannot read --token-file \(path)")
            }
            return Secret(text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        guard let text = ProcessInfo.processInfo.environment["RELAYCTL_TOKEN"], !text.isEmpty else {
            throw ValidationError("no token: set RELAYCTL_TOKEN or pass --token-file")
        }
        return Secret(text)
    }

    func sessionURL() throws -> WebSocketURL {
        var base = try WebSocketURL(parsing: self.relay)
        base.path = WirePath.session
        return base
    }
}

struct Open: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Open a local port that carries every request to a cluster component through the relay.")

    @OptionGroup var relayOptions: RelayOptions

    @Option(help: "Cluster ID.")
    var cluster: String

    @Option(help: "Component name, as the cluster's connector lists it.")
    var component: String

    @Option(help: "Only this node of the cluster.")
    var node: String?

    @Option(help: "Local address to listen on; port 0 picks a free port.")
    var listen: String = "127.0.0.1:0"

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "relayctl")
        logger.logLevel = .notice
        guard let listen = parseHostPort(self.listen) else {
            throw ValidationError("--listen must be host:port, for example 127.0.0.1:8000")
        }
        let target = SessionTarget(
            relay: try self.relayOptions.sessionURL(), token: try self.relayOptions.token(), cluster: self.cluster,
            component: self.component, node: self.node, caFile: self.relayOptions.ca)
        // One event loop for the local listener and the relay connection: every hop between them is
        // then a direct call, not a cross-thread wakeup (one engineer's traffic needs no more than a core).
        let group = MultiThreadedEventLoopGroup.singleton.next()
        let session = try SessionClient(target: target, group: group, logger: logger)
        do {
            try await session.connect()
        } catch let error as DialError {
            var message = "relayctl: \(error)\n"
            if case .rejected = error.kind {} else {
                message += "relayctl: check --relay (\(self.relayOptions.relay)), --ca, and that the relay is running\n"
            }
            FileHandle.standardError.write(message.data(using: .utf8)!)
            throw ExitCode(3)
        } catch {
            FileHandle.standardError.write("relayctl: \(error)\n".data(using: .utf8)!)
            throw ExitCode(3)
        }
        let listener = try await LocalListener.start(host: listen.host, port: listen.port, session: session, group: group)
        print("session open: cluster \(self.cluster), component \(self.component)")
        print("open \(listener.url) in your browser (Ctrl-C to end the session)")
        fflush(stdout)
        _ = await TerminationSignal.wait()
        try await listener.close()
    }
}
