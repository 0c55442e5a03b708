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
        discussion: "Exit codes: 0 ok, 1 other failure, 2 bad request, 3 relay unreachable, 4 credentials refused or not allowed, 5 not found, 6 conflicting state, 7 timed out waiting, 8 session ended by the relay, 64 usage.",
        subcommands: [Clusters.self, Requests.self, Sessions.self, Tokens.self, Audit.self, Session.self])
}

struct RelayOptions: ParsableArguments {
    @Option(help: "Relay URL, https://host:port (env RELAYCTL_RELAY).")
    var relay: String = ProcessInfo.processInfo.environment["RELAYCTL_RELAY"] ?? "https://127.0.0.1:8443"

    @Option(help: "CA certificate that signed the relay's certificate (env RELAYCTL_CA).")
    var ca: String = ProcessInfo.processInfo.environment["RELAYCTL_CA"] ?? "Certs/dev/ca.pem"

    @Option(help: "File holding your token. Without it the token is read from env RELAYCTL_TOKEN.")
    var tokenFile: String?

    @Flag(help: "Print JSON instead of tables.")
    var json = false

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

    func relayURL() throws -> WebSocketURL {
        do {
            return try WebSocketURL(parsing: self.relay, acceptHTTPS: true)
        } catch {
            throw ValidationError("--relay \(self.relay): \(error)")
        }
    }

    func client() throws -> APIClient {
        do {
            return try APIClient(
                base: try self.relayURL(), caFile: self.ca, caSetting: "--ca", bearer: try self.token().value,
                group: MultiThreadedEventLoopGroup.singleton)
        } catch let error as TLSSetupError {
            throw ValidationError("\(error)")
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
            let body = APIErrorBody(error: error.code ?? (error.kind == .unreachable ? "unreachable" : "bad_response"), message: error.message)
            print(String(decoding: (try? APIJSON.encoder().encode(body)) ?? Data(), as: UTF8.self))
        }
        var message = "relayctl: \(error.message)\n"
        if error.kind == .unreachable {
            message += "relayctl: check --relay (\(self.relay)), --ca (\(self.ca)) and that the relay is running\n"
        }
        FileHandle.standardError.write(Data(message.utf8))
        Foundation.exit(RelayCtlExit.forError(error))
    }
}

/// `1h`, `30m`, `90s`, `2d` -> seconds.
func parseDurationSeconds(_ text: String, option: String) throws -> Int64 {
    if let millis = parseDurationMilliseconds(text), millis >= 1000 { return millis / 1000 }
    throw ValidationError("\(option) must be a duration such as 90s, 30m, 8h or 2d")
}
