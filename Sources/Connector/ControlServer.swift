import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import PrivacyPolicy
import RelayAPI
import RelayModel
import ServiceLifecycle
import TunnelCore

/// The customer CLI's endpoint: HTTP/1.1 + JSON on a Unix socket in `state_dir` (socket 0600 in a
/// 0700 folder, so only the connector's user and root can use it). The connector has no network
/// listener; this socket is not reachable from the network.
public final class ControlServer: Service, Sendable {
    public let channel: Channel
    public let path: String

    public static func socketPath(config: ConnectorConfig) -> String {
        self.socketPath(stateDirectory: config.stateDirectory)
    }

    public static func socketPath(stateDirectory: String) -> String {
        (stateDirectory as NSString).appendingPathComponent("control.sock")
    }

    private init(channel: Channel, path: String) {
        self.channel = channel
        self.path = path
    }

    public static func start(api: ControlAPI, config: ConnectorConfig, group: EventLoopGroup) async throws -> ControlServer {
        try ensurePrivateDirectory(config.stateDirectory)
        let path = self.socketPath(config: config)
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(ControlHTTPHandler(api: api))
                }
            }
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true)
            .get()
        guard chmod(path, 0o600) == 0 else {
            try? await channel.close()
            throw ConnectorStateError(description: "cannot set mode 0600 on \(path)")
        }
        return ControlServer(channel: channel, path: path)
    }

    public func close() async {
        try? await self.channel.close()
        unlink(self.path)
    }

    /// Serves until graceful shutdown (bound already by `start`), then closes the socket.
    public func run() async {
        try? await gracefulShutdown()
        await self.close()
    }
}

/// What the control socket can do, over the connector's live parts.
public struct ControlAPI: Sendable {
    let privacy: PrivacyGuard
    let credential: ConnectorCredential
    let tunnels: @Sendable () -> [String]
    let lastAnswer: @Sendable () -> (at: Date?, flag: Bool?, failure: String?)
    let reload: @Sendable (_ actor: String, _ mode: ModeChange?) throws -> SettingsApplied
    let configFile: @Sendable () -> ConfigFileCheck?
    let decided: @Sendable () -> Void
    let refresh: @Sendable () -> Void

    /// - Parameters:
    ///   - reload: re-reads the config file and applies it (SIGHUP does the same), with a mode change.
    ///   - configFile: reads the config file as it is now (nil: not started from a file).
    ///   - decided: called after an approval or rejection (the driver heartbeats at once).
    ///   - refresh: asks the relay now (`requests list --watch`).
    public init(
        privacy: PrivacyGuard, credential: ConnectorCredential, tunnels: @escaping @Sendable () -> [String],
        lastAnswer: @escaping @Sendable () -> (at: Date?, flag: Bool?, failure: String?),
        reload: @escaping @Sendable (_ actor: String, _ mode: ModeChange?) throws -> SettingsApplied,
        configFile: @escaping @Sendable () -> ConfigFileCheck?, decided: @escaping @Sendable () -> Void, refresh: @escaping @Sendable () -> Void
    ) {
        self.privacy = privacy
        self.credential = credential
        self.tunnels = tunnels
        self.lastAnswer = lastAnswer
        self.reload = reload
        self.configFile = configFile
        self.decided = decided
        self.refresh = refresh
    }

    /// `connector status`: what the connector runs under and does now, and its figures since start.
    func status() -> ConnectorStatus {
        let last = self.lastAnswer()
        let config = self.privacy.config
        let source = self.privacy.modeOverride.map { "customer CLI (\($0.by) at \(Timestamp.text($0.at)))" } ?? "config"
        let file = self.configFile()
        return ConnectorStatus(
            cluster: self.credential.clusterID, node: self.credential.nodeID, mode: self.privacy.mode, modeSource: source,
            components: config.components.map(\.name).sorted(), tunnels: self.tunnels(), remoteUIRequested: last.flag,
            lastHeartbeatAt: last.at, heartbeatFailure: last.failure, liveSessions: self.privacy.sessions.filter { $0.endReason == nil }.count,
            pendingRequests: self.privacy.requests.pending.count, auditDirectory: config.audit.directory,
            auditFailure: self.privacy.audit.failure.map { "failing since \(Timestamp.text($0.since)): \($0.message)" },
            modeOverride: self.privacy.modeOverride, configFile: file?.path, configFileMode: file?.mode, configProblem: file?.problem,
            settingsLoadedAt: self.privacy.configLoadedAt, figures: self.privacy.figures.counts)
    }

    func handle(method: HTTPMethod, path: String, body: Data) throws -> Data {
        let segments = path.split(separator: "/").map(String.init)
        let route = segments.enumerated().map { $0.offset == 2 && segments.count == 4 ? "*" : $0.element }.joined(separator: "/")
        let id = segments.count == 4 ? segments[2] : ""
        let encoder = APIJSON.encoder()
        switch (method, route) {
        case (.GET, "v1/status"):
            return try encoder.encode(self.status())
        case (.GET, "v1/requests"):
            return try encoder.encode(self.privacy.requests)
        case (.POST, "v1/requests/*/approve"), (.POST, "v1/requests/*/reject"):
            guard let number = Int64(id) else { throw ControlError(status: 400, code: "bad_request", message: "request IDs are numbers") }
            let actor = try decode(CustomerActor.self, body)
            let verdict: CustomerApproval.Verdict = route.hasSuffix("approve") ? .approved : .rejected
            let approval = try self.privacy.decide(number, verdict, by: actor.by, reason: actor.reason, expected: actor.expected)
            self.decided()
            return try encoder.encode(approval)
        case (.POST, "v1/requests/*/revoke"):
            guard let number = Int64(id) else { throw ControlError(status: 400, code: "bad_request", message: "request IDs are numbers") }
            let actor = try decode(CustomerActor.self, body)
            let approval = try self.privacy.revoke(number, by: actor.by, reason: actor.reason)
            self.decided()
            return try encoder.encode(approval)
        case (.GET, "v1/sessions"):
            return try encoder.encode(self.privacy.sessions)
        case (.POST, "v1/sessions/*/kill"):
            let actor = try decode(CustomerActor.self, body)
            return try encoder.encode(try self.privacy.killSession(id, by: actor.by))
        case (.POST, "v1/mode"):
            let change = try decode(ModeChange.self, body)
            // Back to the file: the file as it is now, not the copy read at the last reload.
            if change.mode == nil, self.configFile() != nil { return try encoder.encode(self.withFile(try self.reload("customer:\(change.by)", change))) }
            return try encoder.encode(self.withFile(self.privacy.apply(mode: change, actor: "customer:\(change.by)")))
        case (.POST, "v1/reload"):
            let actor = try decode(CustomerActor.self, body)
            return try encoder.encode(self.withFile(try self.reload("customer:\(actor.by)", nil)))
        case (.POST, "v1/refresh"):
            self.refresh()
            return try encoder.encode(self.privacy.requests)
        default:
            throw ControlError(status: 404, code: "not_found", message: "no \(method) \(path) on the control socket")
        }
    }

    /// What the config file says as it reads now (not the copy in force), for the customer's note.
    private func withFile(_ applied: SettingsApplied) -> SettingsApplied {
        guard let file = self.configFile() else { return applied }
        var applied = applied
        applied.fileMode = file.mode
        applied.configProblem = file.problem
        return applied
    }

    private func decode<T: Decodable>(_ type: T.Type, _ body: Data) throws -> T {
        do {
            return try APIJSON.decoder().decode(type, from: body)
        } catch {
            throw ControlError(status: 400, code: "bad_request", message: "the request body is not a valid \(type): \(error)")
        }
    }
}

/// Reads one request (body at most 64 KiB), answers it, and keeps the connection for the next.
private final class ControlHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let api: ControlAPI
    private var head: HTTPRequestHead?
    private var body = Data()
    private var tooLarge = false

    init(api: ControlAPI) { self.api = api }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            self.body = Data()
            self.tooLarge = false
        case .body(let buffer):
            self.body.append(contentsOf: buffer.readableBytesView)
            if self.body.count > 64 * 1024 { self.tooLarge = true }
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            var status = 200
            var payload: Data
            if self.tooLarge {
                status = 413
                payload = errorBody("too_large", "request bodies are at most 64 KiB")
            } else {
                do {
                    payload = try self.api.handle(method: head.method, path: head.uri, body: self.body)
                } catch let error as ControlError {
                    status = error.status
                    payload = errorBody(error.code, error.message)
                } catch {
                    status = 500
                    payload = errorBody("internal", "\(error)")
                }
            }
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "application/json")
            headers.add(name: "content-length", value: String(payload.count))
            let responseHead = HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: status), headers: headers)
            context.write(self.wrapOutboundOut(.head(responseHead)), promise: nil)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: payload)))), promise: nil)
            let keepAlive = head.isKeepAlive
            context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in
                if !keepAlive { context.close(promise: nil) }
            }
        }
    }
}

private func errorBody(_ code: String, _ message: String) -> Data {
    (try? APIJSON.encoder().encode(APIErrorBody(error: code, message: message))) ?? Data()
}
