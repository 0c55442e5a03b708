import Foundation
import NIOConcurrencyHelpers
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOWebSocket
import TunnelCore

/// The relay node: one TLS listener for connector tunnels (`/v1/tunnel`), expert sessions
/// (`/v1/session`) and plain HTTPS (`/healthz`). Expert streams are switched into tunnels.
public final class RelayServer: Sendable {
    public let config: RelayConfig
    public let registry = TunnelRegistry()
    private let group: EventLoopGroup
    private let logger: Logger
    private let authenticator: HandshakeAuthenticator
    private let tls: NIOSSLContext
    private let serverChannel = NIOLockedValueBoxChannel()

    public init(config: RelayConfig, group: EventLoopGroup, logger: Logger = Logger(label: "relay")) throws {
        self.config = config
        self.group = group
        self.logger = logger
        self.authenticator = HandshakeAuthenticator(config: config)
        self.tls = try TLSFiles.serverContext(certificateFile: config.certificateFile, privateKeyFile: config.privateKeyFile)
    }

    /// Binds and starts accepting; returns the bound address (useful with port 0).
    @discardableResult
    public func start() async throws -> SocketAddress {
        let channel = try await ServerBootstrap(group: self.group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try self.initializeConnection(channel) }
            }
            .bind(host: self.config.listenHost, port: self.config.listenPort)
            .get()
        self.serverChannel.set(channel)
        let address = channel.localAddress!
        self.logger.info("relay listening", metadata: ["address": "\(address)"])
        return address
    }

    /// Stops accepting and closes every tunnel and session.
    public func stop() async throws {
        try await self.serverChannel.get()?.close()
        for cluster in self.config.clusters {
            for tunnel in self.registry.tunnels(cluster: cluster.id) { try? await tunnel.channel.close() }
        }
    }

    public var closeFuture: EventLoopFuture<Void>? { self.serverChannel.get()?.closeFuture }

    // MARK: per connection

    private func initializeConnection(_ channel: Channel) throws {
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(NIOSSLServerHandler(context: self.tls))
        let fallback = RelayHTTPHandler(authenticator: self.authenticator, logger: self.logger)
        // handshake_timeout: TLS and the websocket upgrade must be done by then, or the connection is
        // closed (plain HTTPS requests such as health probes get the same window).
        let deadline = channel.eventLoop.scheduleTask(in: self.config.limits.handshakeTimeout) {
            channel.close(promise: nil)
        }
        channel.closeFuture.whenComplete { _ in deadline.cancel() }
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: self.config.limits.maxWebSocketFrameSize,
            automaticErrorHandling: true,
            shouldUpgrade: { channel, head in
                switch self.authenticator.decide(head) {
                case .refuse:
                    // Not upgraded: RelayHTTPHandler answers with the reason.
                    return channel.eventLoop.makeSucceededFuture(nil)
                case .tunnel, .session:
                    var headers = HTTPHeaders()
                    headers.add(name: "sec-websocket-protocol", value: WireProtocolVersion.current)
                    return channel.eventLoop.makeSucceededFuture(headers)
                }
            },
            upgradePipelineHandler: { channel, head in
                channel.eventLoop.makeCompletedFuture {
                    deadline.cancel()
                    // The HTTP codecs are gone; the fallback handler must go too, before tunnel bytes flow.
                    channel.pipeline.syncOperations.removeHandler(fallback).whenComplete { _ in }
                    switch self.authenticator.decide(head) {
                    case .tunnel(let cluster, let node):
                        try self.acceptTunnel(channel, cluster: cluster, node: node)
                    case .session(let expert, let cluster, let component, let node):
                        try self.acceptSession(channel, expert: expert, cluster: cluster, component: component, node: node)
                    case .refuse:
                        channel.close(promise: nil)
                    }
                }
            })
        try sync.configureHTTPServerPipeline(
            withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }),
            withErrorHandling: true)
        try sync.addHandler(fallback)
    }

    private func acceptTunnel(_ channel: Channel, cluster: String, node: String) throws {
        let multiplexer = try TunnelPipeline.configure(
            channel: channel, websocketRole: .server, http2Mode: .client, limits: self.config.limits,
            logger: self.logger, inboundStreamInitializer: TunnelPipeline.refuseInboundStreams)
        let tunnel = TunnelHandle(
            id: ObjectIdentifier(channel), cluster: cluster, node: node, channel: channel, multiplexer: multiplexer,
            connectedAt: .now())
        self.registry.register(tunnel)
        let logger = self.logger
        logger.info("tunnel up", metadata: ["cluster": "\(cluster)", "node": "\(node)", "peer": "\(channel.remoteAddress.map { "\($0)" } ?? "?")"])
        channel.closeFuture.whenComplete { _ in
            self.registry.unregister(tunnel)
            logger.info("tunnel down", metadata: ["cluster": "\(cluster)", "node": "\(node)"])
        }
    }

    private func acceptSession(_ channel: Channel, expert: String, cluster: String, component: String, node: String?) throws {
        let session = SessionIdentity(
            id: randomIdentifier(), expert: expert, cluster: cluster, component: component, node: node)
        let opener = TunnelStreamOpener(session: session, registry: self.registry)
        let logger = self.logger
        _ = try TunnelPipeline.configure(
            channel: channel, websocketRole: .server, http2Mode: .server, limits: self.config.limits, logger: logger
        ) { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandlers([
                    HTTP2FramePayloadToHTTP1ServerCodec(),
                    ProxyServerHandler(opener: { opener.open($0, $1) }, onComplete: { record in
                        logger.debug("session request", metadata: session.metadata(record))
                    }),
                ])
            }
        }
        logger.info("session opened", metadata: session.metadata)
        channel.closeFuture.whenComplete { _ in logger.info("session closed", metadata: session.metadata) }
    }
}

/// Holds the listening channel once bound.
final class NIOLockedValueBoxChannel: Sendable {
    private let box = NIOLockedValueBox<Channel?>(nil)
    func set(_ channel: Channel) { self.box.withLockedValue { $0 = channel } }
    func get() -> Channel? { self.box.withLockedValue { $0 } }
}

/// 128 random bits as 32 hex digits: session and request IDs.
func randomIdentifier() -> String {
    var generator = SystemRandomNumberGenerator()
    let high = String(generator.next() as UInt64, radix: 16)
    let low = String(generator.next() as UInt64, radix: 16)
    return String(repeating: "0", count: 16 - high.count) + high + String(repeating: "0", count: 16 - low.count) + low
}
