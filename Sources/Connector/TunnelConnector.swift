import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import TunnelCore

/// Keeps one outbound tunnel to each wanted relay URL (the heartbeat answer says which, and when),
/// redialing with jittered backoff. The connector never listens: every tunnel is a websocket it dialed.
public final class TunnelConnector: Sendable {
    public let config: ConnectorConfig
    private let credential: ConnectorCredential
    private let group: EventLoopGroup
    private let logger: Logger
    private let tls: NIOSSLContext
    private let opener: ComponentOpener
    private let privacy: PrivacyGuard
    private let state = NIOLockedValueBox(State())
    /// Each tunnel's control stream (opened by the relay), by tunnel channel.
    private let controls = NIOLockedValueBox<[ObjectIdentifier: ControlStreamHandler]>([:])
    /// Called when a tunnel goes down or a dial is refused: the access may have ended, so the
    /// heartbeat driver asks the relay at once.
    private let onTunnelLost: @Sendable () -> Void

    private struct State {
        var wanted: Set<String> = []
        var tunnels: [String: Channel] = [:]
        var lastErrors: [String: String] = [:]
        var retryTasks: [String: Scheduled<Void>] = [:]
    }

    public init(
        config: ConnectorConfig, credential: ConnectorCredential, privacy: PrivacyGuard, group: EventLoopGroup,
        logger: Logger = Logger(label: "connector"), onTunnelLost: @escaping @Sendable () -> Void = {}
    ) throws {
        self.config = config
        self.credential = credential
        self.privacy = privacy
        self.group = group
        self.logger = logger
        self.tls = try TLSFiles.clientContext(caFile: config.caFile)
        self.opener = ComponentOpener(pool: ComponentConnectionPool(idleTimeout: .milliseconds(config.componentIdleMilliseconds)))
        self.onTunnelLost = onTunnelLost
    }

    /// Keeps exactly these tunnels: dials the missing ones, closes the others telling the relay why.
    public func keep(_ urls: [WebSocketURL], reason: String = "no longer wanted") {
        let wanted = Set(urls.map(\.description))
        let (toDial, toClose, toCancel) = self.state.withLockedValue { state -> ([WebSocketURL], [Channel], [Scheduled<Void>]) in
            let added = urls.filter { !state.wanted.contains($0.description) }
            let removed = state.wanted.subtracting(wanted)
            state.wanted = wanted
            var channels: [Channel] = []
            var tasks: [Scheduled<Void>] = []
            for url in removed {
                if let channel = state.tunnels.removeValue(forKey: url) { channels.append(channel) }
                if let task = state.retryTasks.removeValue(forKey: url) { tasks.append(task) }
                state.lastErrors[url] = nil
            }
            return (added, channels, tasks)
        }
        toCancel.forEach { $0.cancel() }
        for channel in toClose {
            channel.triggerUserOutboundEvent(WebSocketCloseRequest(code: 1000, reason: reason), promise: nil)
        }
        for url in toDial { self.dial(url, backoff: Backoff(policy: self.config.backoff)) }
    }

    /// Closes every tunnel and stops redialing.
    public func stop() async {
        let channels = self.state.withLockedValue { Array($0.tunnels.values) }
        self.keep([], reason: "the connector is shutting down")
        for channel in channels { try? await channel.closeFuture.get() }
    }

    /// Tells the relay, on every tunnel's control stream, what the customer's side ended.
    public func tellRelay(_ events: [ControlEvent]) {
        for control in self.controls.withLockedValue({ Array($0.values) }) { control.send(events) }
    }

    private func isWanted(_ url: WebSocketURL) -> Bool {
        self.state.withLockedValue { $0.wanted.contains(url.description) }
    }

    /// Relay URLs with a tunnel up right now.
    public var connectedURLs: [String] {
        self.state.withLockedValue { Array($0.tunnels.keys).sorted() }
    }

    /// Relay URLs this connector keeps a tunnel to, or redials (none: nothing will be dialed).
    public var wantedURLs: [String] {
        self.state.withLockedValue { Array($0.wanted).sorted() }
    }

    /// The last dial error per relay URL (for status output and tests).
    public var lastErrors: [String: String] {
        self.state.withLockedValue { $0.lastErrors }
    }

    private func dial(_ url: WebSocketURL, backoff: Backoff) {
        guard self.isWanted(url) else { return }
        var headers = HTTPHeaders()
        headers.add(name: "authorization", value: "Bearer \(self.credential.credential)")
        headers.add(name: WireHeader.cluster, value: self.credential.clusterID)
        headers.add(name: WireHeader.node, value: self.credential.nodeID)
        let limits = self.config.limits
        let opener = self.opener
        let privacy = self.privacy
        let logger = self.logger
        let controls = self.controls
        WebSocketDialer.dial(url: url, headers: headers, tls: self.tls, limits: limits, group: self.group) { channel in
            let tunnelID = ObjectIdentifier(channel)
            channel.closeFuture.whenComplete { _ in _ = controls.withLockedValue { $0.removeValue(forKey: tunnelID) } }
            // The relay's control stream: what it ends (sessions, requests), this connector records
            // at once. Only the tunnel's first stream, once: any other (an expert's request that got
            // the header through, a relay that misbehaves) is reset.
            let openControl: @Sendable (ControlStreamHandler, Channel) -> Bool = { handler, stream in
                guard (try? stream.syncOptions?.getOption(HTTP2StreamChannelOptions.streamID)) == HTTP2StreamID(1) else { return false }
                return controls.withLockedValue { controls in
                    guard controls[tunnelID] == nil else { return false }
                    controls[tunnelID] = handler
                    return true
                }
            }
            let controlClosed: @Sendable (ControlStreamHandler) -> Void = { handler in
                controls.withLockedValue { if $0[tunnelID] === handler { $0[tunnelID] = nil } }
                logger.warning("the relay's control stream closed; session ends are no longer pushed on this tunnel")
            }
            return try TunnelPipeline.configure(
                channel: channel, websocketRole: .client, http2Mode: .server, link: .tunnel, limits: limits, logger: logger
            ) { stream in
                stream.eventLoop.makeCompletedFuture {
                    // Every request is decided and audited by the customer's PrivacyGuard.
                    let ticket = privacy.ticket(for: stream)
                    try stream.pipeline.syncOperations.addHandlers([
                        ControlStreamHandler(role: .answerer(onOpen: { openControl($0, stream) }), loop: stream.eventLoop, onClosed: controlClosed) {
                            privacy.relaySaid($0)
                        },
                        HTTP2FramePayloadToHTTP1ServerCodec(),
                        ProxyServerHandler(
                            opener: { privacy.open($0, $1, ticket: ticket, opener: opener) },
                            // A response head larger than the tunnel and the session carry would
                            // fail the whole tunnel: 502 for that request instead.
                            limits: .init(responseHeaders: .session(limits), drainLimit: limits.refusedBodyDrainLimit),
                            onComplete: { record in
                                privacy.completed(record, ticket: ticket)
                                logger.debug(
                                    "request",
                                    metadata: [
                                        "expert": "\(record.head.headers.first(name: WireHeader.expert) ?? "-")",
                                        "component": "\(record.head.headers.first(name: WireHeader.component) ?? "-")",
                                        "method": "\(record.head.method)", "status": "\(record.status.map(String.init) ?? "-")",
                                    ])
                            },
                            responseEndGate: { privacy.commit($0, ticket: ticket) }),
                    ])
                }
            }
        }.whenComplete { result in
            var backoff = backoff
            switch result {
            case .success(let (channel, _)):
                backoff.reset()
                let keep = self.state.withLockedValue { state -> Bool in
                    guard state.wanted.contains(url.description) else { return false }
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
                    let wasWanted = self.state.withLockedValue { state -> Bool in
                        if state.tunnels[url.description] === channel { state.tunnels[url.description] = nil }
                        return state.wanted.contains(url.description)
                    }
                    logger.info("tunnel down", metadata: ["relay": "\(url)"])
                    guard wasWanted else { return }
                    self.onTunnelLost()
                    self.scheduleRedial(url, backoff: backoff)
                }
            case .failure(let error):
                self.state.withLockedValue { $0.lastErrors[url.description] = "\(error)" }
                logger.warning("cannot open tunnel", metadata: ["relay": "\(url)", "error": "\(error)"])
                if let dial = error as? DialError, case .rejected = dial.kind { self.onTunnelLost() }
                self.scheduleRedial(url, backoff: backoff)
            }
        }
    }

    private func scheduleRedial(_ url: WebSocketURL, backoff: Backoff) {
        var backoff = backoff
        let delay = backoff.next()
        self.state.withLockedValue { state in
            guard state.wanted.contains(url.description) else { return }
            state.retryTasks[url.description] = self.group.next().scheduleTask(in: .milliseconds(delay)) {
                self.dial(url, backoff: backoff)
            }
        }
    }
}
