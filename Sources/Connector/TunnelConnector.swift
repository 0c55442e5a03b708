import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import TunnelCore

/// Keeps one outbound tunnel to each configured relay URL, redialing with jittered backoff.
/// The connector never listens: every tunnel is a websocket it dialed.
public final class TunnelConnector: Sendable {
    public let config: ConnectorConfig
    private let group: EventLoopGroup
    private let logger: Logger
    private let tls: NIOSSLContext
    private let opener: ComponentOpener
    private let state = NIOLockedValueBox(State())

    private struct State {
        var running = false
        var tunnels: [String: Channel] = [:]
        var lastErrors: [String: String] = [:]
        var retryTasks: [String: Scheduled<Void>] = [:]
    }

    public init(config: ConnectorConfig, group: EventLoopGroup, logger: Logger = Logger(label: "connector")) throws {
        self.config = config
        self.group = group
        self.logger = logger
        self.tls = try TLSFiles.clientContext(caFile: config.caFile)
        self.opener = ComponentOpener(components: config.components)
    }

    /// Starts dialing every relay URL; returns at once.
    public func start() {
        self.state.withLockedValue { $0.running = true }
        for url in self.config.relayURLs {
            self.dial(url, backoff: Backoff(policy: self.config.backoff))
        }
    }

    /// Closes every tunnel and stops redialing.
    public func stop() async {
        let (channels, tasks) = self.state.withLockedValue { state -> ([Channel], [Scheduled<Void>]) in
            state.running = false
            defer { state.retryTasks = [:] }
            return (Array(state.tunnels.values), Array(state.retryTasks.values))
        }
        tasks.forEach { $0.cancel() }
        for channel in channels { try? await channel.close() }
    }

    /// Relay URLs with a tunnel up right now.
    public var connectedURLs: [String] {
        self.state.withLockedValue { Array($0.tunnels.keys).sorted() }
    }

    /// The last dial error per relay URL (for status output and tests).
    public var lastErrors: [String: String] {
        self.state.withLockedValue { $0.lastErrors }
    }

    private func dial(_ url: WebSocketURL, backoff: Backoff) {
        guard self.state.withLockedValue({ $0.running }) else { return }
        var headers = HTTPHeaders()
        headers.add(name: "authorization", value: "Bearer \(self.config.secret.value)")
        headers.add(name: WireHeader.cluster, value: self.config.clusterID)
        headers.add(name: WireHeader.node, value: self.config.nodeID)
        let limits = self.config.limits
        let opener = self.opener
        let logger = self.logger
        WebSocketDialer.dial(url: url, headers: headers, tls: self.tls, limits: limits, group: self.group) { channel in
            try TunnelPipeline.configure(
                channel: channel, websocketRole: .client, http2Mode: .server, limits: limits, logger: logger
            ) { stream in
                stream.eventLoop.makeCompletedFuture {
                    try stream.pipeline.syncOperations.addHandlers([
                        HTTP2FramePayloadToHTTP1ServerCodec(),
                        ProxyServerHandler(opener: { opener.open($0, $1) }, onComplete: { record in
                            logger.debug(
                                "request",
                                metadata: [
                                    "expert": "\(record.head.headers.first(name: WireHeader.expert) ?? "-")",
                                    "component": "\(record.head.headers.first(name: WireHeader.component) ?? "-")",
                                    "method": "\(record.head.method)", "status": "\(record.status.map(String.init) ?? "-")",
                                ])
                        }),
                    ])
                }
            }
        }.whenComplete { result in
            var backoff = backoff
            switch result {
            case .success(let (channel, _)):
                backoff.reset()
                let keep = self.state.withLockedValue { state -> Bool in
                    guard state.running else { return false }
                    state.tunnels[url.description] = channel
                    state.lastErrors[url.description] = nil
                    return true
                }
                guard keep else {
                    channel.close(promise: nil)
                    return
                }
                logger.info("tunnel up", metadata: ["relay": "\(url)"])
                channel.closeFuture.whenComplete { _ in
                    self.state.withLockedValue { _ = $0.tunnels.removeValue(forKey: url.description) }
                    logger.info("tunnel down", metadata: ["relay": "\(url)"])
                    self.scheduleRedial(url, backoff: backoff)
                }
            case .failure(let error):
                self.state.withLockedValue { $0.lastErrors[url.description] = "\(error)" }
                logger.warning("cannot reach relay", metadata: ["relay": "\(url)", "error": "\(error)"])
                self.scheduleRedial(url, backoff: backoff)
            }
        }
    }

    private func scheduleRedial(_ url: WebSocketURL, backoff: Backoff) {
        var backoff = backoff
        let delay = backoff.next()
        self.state.withLockedValue { state in
            guard state.running else { return }
            state.retryTasks[url.description] = self.group.next().scheduleTask(in: .milliseconds(delay)) {
                self.dial(url, backoff: backoff)
            }
        }
    }
}
