import ArgumentParser
import ConfigKit
import Foundation
import NIOPosix
import RelayAPI
import RelayCtlKit
import TunnelCore

@main
struct RelayCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relayctl",
        abstract: "Operate the relay and open sessions to cluster components.",
        discussion: """
            Examples:
              relayctl requests create --cluster acme --role user --reason "ticket 4711" --wait 10m
              relayctl session open --cluster acme            # every component, on http://COMPONENT.acme.localhost:PORT/
              relayctl clusters list --json
              relayctl sessions kill SESSION_ID
              relayctl relays list
              relayctl audit export --since 2026-11-01T00:00:00Z
            The relay, token and CA come from --relay, --token-file and --ca, or RELAYCTL_RELAY, RELAYCTL_TOKEN_FILE and RELAYCTL_CA.

            Exit codes: 0 ok, 1 other failure, 2 bad request, 3 relay unreachable, 4 credentials refused or not allowed, 5 not found, 6 conflicting state, 7 timed out waiting, 8 session ended by the relay, 64 usage.
            """,
        version: ProductVersion.current,
        subcommands: [Clusters.self, Requests.self, Sessions.self, Tokens.self, Audit.self, Session.self, Relays.self])
}

struct RelayOptions: ParsableArguments {
    @Option(help: "Relay URL, https://host:port, or several relay nodes' URLs separated by commas (env RELAYCTL_RELAY).")
    var relay: String = ProcessInfo.processInfo.environment["RELAYCTL_RELAY"] ?? "https://127.0.0.1:8443"

    @Option(help: "CA certificate that signed the relay's certificate (env RELAYCTL_CA; default ~/.config/relayctl/ca.pem if present, else the system's trust store).")
    var ca: String?

    @Option(help: "File holding your token (env RELAYCTL_TOKEN_FILE); else env RELAYCTL_TOKEN.")
    var tokenFile: String?

    @Flag(help: "Print JSON instead of tables.")
    var json = false

    /// The CA file in force: flag, environment, the per-user default if it exists; nil: system roots.
    var caFile: String? {
        if let ca = self.ca, !ca.isEmpty { return ca }
        if let ca = ProcessInfo.processInfo.environment["RELAYCTL_CA"], !ca.isEmpty { return ca }
        let home = ProcessInfo.processInfo.environment["XDG_CONFIG_HOME"].map { $0 + "/relayctl" }
            ?? (NSHomeDirectory() as NSString).appendingPathComponent(".config/relayctl")
        let user = (home as NSString).appendingPathComponent("ca.pem")
        return FileManager.default.fileExists(atPath: user) ? user : nil
    }

    var caDescription: String { self.caFile ?? "the system's trust store" }

    func token() throws -> Secret {
        if let path = self.tokenFile ?? ProcessInfo.processInfo.environment["RELAYCTL_TOKEN_FILE"].flatMap({ $0.isEmpty ? nil : $0 }) {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw relayctlFailure("cannot read the token file \(path)", RelayCtlExit.failure)
            }
            return Secret(text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        guard let text = ProcessInfo.processInfo.environment["RELAYCTL_TOKEN"], !text.isEmpty else {
            throw relayctlFailure("no token: set RELAYCTL_TOKEN, or pass --token-file FILE (or set RELAYCTL_TOKEN_FILE)", RelayCtlExit.failure)
        }
        return Secret(text)
    }

    /// The first relay URL (API calls go there).
    func relayURL() throws -> WebSocketURL {
        try self.relayURLs()[0]
    }

    /// Every relay node given, in order (a session tries the next when one cannot be reached).
    func relayURLs() throws -> [WebSocketURL] {
        let texts = self.relay.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !texts.isEmpty else { throw ValidationError("--relay is empty") }
        return try texts.map { text in
            do {
                return try WebSocketURL(parsing: text, acceptHTTPS: true)
            } catch {
                throw ValidationError("--relay \(text): \(error)")
            }
        }
    }

    func client() throws -> APIClient {
        do {
            return try APIClient(
                base: try self.relayURL(), caFile: self.caFile, caSetting: "--ca", bearer: try self.token().value,
                group: MultiThreadedEventLoopGroup.singleton)
        } catch let error as TLSSetupError {
            throw relayctlFailure("\(error)", RelayCtlExit.failure)
        }
    }

    /// Runs one API call: JSON or human output on success; on failure the relay's message (it says
    /// what to do next) and the documented exit code.
    func run<T: Encodable>(_ call: (APIClient) async throws -> T, human: (T) -> String) async throws {
        let client = try self.client()
        do {
            let value = try await call(client)
            if self.json {
                print(String(decoding: try APIJSON.encoder().encode(value), as: UTF8.self))
            } else {
                print(human(value))
            }
        } catch let error as APIError {
            self.fail(error)
        }
    }

    func fail(_ error: APIError) -> Never {
        if self.json {
            let body = APIErrorBody(
                error: error.code ?? (error.kind == .unreachable ? "unreachable" : "bad_response"), message: error.message, requestID: error.requestID)
            print(String(decoding: (try? APIJSON.encoder().encode(body)) ?? Data(), as: UTF8.self))
        }
        var message = "relayctl: \(error.message)"
        if error.kind == .unreachable {
            message += "; check --relay (\(self.relay)), --ca (\(self.caDescription)) and that the relay is running"
        }
        // What the relay's operators find the call by in their log and audit trail.
        if let id = error.requestID, error.kind != .unreachable { message += " (request ID \(id))" }
        message += "\n"
        FileHandle.standardError.write(Data(message.utf8))
        Foundation.exit(RelayCtlExit.forError(error))
    }
}

/// A failure that is not a usage error: one line on stderr, the documented exit code, no usage text.
func relayctlFailure(_ message: String, _ code: Int32) -> ExitCode {
    FileHandle.standardError.write(Data("relayctl: \(message)\n".utf8))
    return ExitCode(code)
}

/// `1h`, `30m`, `90s`, `2d` -> seconds.
func parseDurationSeconds(_ text: String, option: String) throws -> Int64 {
    if let millis = parseDurationMilliseconds(text), millis >= 1000 { return millis / 1000 }
    throw ValidationError("\(option) must be a duration such as 90s, 30m, 8h or 2d")
}
