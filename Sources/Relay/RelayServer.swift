import Foundation
import RelayModel
import RelayStore
import NIOConcurrencyHelpers
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOWebSocket
import ServiceLifecycle
import TunnelCore

/// The relay node: one TLS listener for connector tunnels (`/v1/tunnel`), expert sessions
/// (`/v1/session`), the JSON API (`/v1/...`) and the health probe (`/healthz`). Expert streams are
/// switched into tunnels; `AccessReconciler` closes what access no longer allows.
public final class RelayServer: Service, Sendable {
    public let config: RelayConfig
    public let control: MissionControl
    public let registry = TunnelRegistry()
    public let sessions = LiveSessions()
    private let group: EventLoopGroup
    private let logger: Logger
    private let gate: HandshakeGate
    private let router: RelayAPIRouter
    private let console: OpsConsole
    /// The certificate new connections get; `reloadCertificate()` swaps it (SIGHUP).
    private let tls: NIOLockedValueBox<NIOSSLContext>
    private let serverChannel = NIOLockedValueBoxChannel()
    /// Connections held open right now, capped in total and per address.
    public let connections: ConnectionLimiter
    private let handshakeDeadlines: Deadlines
    private let drainDeadlines: Deadlines
    public let reconciler: AccessReconciler
    /// Where the work this node's event loops start runs (decisions, API calls, records).
    public let tasks = OwnedTasks()
    /// Set when the drain begins: a session still upgrading then is closed at once (1012).
    private let draining = NIOLockedValueBox(false)
    private let presence = NIOLockedValueBox<RelayNodePresence?>(nil)
    private let admin = NIOLockedValueBox<AdminServer?>(nil)
    private let timers: any Clock<Duration>

    /// - Parameters:
    ///   - handshakeDeadlines: when new connections' handshake deadlines pass (real time by default).
    ///   - drainDeadlines: when a drain's `drain_timeout` passes, and the grace for closing tunnels after it.
    public init(
        config: RelayConfig, control: MissionControl, group: EventLoopGroup, logger: Logger = Logger(label: "relay"),
        handshakeDeadlines: Deadlines = .eventLoop, drainDeadlines: Deadlines = .eventLoop, timers: any Clock<Duration> = ContinuousClock()
    ) throws {
        self.handshakeDeadlines = handshakeDeadlines
        self.drainDeadlines = drainDeadlines
        self.config = config
        self.control = control
        self.group = group
        self.logger = logger
        self.gate = HandshakeGate(control: control, registry: self.registry)
        self.router = RelayAPIRouter(control: control, registry: self.registry)
        self.console = OpsConsole(control: control, registry: self.registry)
        self.tls = NIOLockedValueBox(try TLSFiles.serverContext(certificateFile: config.certificateFile, privateKeyFile: config.privateKeyFile))
        self.connections = ConnectionLimiter(limits: config.connectionLimits, logger: logger)
        self.timers = timers
        self.reconciler = AccessReconciler(
            control: control, registry: self.registry, sessions: self.sessions,
            interval: .milliseconds(config.reconcileIntervalMilliseconds), clock: timers)
    }

    /// In start order; a `ServiceGroup` stops them in reverse: the listener first (sessions and
    /// tunnels told why), then the reconciler, the work already started (records of the ends), and
    /// the store last, once they are written.
    /// `start()` binds before they run.
    /// The node's presence among the relay nodes joins them once `start()` knows its URL: it stops
    /// after the listener (leaving the store once drained).
    public var services: [any Service] {
        let presence: [any Service] = self.presence.withLockedValue { $0.map { [$0] } ?? [] }
        return [StoreService(control: self.control), self.tasks, self.reconciler] + presence + [self]
    }

    /// Serves (bound by `start()`) until graceful shutdown, then stops.
    public func run() async throws {
        try? await gracefulShutdown()
        try await self.stop()
    }

    /// Opens the embedded SQLite store in `config.dataDirectory` (created 0700 if missing) and the
    /// token hash key, without the checks a shared store needs (`openControl`): for tests.
    public static func openEmbeddedControl(config: RelayConfig, logger: Logger, clock: @escaping @Sendable () -> Date = { Date() }) throws -> MissionControl {
        try FileManager.default.createDirectory(
            atPath: config.dataDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let store = try SQLiteStore(path: config.dataDirectory + "/relay.sqlite")
        let key = try TokenHasher.loadOrCreateKey(at: config.tokenHashKeyPath)
        return MissionControl(store: store, hasher: TokenHasher(key: key), settings: Self.settings(config), clock: clock, logger: logger)
    }

    /// Binds and starts accepting; returns the bound address (useful with port 0).
    @discardableResult
    public func start() async throws -> SocketAddress {
        let channel = try await ServerBootstrap(group: self.group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            // Half-open connections (a peer that vanished) are found by the kernel, not kept forever.
            .childChannelOption(ChannelOptions.socketOption(.so_keepalive), value: 1)
            .childChannelOption(
                ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: TCP_KEEPIDLE)),
                value: SocketOptionValue(self.config.connectionLimits.tcpKeepaliveIdleSeconds))
            .childChannelOption(ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: TCP_KEEPINTVL)), value: 10)
            .childChannelOption(ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: TCP_KEEPCNT)), value: 6)
            .childChannelInitializer { channel in
                guard self.connections.admit(channel) else { return channel.eventLoop.makeSucceededVoidFuture() }
                return channel.eventLoop.makeCompletedFuture { try self.initializeConnection(channel) }
            }
            .bind(host: self.config.listenHost, port: self.config.listenPort)
            .get()
        self.serverChannel.set(channel)
        let address = channel.localAddress!
        let own = self.config.ownTunnelURL(boundPort: address.port ?? self.config.listenPort)
        if !self.config.tunnelURLs.isEmpty { self.control.tunnelURLs = self.config.tunnelURLs }
        // This node's own until the store says which others are live (at once, as its services start).
        self.control.setLiveTunnelURLs([own])
        self.presence.withLockedValue {
            $0 = RelayNodePresence(
                control: self.control, nodeID: self.config.nodeName, tunnelURL: own, ttl: .milliseconds(self.config.nodeTTLMilliseconds),
                clock: self.timers, load: { [registry = self.registry, sessions = self.sessions] in (registry.count, sessions.all.count) })
        }
        self.logger.info("relay listening", metadata: ["address": "\(address.display)", "tunnel_url": "\(own)"])
        if let admin = self.config.adminListen {
            let server = try await AdminServer.start(
                host: admin.host, port: admin.port, server: self, tls: { [tls = self.tls] in tls.withLockedValue { $0 } }, group: self.group,
                logger: self.logger)
            self.admin.withLockedValue { $0 = server }
        }
        return address
    }

    /// Reads `tls.certificate_file` and `tls.private_key_file` again: connections from now on get
    /// the new certificate; those up keep theirs. A pair that does not load or match is refused and
    /// the one in use stays. Connectors trust the CA, not the certificate: a renewed certificate
    /// under the same CA needs nothing on their side.
    public func reloadCertificate() throws {
        let context = try TLSFiles.serverContext(certificateFile: self.config.certificateFile, privateKeyFile: self.config.privateKeyFile)
        self.tls.withLockedValue { $0 = context }
        self.logger.notice("TLS certificate reloaded; new connections get it", metadata: ["certificate_file": "\(self.config.certificateFile)"])
    }

    /// `http://127.0.0.1:9464` (or https beyond loopback): where to scrape, if the admin listener runs.
    public var adminURL: String? {
        guard let admin = self.config.adminListen, let address = self.adminAddress else { return nil }
        return "\(AdminServer.isLoopback(admin.host) ? "http" : "https")://\(address.display)"
    }

    /// Where the admin listener (`/metrics`) is bound, if it is.
    public var adminAddress: SocketAddress? { self.admin.withLockedValue { $0 }?.address }

    /// `/readyz`: 200 `{"status":"ready"}` while this node should get traffic; else 503 with the
    /// reasons (`draining`, `not listening`, `store unavailable`; details go to the log, not to
    /// whoever asks: the probe needs no token).
    public func readiness() async -> APIResponse {
        let reasons = await self.notReadyReasons()
        guard reasons.isEmpty else { return Self.notReady(reasons) }
        return APIResponse(status: .ok, body: Data("{\"status\":\"ready\"}\n".utf8), errorCode: nil)
    }

    /// Why this node should not get traffic now (none: ready). The store gets 2 s to answer: a
    /// probe must not wait out `operation_timeout`.
    func notReadyReasons() async -> [String] {
        var reasons: [String] = []
        if self.draining.withLockedValue({ $0 }) { reasons.append("draining") }
        if self.serverChannel.get()?.isActive != true { reasons.append("not listening") }
        do {
            try await withDeadline(.seconds(2)) { [store = self.control.store] in try await store.ping() }
        } catch {
            self.logger.warning("readiness: the store did not answer", metadata: ["error": "\(error)"])
            reasons.append("store unavailable")
        }
        return reasons
    }

    /// `/metrics`: the figures that describe now are read at the scrape (tunnels, sessions,
    /// requests, readiness), each store read within 2 s so that a scrape of a node whose database
    /// is down still answers in time (with `relay_store_up 0`); the counters and histograms are
    /// kept as events happen.
    public func scrapeMetrics() async -> [UInt8] {
        let tunnels = self.registry.clusterIDs.map { self.registry.tunnels(cluster: $0).count }
        async let reasons = self.notReadyReasons()
        let now = self.control.now
        let open = try? await withDeadline(.seconds(2)) { [store = self.control.store] in
            try await store.requests(clusterID: nil, states: [.pending, .approved])
        }
        let requests = open.map { open in
            ["pending": open.filter { $0.state == .pending }.count, "approved": open.filter { $0.state == .approved && $0.isActive(at: now) }.count]
        }
        let notReady = await reasons
        self.control.metrics.record(
            .init(
                tunnels: tunnels.reduce(0, +), clusters: tunnels.filter { $0 > 0 }.count, sessions: self.sessions.all.count,
                requests: requests, ready: notReady.isEmpty, storeAvailable: !notReady.contains("store unavailable")))
        return self.control.metrics.exposition()
    }

    static func notReady(_ reasons: [String]) -> APIResponse {
        let body = (try? JSONSerialization.data(withJSONObject: ["status": "not_ready", "reasons": reasons], options: [.sortedKeys])) ?? Data()
        return APIResponse(status: .serviceUnavailable, body: body + Data("\n".utf8), errorCode: "not_ready")
    }

    /// Why a draining node closes sessions and tunnels (1012), as relayctl and connectors show it.
    static let drainingReason = "the relay node is draining (restart or upgrade); reconnect"

    /// Drains, then closes (docs/PROTOCOL.md "Draining"): stops accepting; every session gets an
    /// HTTP/2 GOAWAY (relayctl opens its next requests on a new connection) and its requests in
    /// flight `drain_timeout` to finish, then closes with 1012; every tunnel gets a GOAWAY too and
    /// carries those requests to the end, then closes with 1012 (connectors redial, spread).
    public func stop() async throws {
        try await self.serverChannel.get()?.close()
        self.draining.withLockedValue { $0 = true }
        let reason = Self.drainingReason
        let tunnels = self.registry.clusterIDs.flatMap { self.registry.tunnels(cluster: $0) }
        for tunnel in tunnels {
            tunnel.channel.eventLoop.execute { TunnelPipeline.sayGoingAway(tunnel.channel) }
        }
        let sessions = self.sessions.all
        if !sessions.isEmpty {
            self.logger.notice("draining sessions", metadata: ["sessions": "\(sessions.count)", "drain_timeout_ms": "\(self.config.drainTimeoutMilliseconds)"])
        }
        let drain = TimeAmount.milliseconds(self.config.drainTimeoutMilliseconds)
        for session in sessions {
            session.drain(code: WireCloseCode.relayDraining, reason: reason, within: drain, deadlines: self.drainDeadlines)
        }
        // Each session closes once its streams end, at drain_timeout at the latest.
        for session in sessions { try? await session.channel.closeFuture.get() }
        let closing = self.registry.clusterIDs.flatMap { self.registry.tunnels(cluster: $0) }
        for tunnel in closing {
            tunnel.channel.triggerUserOutboundEvent(WebSocketCloseRequest(code: WireCloseCode.relayDraining, reason: reason), promise: nil)
            // A connector that reads nothing more cannot hold the stop: its socket is closed 5 s later.
            let cut = self.drainDeadlines.arm(tunnel.channel.eventLoop, .seconds(5)) { tunnel.channel.close(promise: nil) }
            tunnel.channel.closeFuture.whenComplete { _ in cut.cancel() }
        }
        for tunnel in closing { try? await tunnel.channel.closeFuture.get() }
        // Scraped through the drain; closed once it is over.
        await self.admin.withLockedValue { $0 }?.close()
    }

    public var closeFuture: EventLoopFuture<Void>? { self.serverChannel.get()?.closeFuture }

    // MARK: per connection

    private func initializeConnection(_ channel: Channel) throws {
        let sync = channel.pipeline.syncOperations
        let accepted = NIODeadline.now()
        let metrics = self.control.metrics
        try sync.addHandler(NIOSSLServerHandler(context: self.tls.withLockedValue { $0 }))
        let handshake = ConnectionHandshake()
        let slow = SlowRequestGuard(
            pace: RequestPace(grace: self.config.limits.handshakeTimeout, minBodyBytesPerSecond: self.config.connectionLimits.minBodyBytesPerSecond),
            logger: self.logger)
        let fallback = RelayHTTPHandler(
            router: self.router, console: self.console, tasks: self.tasks, handshake: handshake, idleTimeout: .milliseconds(self.config.apiIdleTimeoutMilliseconds),
            logger: self.logger, readiness: { [weak self] in await self?.readiness() ?? Self.notReady(["stopping"]) })
        // handshake_timeout: TLS and the websocket upgrade (or a first plain request) must come by
        // then, or the connection is closed.
        handshake.deadline = self.handshakeDeadlines.arm(channel.eventLoop, self.config.limits.handshakeTimeout) {
            channel.close(promise: nil)
        }
        channel.closeFuture.whenComplete { _ in handshake.deadline?.cancel() }
        let gate = self.gate
        let tasks = self.tasks
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: self.config.limits.maxWebSocketFrameSize,
            automaticErrorHandling: true,
            shouldUpgrade: { channel, head in
                // The client has done its part; the time the relay takes to decide is not its fault.
                handshake.deadline?.cancel()
                let source = channel.remoteAddress?.ipAddress
                let id = RequestID.accepting(head.headers.first(name: RequestID.header)) ?? RequestID.generate()
                handshake.requestID = id
                return tasks.submit(on: channel.eventLoop) {
                    await RequestID.$current.withValue(id) { await gate.decide(head, source: source) }
                }.map { decision -> HTTPHeaders? in
                    handshake.decision = decision
                    if case .refuse = decision { return nil }  // not upgraded: RelayHTTPHandler answers why
                    var headers = HTTPHeaders()
                    headers.add(name: "sec-websocket-protocol", value: WireProtocolVersion.current)
                    headers.add(name: RequestID.header, value: id)
                    if case .session(let plan) = decision {
                        // What the session runs under, for relayctl's banner.
                        headers.add(name: WireHeader.role, value: plan.grant.role.rawValue)
                        headers.add(name: WireHeader.accessRequest, value: String(plan.grant.request.id))
                        if let expires = plan.grant.request.expiresAt {
                            headers.add(name: WireHeader.accessExpires, value: String(Int64(expires.timeIntervalSince1970)))
                        }
                        if let mode = plan.customerMode { headers.add(name: WireHeader.privacyMode, value: mode.rawValue) }
                    }
                    return headers
                }
            },
            upgradePipelineHandler: { channel, head in
                channel.eventLoop.makeCompletedFuture {
                    handshake.deadline?.cancel()
                    // The HTTP codecs are gone; the fallback handler must go too, before tunnel bytes flow.
                    channel.pipeline.syncOperations.removeHandler(fallback).whenComplete { _ in }
                    channel.pipeline.syncOperations.removeHandler(slow).whenComplete { _ in }
                    switch handshake.decision {
                    case .tunnel: metrics.handshake(link: "tunnel", took: .now() - accepted)
                    case .session: metrics.handshake(link: "session", took: .now() - accepted)
                    case .refuse, nil: break
                    }
                    switch handshake.decision {
                    case .tunnel(let cluster, let node):
                        try self.acceptTunnel(
                            channel, cluster: cluster, node: node, dialedAs: head.headers.first(name: "host") ?? "", requestID: handshake.requestID)
                    case .session(let plan):
                        try self.acceptSession(channel, plan: plan, requestID: handshake.requestID)
                    case .refuse, nil:
                        channel.close(promise: nil)
                    }
                }
            })
        try sync.configureHTTPServerPipeline(
            withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }),
            withErrorHandling: true)
        try sync.addHandler(slow)
        try sync.addHandler(fallback)
    }

    /// - Parameter dialedAs: the Host the connector dialed: it keeps one tunnel per relay URL.
    private func acceptTunnel(_ channel: Channel, cluster: String, node: String, dialedAs: String, requestID: String?) throws {
        let peerClose = NIOLockedValueBox<WebSocketPeerClosed?>(nil)
        let peerSettings = PeerSettings()
        let multiplexer = try TunnelPipeline.configure(
            channel: channel, websocketRole: .server, http2Mode: .client, link: .tunnel, limits: self.config.limits,
            logger: self.logger, onPeerClosed: { close in peerClose.withLockedValue { $0 = $0 ?? close } }, peerSettings: peerSettings,
            inboundStreamInitializer: TunnelPipeline.refuseInboundStreams)
        // The control stream: the connector says at once which sessions the customer ended.
        let logger = self.logger
        let controlStream = ControlStreamHandler(
            role: .opener, loop: channel.eventLoop,
            onClosed: { _ in
                // Without it the tunnel still works: the connector refuses what it ended, and says why.
                if channel.isActive {
                    logger.warning("control stream closed; session ends are no longer pushed on this tunnel", metadata: ["cluster": "\(cluster)", "node": "\(node)"])
                }
            }
        ) { [sessions = self.sessions, registry = self.registry, control = self.control, tasks = self.tasks] event in
            ConnectorEvents.apply(event, cluster: cluster, node: node, sessions: sessions, registry: registry, control: control, tasks: tasks, loop: channel.eventLoop)
        }
        multiplexer.createStreamChannel(promise: nil) { stream in
            stream.eventLoop.makeCompletedFuture { try stream.pipeline.syncOperations.addHandler(controlStream) }
        }
        let tunnel = TunnelHandle(
            id: ObjectIdentifier(channel), cluster: cluster, node: node, channel: channel, multiplexer: multiplexer,
            connectedAt: .now(), control: controlStream, dialedAs: dialedAs, peerSettings: peerSettings)
        for older in self.registry.register(tunnel) {
            // Half-open, or from a connector that restarted: the newer tunnel is the live one.
            logger.notice(
                "a newer tunnel from the same node replaces the older one", metadata: ["cluster": "\(cluster)", "node": "\(node)", "dialed": "\(dialedAs)"])
            older.channel.triggerUserOutboundEvent(
                WebSocketCloseRequest(code: WireCloseCode.replaced, reason: "a newer tunnel from node \(node) replaced this one"), promise: nil)
        }
        let control = self.control
        control.metrics.tunnelUp(cluster: cluster, node: node)
        control.reconcileNow()  // the reconciler tells connectors only of ends it saw in force: let it look now
        logger.info(
            "tunnel up",
            metadata: ["cluster": "\(cluster)", "node": "\(node)", "peer": "\(channel.remoteAddress?.display ?? "?")", "request_id": "\(requestID ?? "-")"])
        _ = self.tasks.submit(on: channel.eventLoop) {
            await RequestID.$current.withValue(requestID) {
                await control.audit(actor: "node:\(cluster)/\(node)", "tunnel.open", cluster: cluster, subject: node)
            }
        }
        channel.closeFuture.whenComplete { _ in
            let close: WebSocketPeerClosed? = peerClose.withLockedValue { $0 }
            let how = close.map { "the connector closed it (\($0.why))" }
                ?? "the connection ended without a close from the connector (stopped abruptly, host down or network lost)"
            self.registry.unregister(tunnel, how: how)
            logger.info("tunnel down", metadata: ["cluster": "\(cluster)", "node": "\(node)", "how": "\(how)"])
        }
    }

    private func acceptSession(_ channel: Channel, plan: SessionPlan, requestID: String?) throws {
        if self.draining.withLockedValue({ $0 }) {
            // Upgraded after the drain began: relayctl dials again, elsewhere or after the restart.
            _ = try TunnelPipeline.configure(
                channel: channel, websocketRole: .server, http2Mode: .server, link: .session, limits: self.config.limits,
                inboundStreamInitializer: TunnelPipeline.refuseInboundStreams)
            channel.triggerUserOutboundEvent(
                WebSocketCloseRequest(code: WireCloseCode.relayDraining, reason: Self.drainingReason),
                promise: nil)
            return
        }
        let record = SessionRecord(
            id: randomIdentifier(), expert: plan.expert.name, clusterID: plan.cluster, node: plan.node, component: plan.component,
            requestID: plan.grant.request.id, role: plan.grant.role, relayNode: self.config.nodeName, startedAt: self.control.now)
        let live = LiveSession(channel: channel, record: record)
        let opener = TunnelStreamOpener(
            session: record, accessExpiresAt: plan.grant.request.expiresAt ?? self.control.now, registry: self.registry,
            clientAddress: channel.remoteAddress?.ipAddress, headerBudget: .tunnel(self.config.limits))
        let logger = self.logger
        let control = self.control
        let limits = self.config.limits
        _ = try TunnelPipeline.configure(
            channel: channel, websocketRole: .server, http2Mode: .server, link: .session, limits: limits, logger: logger,
            drains: true,
            onFlood: { reason in
                // This expert's session alone: the tunnel and everyone else's sessions go on.
                logger.notice("closing a flooding session", metadata: record.metadata.merging(["reason": "\(reason)"]) { $1 })
                live.end(code: WireCloseCode.flood, reason: reason)
            }
        ) { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandlers([
                    ExtendedConnectServerAdapter(),
                    HTTP2FramePayloadToHTTP1ServerCodec(),
                    ProxyServerHandler(
                        opener: { head, upstream in
                            if head.opensWebSocket { live.holdsWebSocket(stream) }
                            return opener.open(head, upstream)
                        },
                        // What relayctl accepts; a larger head would fail this session's link. Request
                        // heads are held to the tunnel's budget by the opener (with what it adds).
                        limits: .init(
                            requestTrailers: .tunnel(limits), responseHeaders: .session(limits), drainLimit: limits.refusedBodyDrainLimit),
                        onComplete: { exchange in
                        live.count(exchange)
                        control.metrics.stream(exchange)
                        if let reason = exchange.responseHeaders.first(name: WireHeader.sessionEnded) {
                            // The customer's connector ended this session: say so and close it.
                            // After the refusal itself is written (this runs just before), so the engineer sees both.
                            channel.eventLoop.execute {
                                live.end(code: WireCloseCode.endedByCustomer, reason: "ended by the customer's connector: \(reason)")
                            }
                        }
                        // One line per request, with the ID the customer's audit log has for it too.
                        logger.info(
                            "session request",
                            metadata: record.metadata.merging([
                                "request_id": "\(exchange.requestID ?? "-")", "method": "\(exchange.head.method.rawValue)",
                                "status": "\(exchange.status.map(String.init) ?? "-")", "bytes_in": "\(exchange.requestBodyBytes)",
                                "bytes_out": "\(exchange.responseBodyBytes)", "duration_ms": "\(exchange.duration.nanoseconds / 1_000_000)",
                                "refused": "\(exchange.refusalCode ?? "-")",
                            ]) { $1 })
                    }),
                ])
            }
        }
        self.sessions.add(live)
        live.started.withLockedValue {
            $0 = self.tasks.submit(on: channel.eventLoop) { await RequestID.$current.withValue(requestID) { await control.sessionStarted(record) } }
        }
        logger.info("session opened", metadata: record.metadata.merging(["request_id": "\(requestID ?? "-")"]) { $1 })
        channel.closeFuture.whenComplete { _ in
            self.sessions.remove(record.id)
            let final = live.finish(at: control.now)
            // The customer's connectors learn at once, with the reason, whoever ended it.
            self.registry.tell(
                cluster: final.clusterID,
                [ControlEvent(
                    event: ControlEvent.sessionEnded, session: final.id, accessRequest: final.requestID, expert: final.expert,
                    reason: final.endReason ?? "closed")])
            let started = live.started.withLockedValue { $0 }
            _ = self.tasks.submit(on: channel.eventLoop) {
                try? await started?.get()
                await control.sessionEnded(final)
            }
            logger.info("session closed", metadata: final.metadata.merging(["reason": "\(final.endReason ?? "-")"]) { $1 })
        }
    }
}

/// Holds the listening channel once bound.
final class NIOLockedValueBoxChannel: Sendable {
    private let box = NIOLockedValueBox<Channel?>(nil)
    func set(_ channel: Channel) { self.box.withLockedValue { $0 = channel } }
    func get() -> Channel? { self.box.withLockedValue { $0 } }
}

/// 128 random bits as 32 hex digits: session and request IDs.
func randomIdentifier() -> String { SecureRandom.hex(16) }

/// The store as a service: it stops last; heartbeats kept in memory are written, then the
/// database closes once nothing writes to it.
struct StoreService: Service {
    let control: MissionControl

    func run() async throws {
        try? await gracefulShutdown()
        do {
            try await self.control.flushLiveness()
            try await self.control.flushUnwritten()
        } catch {
            self.control.logger.error("cannot write what is kept in memory before closing the store", metadata: ["error": "\(error)"])
        }
        try await self.control.store.close()
    }
}
