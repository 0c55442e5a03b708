import ConfigKit
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import RelayModel
import TunnelCore

/// What `relayctl session open` needs to reach one component of one cluster.
public struct SessionTarget: Sendable {
    public var relay: WebSocketURL
    /// More relay nodes to try, in order after `relay`, when a connection is refused or drops.
    public var otherRelays: [WebSocketURL] = []
    /// After the session was up: how long a request waits while the relay nodes cannot be reached
    /// (a node restarting after a drain) or have no tunnel yet, redialing, before it fails.
    public var reconnectWait: Duration = .seconds(30)
    public var token: Secret
    public var cluster: String
    public var component: String
    public var node: String?
    /// The role to run under (at most the request's); nil takes the request's role.
    public var role: AccessRole?
    /// nil: the system's trust store.
    public var caFile: String?
    public var limits: TunnelLimits

    public init(
        relay: WebSocketURL, token: Secret, cluster: String, component: String, node: String? = nil, role: AccessRole? = nil,
        caFile: String?, limits: TunnelLimits = TunnelLimits()
    ) {
        self.role = role
        self.relay = relay
        self.token = token
        self.cluster = cluster
        self.component = component
        self.node = node
        self.caFile = caFile
        self.limits = limits
    }
}

/// What the relay said a session runs under (its `101` answer).
public struct SessionGrantInfo: Sendable, Equatable {
    public var role: String
    public var accessRequest: Int64
    public var expiresAt: Date?
    /// The privacy mode the cluster's connectors last reported.
    public var customerMode: String?
}

/// The engineer's side of a session: one websocket + HTTP/2 connection to a relay node (redialed
/// when it drops or the node drains), and one HTTP/2 stream per local HTTP request.
public final class SessionClient: Sendable {
    public let target: SessionTarget
    private let group: EventLoopGroup
    private let tls: NIOSSLContext
    private let logger: Logger
    /// The connection in use (or being dialed), and once up its GOAWAY flag.
    private let connection = NIOLockedValueBox<(future: EventLoopFuture<RelayConnection>, goingAway: GoAwayFlag?)?>(nil)
    private let onEnded: (@Sendable (WebSocketPeerClosed) -> Void)?
    private let grantBox = NIOLockedValueBox<SessionGrantInfo?>(nil)
    /// Why the relay ended the session for good (4001-4004): later requests are refused with it
    /// instead of redialing (a relay node draining, 1012, is redialed).
    private let endedBox = NIOLockedValueBox<WebSocketPeerClosed?>(nil)
    /// Set once a connection was up: from then on a failed dial is retried for `reconnectWait`.
    private let wasConnected = NIOLockedValueBox(false)
    /// Which of the target's relay URLs the next dial tries first (the last one that answered).
    private let preferred = NIOLockedValueBox(0)

    /// One connection to a relay node; `goingAway` once the node sent GOAWAY (it is draining):
    /// requests in flight finish on it, new ones go to a new connection.
    final class RelayConnection: Sendable {
        let multiplexer: NIOHTTP2Handler.StreamMultiplexer
        let goingAway: GoAwayFlag
        /// Whether the relay takes websockets (extended CONNECT), from its first SETTINGS.
        let peerSettings: PeerSettings
        init(multiplexer: NIOHTTP2Handler.StreamMultiplexer, goingAway: GoAwayFlag, peerSettings: PeerSettings) {
            self.multiplexer = multiplexer
            self.goingAway = goingAway
            self.peerSettings = peerSettings
        }
    }

    /// Set once the relay node said GOAWAY on a connection, or the connection closed.
    final class GoAwayFlag: Sendable {
        private let box = NIOLockedValueBox(false)
        var isSet: Bool { self.box.withLockedValue { $0 } }
        func set() { self.box.withLockedValue { $0 = true } }
    }

    /// The role, access request and expiry of the last connection's grant.
    public var grant: SessionGrantInfo? { self.grantBox.withLockedValue { $0 } }

    /// - Parameter onEnded: the relay closed the session and said why (access revoked or expired,
    ///   session killed, relay node draining).
    public init(
        target: SessionTarget, group: EventLoopGroup, logger: Logger = Logger(label: "relayctl"),
        onEnded: (@Sendable (WebSocketPeerClosed) -> Void)? = nil
    ) throws {
        self.onEnded = onEnded
        self.target = target
        self.group = group
        self.tls = try TLSFiles.clientContext(caFile: target.caFile, setting: "--ca")
        self.logger = logger
    }

    /// Dials now, so that a bad token or an unknown cluster is reported before the listener starts.
    public func connect() async throws {
        _ = try await self.connected().get()
    }

    /// The live connection, or a new one if the last one closed or is draining.
    func connected() -> EventLoopFuture<RelayConnection> {
        self.connection.withLockedValue { current in
            if let current { return current.future }
            let future = self.dialWithRetries()
            current = (future, nil)
            future.whenComplete { result in
                switch result {
                case .success(let connection):
                    self.wasConnected.withLockedValue { $0 = true }
                    self.connection.withLockedValue { if $0?.future === future { $0?.goingAway = connection.goingAway } }
                    // A GOAWAY or a close may have come first (a node draining right as this dial landed).
                    if connection.goingAway.isSet { self.forgetConnection(whose: connection.goingAway) }
                case .failure:
                    self.connection.withLockedValue { if $0?.future === future { $0 = nil } }
                }
            }
            return future
        }
    }

    /// The next request dials anew, unless a newer connection already replaced this one.
    private func forgetConnection(whose goingAway: GoAwayFlag) {
        self.connection.withLockedValue { if $0?.goingAway === goingAway { $0 = nil } }
    }

    /// Every relay URL in turn, starting with the last that answered. Once the session was up, a
    /// node that cannot be reached or has no tunnel yet (503) is retried, every relay URL in turn,
    /// for `reconnectWait`: a node restarting after a drain costs the browser a slower request,
    /// not an error.
    private func dialWithRetries() -> EventLoopFuture<RelayConnection> {
        let urls = [self.target.relay] + self.target.otherRelays
        let first = self.preferred.withLockedValue { $0 }
        let retrying = self.wasConnected.withLockedValue { $0 }
        let deadline = NIODeadline.now() + .nanoseconds(Int64(self.target.reconnectWait.components.seconds) * 1_000_000_000)
        let loop = self.group.next()
        func attempt(_ number: Int) -> EventLoopFuture<RelayConnection> {
            let index = (first + number) % urls.count
            return self.dial(urls[index]).map { connection in
                self.preferred.withLockedValue { $0 = index }
                return connection
            }.flatMapError { error -> EventLoopFuture<RelayConnection> in
                let retryable: Bool
                switch (error as? DialError)?.kind {
                case .rejected(let status): retryable = status == 503
                case .timedOut, .failed: retryable = true
                case nil: retryable = false
                }
                guard retryable, self.endedRefusal == nil else { return loop.makeFailedFuture(error) }
                if number + 1 < urls.count { return attempt(number + 1) }  // every node once, at once
                guard retrying, NIODeadline.now() < deadline else { return loop.makeFailedFuture(error) }
                // Then the list again, paced: 250 ms, doubling to 2 s.
                let pause = TimeAmount.milliseconds(250 << min(Int64(number / urls.count), 3))
                self.logger.info("relay unreachable; retrying", metadata: ["error": "\(error)", "in": "\(pause)"])
                return loop.scheduleTask(in: pause) {}.futureResult.flatMap { attempt(number + 1) }
            }
        }
        return attempt(0)
    }

    private func dial(_ url: WebSocketURL) -> EventLoopFuture<RelayConnection> {
        var headers = HTTPHeaders()
        headers.add(name: "authorization", value: "Bearer \(self.target.token.value)")
        headers.add(name: WireHeader.cluster, value: self.target.cluster)
        headers.add(name: WireHeader.component, value: self.target.component)
        if let node = self.target.node { headers.add(name: WireHeader.node, value: node) }
        if let role = self.target.role { headers.add(name: WireHeader.role, value: role.rawValue) }
        let endedBox = self.endedBox
        let userOnEnded = self.onEnded
        let onEnded: @Sendable (WebSocketPeerClosed) -> Void = { closed in
            if closed.endsTheSession {
                endedBox.withLockedValue { $0 = $0 ?? closed }
            }
            userOnEnded?(closed)
        }
        let limits = self.target.limits
        let logger = self.logger
        let grantBox = self.grantBox
        let upgraded: @Sendable (HTTPHeaders) -> Void = { headers in
            guard let role = headers.first(name: WireHeader.role), let request = headers.first(name: WireHeader.accessRequest).flatMap(Int64.init)
            else { return }
            let expires = headers.first(name: WireHeader.accessExpires).flatMap(TimeInterval.init).map(Date.init(timeIntervalSince1970:))
            let info = SessionGrantInfo(
                role: role, accessRequest: request, expiresAt: expires, customerMode: headers.first(name: WireHeader.privacyMode))
            grantBox.withLockedValue { $0 = info }
        }
        let goingAway = GoAwayFlag()
        let onGoAway: @Sendable () -> Void = {
            guard !goingAway.isSet else { return }
            goingAway.set()
            logger.info("the relay node is draining; new requests go to a new connection", metadata: ["relay": "\(url)"])
            self.forgetConnection(whose: goingAway)
        }
        let peerSettings = PeerSettings()
        return WebSocketDialer.dial(
            url: url, headers: headers, tls: self.tls, limits: limits, group: self.group, upgraded: upgraded
        ) { channel in
            try TunnelPipeline.configure(
                channel: channel, websocketRole: .client, http2Mode: .client, link: .session, limits: limits, onPeerClosed: onEnded,
                onGoAway: onGoAway, peerSettings: peerSettings, inboundStreamInitializer: TunnelPipeline.refuseInboundStreams)
        }.map { channel, multiplexer in
            logger.info("connected to relay", metadata: ["relay": "\(url)"])
            let connection = RelayConnection(multiplexer: multiplexer, goingAway: goingAway, peerSettings: peerSettings)
            channel.closeFuture.whenComplete { _ in
                logger.info("relay connection closed; the next request redials")
                goingAway.set()
                self.forgetConnection(whose: goingAway)
            }
            return connection
        }
    }

    /// Opens one HTTP/2 stream to the relay for one local request.
    func open(_ head: HTTPRequestHead, _ upstream: ProxyUpstreamHandler) -> EventLoopFuture<HTTPRequestHead> {
        var head = head
        head.headers.removeRelayOwned()
        if let refusal = self.endedRefusal { return upstream.downstreamEventLoop.makeFailedFuture(refusal) }
        let endedBox = self.endedBox
        // A stream that ends before any answer (the relay refused it unprocessed as a drain's
        // GOAWAY crossed it, or the connection dropped) goes once more on a live connection;
        // ProxyServerHandler does so only for requests without a body and idempotent methods.
        let sent = head
        let webSocket = head.opensWebSocket
        upstream.freshRetry = { fresh in self.openStream(fresh, webSocket: webSocket, retries: 2).map { sent } }
        return self.openStream(upstream, webSocket: webSocket, retries: 2).map { head }.flatMapErrorThrowing { error in
            if let error = error as? DialError {
                switch error.kind {
                case .rejected(let status):
                    throw ProxyRefusal(
                        HTTPResponseStatus(statusCode: Int(status)), code: "relay_refused", message: error.relayMessage ?? error.message)
                case .timedOut, .failed:
                    throw ProxyRefusal.badGateway("cannot reach the relay: \(error.message)")
                }
            }
            if let refusal = Self.refusal(endedBox.withLockedValue({ $0 })) { throw refusal }
            throw error as? ProxyRefusal ?? ProxyRefusal.badGateway("the connection to the relay failed: \(describeConnectionError(error))")
        }
    }

    /// A new stream on the live connection. Runs on the connection's event loop, as its GOAWAY
    /// does: a connection that said GOAWAY before this point takes no new stream, and the request
    /// goes to a new connection (it has not been sent, so any method may go).
    private func openStream(_ upstream: ProxyUpstreamHandler, webSocket: Bool, retries: Int) -> EventLoopFuture<Void> {
        upstream.nextHop = "the relay connection"
        let loop = upstream.downstreamEventLoop
        return self.connected().flatMap { connection in
            if connection.goingAway.isSet && retries > 0 {
                self.forgetConnection(whose: connection.goingAway)
                return self.openStream(upstream, webSocket: webSocket, retries: retries - 1)
            }
            // A websocket waits for the relay's first SETTINGS: `:protocol` before it is an error.
            let ready = webSocket ? connection.peerSettings.extendedConnect(on: loop) : loop.makeSucceededFuture(.supported)
            return ready.flatMap { answer in
                if let refusal = PeerSettings.refusal(answer, peer: "the relay") { return loop.makeFailedFuture(refusal) }
                return TunnelPipeline.openRequestStream(on: connection.multiplexer, loop: loop, upstream: upstream)
            }
        }
    }

    /// The refusal for requests after the relay ended the session (nil while it has not).
    var endedRefusal: ProxyRefusal? { Self.refusal(self.endedBox.withLockedValue { $0 }) }

    private static func refusal(_ closed: WebSocketPeerClosed?) -> ProxyRefusal? {
        guard let closed else { return nil }
        return ProxyRefusal(stream: .sessionEnded, "the relay ended this session: \(closed.why); open a new one if you still have access")
    }
}

extension WebSocketPeerClosed {
    /// The relay ended the session for good (4xxx: access ended, killed, ended by the customer,
    /// flood). Any other close (a relay node shutting down, a dropped connection) is redialed by
    /// the next request.
    public var endsTheSession: Bool {
        if case .unknown(let code) = self.code { return (4000..<5000).contains(code) }
        return false
    }
}
