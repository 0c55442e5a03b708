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

/// The engineer's side of a session: one websocket + HTTP/2 connection to the relay (redialed when
/// it drops), and one HTTP/2 stream per local HTTP request.
public final class SessionClient: Sendable {
    public let target: SessionTarget
    private let group: EventLoopGroup
    private let tls: NIOSSLContext
    private let logger: Logger
    private let connection = NIOLockedValueBox<EventLoopFuture<NIOHTTP2Handler.StreamMultiplexer>?>(nil)
    private let onEnded: (@Sendable (WebSocketPeerClosed) -> Void)?
    private let grantBox = NIOLockedValueBox<SessionGrantInfo?>(nil)
    /// Why the relay ended the session for good (4001-4004): later requests are refused with it
    /// instead of redialing (a relay node shutting down, 1001, is redialed).
    private let endedBox = NIOLockedValueBox<WebSocketPeerClosed?>(nil)

    /// The role, access request and expiry of the last connection's grant.
    public var grant: SessionGrantInfo? { self.grantBox.withLockedValue { $0 } }

    /// - Parameter onEnded: the relay closed the session and said why (access revoked or expired,
    ///   session killed, relay shutting down).
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
        _ = try await self.multiplexer().get()
    }

    /// The live connection, or a new one if the last one closed.
    func multiplexer() -> EventLoopFuture<NIOHTTP2Handler.StreamMultiplexer> {
        self.connection.withLockedValue { current in
            if let current { return current }
            let future = self.dial()
            current = future
            future.whenComplete { result in
                switch result {
                case .success:
                    break
                case .failure:
                    self.connection.withLockedValue { if $0 === future { $0 = nil } }
                }
            }
            return future
        }
    }

    private func dial() -> EventLoopFuture<NIOHTTP2Handler.StreamMultiplexer> {
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
        return WebSocketDialer.dial(
            url: self.target.relay, headers: headers, tls: self.tls, limits: limits, group: self.group, upgraded: upgraded
        ) { channel in
            try TunnelPipeline.configure(
                channel: channel, websocketRole: .client, http2Mode: .client, link: .session, limits: limits, onPeerClosed: onEnded,
                inboundStreamInitializer: TunnelPipeline.refuseInboundStreams)
        }.map { channel, multiplexer in
            logger.info("connected to relay", metadata: ["relay": "\(self.target.relay)"])
            let future = self.connection.withLockedValue { $0 }
            channel.closeFuture.whenComplete { _ in
                logger.info("relay connection closed; the next request redials")
                self.connection.withLockedValue { if $0 === future { $0 = nil } }
            }
            return multiplexer
        }
    }

    /// Opens one HTTP/2 stream to the relay for one local request.
    func open(_ head: HTTPRequestHead, _ upstream: ProxyUpstreamHandler) -> EventLoopFuture<HTTPRequestHead> {
        var head = head
        head.headers.removeRelayOwned()
        if let refusal = self.endedRefusal { return upstream.downstreamEventLoop.makeFailedFuture(refusal) }
        let endedBox = self.endedBox
        return self.multiplexer().flatMap { multiplexer in
            // The connection future completes on the connection's own loop, as openRequestStream needs.
            TunnelPipeline.openRequestStream(on: multiplexer, loop: upstream.downstreamEventLoop, upstream: upstream).map { head }
        }.flatMapErrorThrowing { error in
            if let error = error as? DialError {
                switch error.kind {
                case .rejected(let status):
                    throw ProxyRefusal(
                        HTTPResponseStatus(statusCode: Int(status)), code: "relay_refused", message: error.message)
                case .timedOut, .failed:
                    throw ProxyRefusal.badGateway("cannot reach the relay: \(error.message)")
                }
            }
            if let refusal = Self.refusal(endedBox.withLockedValue({ $0 })) { throw refusal }
            throw error as? ProxyRefusal ?? ProxyRefusal.badGateway("the connection to the relay failed: \(describeConnectionError(error))")
        }
    }

    /// The refusal for requests after the relay ended the session (nil while it has not).
    var endedRefusal: ProxyRefusal? { Self.refusal(self.endedBox.withLockedValue { $0 }) }

    private static func refusal(_ closed: WebSocketPeerClosed?) -> ProxyRefusal? {
        guard let closed else { return nil }
        return ProxyRefusal(
            .forbidden, code: "session_ended",
            message: "the relay ended this session: \(closed.why); open a new one if you still have access")
    }
}

extension WebSocketPeerClosed {
    /// The close's reason as the relay said it, or its code when it gave none.
    public var why: String { self.reason.isEmpty ? "\(self.code)" : self.reason }

    /// The relay ended the session for good (4xxx: access ended, killed, ended by the customer,
    /// flood). Any other close (a relay node shutting down, a dropped connection) is redialed by
    /// the next request.
    public var endsTheSession: Bool {
        if case .unknown(let code) = self.code { return (4000..<5000).contains(code) }
        return false
    }
}
