import ArgumentParser
import ConfigKit
import Foundation
import Logging
import NIOPosix
import RelayCtlKit
import RelayModel
import TunnelCore
import UnixSignals

struct Session: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Your sessions to cluster components.", subcommands: [Open.self])
}

struct Open: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Open a local port that carries every request to a cluster component through the relay.",
        discussion: "Needs an approved access request naming you. If the cluster's connector has not dialed in yet, waits (showing progress) up to --wait.")

    @OptionGroup var relayOptions: RelayOptions

    @Option(help: "Cluster ID.")
    var cluster: String

    @Option(help: "Component name, as the cluster's connector lists it.")
    var component: String

    @Option(help: "Only this node of the cluster.")
    var node: String?

    @Option(help: "Run under this role (at most your request's): admin, user or viewer.")
    var role: String?

    @Option(help: "Local address to listen on; port 0 picks a free port.")
    var listen: String = "127.0.0.1:0"

    @Option(help: "How long to wait for the connector to dial in: 90s, 5m.")
    var wait: String = "5m"

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "relayctl")
        logger.logLevel = .notice
        guard let listen = parseHostPort(self.listen) else {
            throw ValidationError("--listen must be host:port, for example 127.0.0.1:8000")
        }
        var role: AccessRole?
        if let text = self.role {
            guard let parsed = AccessRole(rawValue: text) else { throw ValidationError("--role must be admin, user or viewer") }
            role = parsed
        }
        let waitSeconds = try parseDurationSeconds(self.wait, option: "--wait")
        let urls = try self.relayOptions.relayURLs().map { url in
            var url = url
            url.path = WirePath.session
            return url
        }
        var target = SessionTarget(
            relay: urls[0], token: try self.relayOptions.token(), cluster: self.cluster, component: self.component, node: self.node,
            role: role, caFile: self.relayOptions.caFile)
        target.otherRelays = Array(urls.dropFirst())
        // One event loop for the local listener and the relay connection: every hop between them is
        // then a direct call, not a cross-thread wakeup (one engineer's traffic needs no more than a core).
        let group = MultiThreadedEventLoopGroup.singleton.next()
        let ended = AsyncStream<WebSocketPeerClosed>.makeStream()
        let session: SessionClient
        do {
            session = try SessionClient(target: target, group: group, logger: logger) { ended.continuation.yield($0) }
        } catch {
            throw relayctlFailure("\(error)", RelayCtlExit.failure)
        }
        try await Self.connect(session, waitSeconds: waitSeconds, cluster: self.cluster)
        let listener = try await LocalListener.start(host: listen.host, port: listen.port, session: session, group: group)
        // Watching for Ctrl-C / SIGTERM before saying "ready": a stop right after the banner is kept.
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
        let grant = session.grant
        let runsUnder = grant.map { grant in
            let readOnly = grant.customerMode == "readOnly" && grant.role != "viewer" ? " (the customer's privacy mode readOnly allows reading only)" : ""
            return ", role \(grant.role)\(readOnly), request \(grant.accessRequest), until \(HumanFormat.time(grant.expiresAt))"
        } ?? ""
        print("session open: cluster \(self.cluster), component \(self.component)\(runsUnder)")
        print("open \(listener.url) in your browser (Ctrl-C to end the session)")
        fflush(stdout)
        // Ends on Ctrl-C, or when the relay ends the session with a reason (revoked, expired,
        // killed). A relay node draining (1012) or a dropped connection is not an end: the next
        // request redials.
        let outcome = await withTaskGroup(of: WebSocketPeerClosed?.self) { group in
            group.addTask {
                for await _ in signals { break }
                return nil
            }
            group.addTask {
                for await closed in ended.stream {
                    if closed.endsTheSession { return closed }
                    if closed.code != .normalClosure {
                        FileHandle.standardError.write(
                            Data("relayctl: the relay closed the connection (\(closed.why)); the next request reconnects\n".utf8))
                    }
                }
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        try? await listener.close()
        if let outcome {
            FileHandle.standardError.write(Data("relayctl: session ended by the relay: \(outcome.why)\n".utf8))
            throw ExitCode(RelayCtlExit.sessionEnded)
        }
    }

    /// Dials until the relay accepts; while it answers "no tunnel yet" (the connector dials at its
    /// next heartbeat) shows progress and retries, up to `waitSeconds`.
    static func connect(_ session: SessionClient, waitSeconds: Int64, cluster: String) async throws {
        let start = ContinuousClock.now
        var announced = false
        while true {
            do {
                try await session.connect()
                if announced && isatty(STDERR_FILENO) == 1 { FileHandle.standardError.write(Data("\n".utf8)) }
                return
            } catch let error as DialError {
                if case .rejected(let status) = error.kind {
                    if status == 503 {
                        let waited = ContinuousClock.now - start
                        let givingUp = waited >= .seconds(waitSeconds)
                        // Always said at least once, even when the first answer came after the wait
                        // (a slow relay): a terminal gets one line redrawn; a file or pipe a line at
                        // the start and every 30 s.
                        if isatty(STDERR_FILENO) == 1 {
                            let line = announced ? "\r" : "relayctl: \(error.relayMessage ?? error.message)\n"
                            FileHandle.standardError.write(Data("\(line)waiting for the connector to dial in... \(waited.components.seconds) s".utf8))
                        } else if !announced || (!givingUp && waited.components.seconds % 30 == 0) {
                            FileHandle.standardError.write(
                                Data("relayctl: \(error.relayMessage ?? error.message); waiting for the connector to dial in (\(waited.components.seconds) s of \(waitSeconds) s)\n".utf8))
                        }
                        if givingUp {
                            let start = isatty(STDERR_FILENO) == 1 ? "\n" : ""
                            FileHandle.standardError.write(
                                Data("\(start)relayctl: gave up after \(waitSeconds) s: \(error.message); check the cluster's connector (relayctl clusters show \(cluster)), then retry\n".utf8))
                            throw ExitCode(RelayCtlExit.timedOut)
                        }
                        announced = true
                        try await Task.sleep(for: .seconds(1))
                        continue
                    }
                    FileHandle.standardError.write(Data("relayctl: the relay refused the session (\(status)): \(error.relayMessage ?? error.message)\n".utf8))
                    throw ExitCode(RelayCtlExit.forStatus(status))
                }
                FileHandle.standardError.write(Data("relayctl: \(error.message); check --relay, --ca and that the relay is running\n".utf8))
                throw ExitCode(RelayCtlExit.unreachable)
            } catch let error as ExitCode {
                throw error
            } catch {
                FileHandle.standardError.write(Data("relayctl: cannot reach the relay: \(describeConnectionError(error))\n".utf8))
                throw ExitCode(RelayCtlExit.unreachable)
            }
        }
    }
}
