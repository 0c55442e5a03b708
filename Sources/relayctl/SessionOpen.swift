import ArgumentParser
import ConfigKit
import Foundation
import Logging
import NIOPosix
import RelayAPI
import RelayCtlKit
import RelayModel
import TunnelCore
import UnixSignals

struct Session: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Your sessions to cluster components.", subcommands: [Open.self])
}

struct Open: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Open a local port that carries every request to cluster components through the relay.",
        discussion: """
            Each component gets its own host name on the port (http://ui.CLUSTER.localhost:PORT/): browsers keep \
            cookies per host, so components never share them. A browser signs in with the one-time link printed \
            for each (press Enter for new links); scripts send the --local-token-file token in header X-Relayctl-Token \
            to http://127.0.0.1:PORT/ (one component) or to the component's host name. While the request is pending \
            the customer's approval, or the connector has not dialed in yet, waits (showing progress) up to --wait.
            """)

    @OptionGroup var relayOptions: RelayOptions

    @Option(help: "Cluster ID.")
    var cluster: String

    @Option(name: .customLong("component"), help: "Component name, as the cluster's connector lists it; repeat for several. Default: every component the cluster offers.")
    var components: [String] = []

    @Option(help: "Only this node of the cluster.")
    var node: String?

    @Option(help: "Run under this role (at most your request's): admin, user or viewer.")
    var role: String?

    @Option(help: "Local address to listen on; port 0 picks a free port.")
    var listen: String = "127.0.0.1:0"

    @Option(help: "How long to wait for the customer's approval and for the connector to dial in: 90s, 5m.")
    var wait: String = "5m"

    @Option(help: "Write a token for scripts to this file (mode 0600, removed at the end); send it in header X-Relayctl-Token.")
    var localTokenFile: String?

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
        let api = try self.relayOptions.client()
        // Every other live node too: any of them may hold the cluster's tunnel (an older relay
        // without the list answers 404: the nodes given are all there is).
        let nodes = (try? await api.call(RelayEndpoints.relayNodes)) ?? []
        let urls = RelayDiscovery.sessionURLs(given: try self.relayOptions.relayURLs(), nodes: nodes)
        var components: [String] = []
        for name in try await self.componentsToOpen(api) where !components.contains(name) { components.append(name) }
        // Checked before any wait: two names that would share a host name fail now, not after approval.
        let scriptToken = self.localTokenFile.map { _ in SecureRandom.hex(32) }
        let access: LocalAccess
        do {
            access = try LocalAccess(cluster: self.cluster, components: components, scriptToken: scriptToken)
        } catch {
            throw relayctlFailure("\(error)", RelayCtlExit.badRequest)
        }
        let relayTokenFile = self.relayOptions.tokenFile ?? ProcessInfo.processInfo.environment["RELAYCTL_TOKEN_FILE"]
        if let path = self.localTokenFile, path == relayTokenFile {
            throw relayctlFailure("--local-token-file must not be --token-file: relayctl writes the local token there and removes it at the end", RelayCtlExit.badRequest)
        }
        // One event loop for the local listener and the relay connections: every hop between them
        // is then a direct call, not a cross-thread wakeup (one engineer's traffic needs no more than a core).
        let group = MultiThreadedEventLoopGroup.singleton.next()
        let ended = AsyncStream<(component: String, closed: WebSocketPeerClosed)>.makeStream()
        let token = try self.relayOptions.token()
        // One session per component: the relay and the connector audit each on its own.
        let sessions = try components.map { component in
            var target = SessionTarget(
                relay: urls[0], token: token, cluster: self.cluster, component: component, node: self.node, role: role,
                caFile: self.relayOptions.caFile)
            target.otherRelays = Array(urls.dropFirst())
            do {
                return try SessionClient(target: target, group: group, logger: logger) { ended.continuation.yield((component, $0)) }
            } catch {
                throw relayctlFailure("\(error)", RelayCtlExit.failure)
            }
        }
        let waiting = SessionWait(
            seconds: waitSeconds, cluster: self.cluster, approval: ApprovalWait(client: api, cluster: self.cluster))
        for session in sessions { try await waiting.connect(session) }

        // A file of its own: never another one overwritten, then removed at the end.
        if let path = self.localTokenFile, let scriptToken {
            let created: Bool
            do {
                created = try PrivateFile.create(path, with: Data((scriptToken + "\n").utf8))
            } catch {
                throw relayctlFailure("cannot write --local-token-file \(path): \(error)", RelayCtlExit.failure)
            }
            guard created else {
                throw relayctlFailure("--local-token-file \(path) exists (another session's, or a file of yours); remove it or choose another path", RelayCtlExit.conflict)
            }
        }
        defer { if let path = self.localTokenFile { try? FileManager.default.removeItem(atPath: path) } }
        let listener: LocalListener
        do {
            listener = try await LocalListener.start(host: listen.host, port: listen.port, sessions: sessions, access: access, group: group)
        } catch {
            throw relayctlFailure("cannot listen on \(self.listen): \(describeConnectionError(error))", RelayCtlExit.failure)
        }
        // Watching for Ctrl-C / SIGTERM before saying "ready": a stop right after the banner is kept.
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
        print(self.banner(sessions[0].grant, components: components))
        Self.printLinks(access, port: listener.port)
        print("(each link signs in one browser, once; press Enter here for new links; Ctrl-C ends the session)")
        if let path = self.localTokenFile {
            // Several components: the plain address answers 404; curl resolves *.localhost itself.
            let address = components.count == 1 ? listener.url : components.map { access.url(of: $0, port: listener.port) }.joined(separator: ", ")
            print("scripts: \(address) with header X-Relayctl-Token: the token in \(path)")
        }
        fflush(stdout)
        // Ends on Ctrl-C, or when the relay has ended every component's session with a reason
        // (revoked, expired, killed: a grant's end ends them all; an operator may kill one, and
        // the others go on). A relay node draining (1012) or a dropped connection is not an end:
        // the next request redials.
        let outcome = await withTaskGroup(of: WebSocketPeerClosed?.self) { group in
            group.addTask {
                for await _ in signals { break }
                return nil
            }
            group.addTask {
                var over: Set<String> = []
                for await (component, closed) in ended.stream {
                    if closed.endsTheSession {
                        over.insert(component)
                        if over.count == components.count { return closed }
                        FileHandle.standardError.write(
                            Data("relayctl: the relay ended the session of component \(component) (\(closed.why)); the other components go on\n".utf8))
                        continue
                    }
                    if closed.code != .normalClosure {
                        FileHandle.standardError.write(
                            Data("relayctl: the relay closed the connection (\(closed.why)); the next request reconnects\n".utf8))
                    }
                }
                return nil
            }
            // Enter asks for new sign-in links (another browser, a restarted one). Only when
            // relayctl runs in the terminal's foreground: a background read would stop it (SIGTTIN).
            if isatty(STDIN_FILENO) == 1 && tcgetpgrp(STDIN_FILENO) == getpgrp() {
                Thread {
                    while readLine() != nil {
                        Self.printLinks(access, port: listener.port)
                        fflush(stdout)
                    }
                }.start()
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

    /// The components named, or every one the cluster's connectors offer.
    private func componentsToOpen(_ api: APIClient) async throws -> [String] {
        if !self.components.isEmpty { return self.components }
        let detail: ClusterDetail
        do {
            detail = try await api.call(RelayEndpoints.cluster, self.cluster)
        } catch let error as APIError {
            self.relayOptions.fail(error)
        }
        guard !detail.components.isEmpty else {
            throw relayctlFailure(
                "cluster \(self.cluster) has reported no components yet; name one with --component", RelayCtlExit.notFound)
        }
        return detail.components
    }

    private func banner(_ grant: SessionGrantInfo?, components: [String]) -> String {
        let runsUnder = grant.map { grant in
            let readOnly = grant.customerMode == "readOnly" && grant.role != "viewer" ? " (the customer's privacy mode readOnly allows reading only)" : ""
            return ", role \(grant.role)\(readOnly), request \(grant.accessRequest), until \(HumanFormat.time(grant.expiresAt))"
        } ?? ""
        let named = components.count == 1 ? "component \(components[0])" : "components \(components.joined(separator: ", "))"
        return "session open: cluster \(self.cluster), \(named)\(runsUnder)"
    }

    private static func printLinks(_ access: LocalAccess, port: Int) {
        for component in access.components {
            print("\(component): open \(access.signInLink(for: component, port: port)) in your browser")
        }
    }
}
