import NIOCore
import NIOHTTP1

/// The next-hop half of a proxy hop: sits in the channel that `UpstreamOpener` opens (a TCP connection
/// to a component, or an HTTP/2 stream in a tunnel), writes the request the `ProxyServerHandler`
/// forwards and hands the response back. Reads only while the client side is writable.
public final class ProxyUpstreamHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = HTTPClientResponsePart
    public typealias OutboundIn = HTTPClientRequestPart
    public typealias OutboundOut = HTTPClientRequestPart

    private let server: ProxyServerHandler
    private let serverLoop: EventLoop
    /// The event loop of the client-facing half: openers may complete their futures on it.
    public var downstreamEventLoop: EventLoop { self.serverLoop }
    private var loop: EventLoop?
    private var context: ChannelHandlerContext?
    private var downstreamWritable = true
    private var pendingRead = false
    private var requestEnded = false
    private var responseEnded = false
    private var lastError: Error?
    private var closedEarly = false
    private var responseStarted = false

    /// What happens to the channel once request and response are complete.
    public enum Completion: Sendable {
        /// Close it: a one-off TCP connection.
        case close
        /// Leave it: an HTTP/2 stream closes by itself on END_STREAM both ways. Closing it ourselves
        /// would send RST_STREAM, and peers count those (NIOHTTP2 drops a connection after 200
        /// resets in 30 s as a denial-of-service defence).
        case leaveOpen
        /// Hand a keep-alive HTTP/1.1 connection back for reuse (this handler removes itself first);
        /// a connection the exchange did not leave reusable is closed instead.
        case release(@Sendable (Channel) -> Void)
    }

    /// Set by the opener before the handler is added.
    public var whenDone = Completion.close
    /// Drop `x-relay-*` from the response head: set where the next hop is a component, which must
    /// not speak for the connector (a forged `x-relay-session-ended` would end the expert's session).
    public var stripsRelayOwnedResponseHeaders = false
    /// The next hop in words, for the engineer's error when it closes before answering
    /// (`component "ui"`, `the tunnel to cluster "demo"`).
    public var nextHop = "the next hop"
    /// Set by an opener that reused an idle kept-alive connection: opens a fresh connection for
    /// `upstream` (a new handler) and returns the head to send on it. A reused connection can close
    /// under the request, the next hop having just given up on it (its keep-alive timeout); a
    /// request with no body and no answer yet is then sent once more, on the fresh one.
    public var freshRetry: (@Sendable (_ upstream: ProxyUpstreamHandler) -> EventLoopFuture<HTTPRequestHead>)?
    private var reusable = false
    /// Set by the opener: the response head must come within `timeout` of the request's end, or
    /// the request fails with 504 `upstream_timeout` (the next hop accepted but never answered).
    public var responseDeadline: ResponseDeadline?
    /// Count the deadline from the request's head, not its end: a websocket's request never ends,
    /// but its upgrade must be answered in time.
    public var responseDeadlineFromHead = false
    /// Set by an opener that asked the next hop to upgrade (a component's websocket): an answer
    /// that is not the upgrade is not accepted as one (see `upgraded()`).
    public var expectsUpgrade = false
    private var upgradeAccepted = false
    private var armedDeadline: Deadlines.Armed?

    public struct ResponseDeadline: Sendable {
        public var deadlines: Deadlines
        public var timeout: TimeAmount
        /// Who failed to answer, for the message: `component "ui"`.
        public var what: String
        public init(deadlines: Deadlines, timeout: TimeAmount, what: String) {
            self.deadlines = deadlines
            self.timeout = timeout
            self.what = what
        }
    }

    init(server: ProxyServerHandler, serverLoop: EventLoop) {
        self.server = server
        self.serverLoop = serverLoop
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.armedDeadline?.cancel()
        self.context = nil
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.loop = context.eventLoop
        if self.closedEarly { context.close(promise: nil) }
    }

    // MARK: calls from the server half, hopped onto this channel's loop

    private func onOwnLoop(_ body: @escaping () -> Void) {
        guard let loop = self.loop else {
            body()
            return
        }
        if loop.inEventLoop { body() } else { loop.execute(body) }
    }

    private func onServerLoop(_ body: @escaping () -> Void) {
        if self.serverLoop.inEventLoop { body() } else { self.serverLoop.execute(body) }
    }

    func send(_ part: HTTPClientRequestPart) {
        self.onOwnLoop {
            guard let context = self.context else { return }
            switch part {
            case .head where self.responseDeadlineFromHead, .end where !self.responseDeadlineFromHead:
                if !self.responseStarted { self.armResponseDeadline(context: context) }
            default:
                break
            }
            if case .end = part { self.requestEnded = true }
            context.write(self.wrapOutboundOut(part), promise: nil)
            if self.requestEnded && self.responseEnded { self.done() }
        }
    }

    func flush() {
        self.onOwnLoop { self.context?.flush() }
    }

    /// The client side is gone or the answer is already out: drop this hop.
    func abort() {
        self.onOwnLoop {
            guard let context = self.context else {
                self.closedEarly = true
                return
            }
            context.close(promise: nil)
        }
    }

    func downstreamWritabilityChanged(_ writable: Bool) {
        self.onOwnLoop {
            self.downstreamWritable = writable
            if writable && self.pendingRead, let context = self.context {
                self.pendingRead = false
                context.read()
            }
        }
    }

    // MARK: channel events

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // After an error this connection is being closed: what its handlers still pass on (a
        // refused upgrade's 101, say) is not an answer.
        guard self.lastError == nil else { return }
        var part = self.unwrapInboundIn(data)
        switch part {
        case .head(var head):
            if self.expectsUpgrade && !self.upgradeAccepted && (200..<300).contains(head.status.code) {
                // A 2xx without the 101: the component did not switch protocols, and its HTTP/1
                // connection would read the websocket's bytes as requests. Never pass it as accepted.
                self.lastError = UpgradeNotTaken(what: self.nextHop, status: head.status.code)
                context.close(promise: nil)
                return
            }
            self.responseStarted = true
            self.armedDeadline?.cancel()
            self.reusable = head.isKeepAlive
            if self.stripsRelayOwnedResponseHeaders {
                head.headers.removeRelayOwned()
                part = .head(head)
            }
        case .body:
            break
        case .end:
            self.responseEnded = true
            // Reusable only if the whole request went out before the response ended.
            self.reusable = self.reusable && self.requestEnded
        }
        self.onServerLoop { self.server.upstreamResponse(part, from: self) }
        if self.requestEnded && self.responseEnded { self.done() }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        self.onServerLoop { self.server.upstreamFlush(from: self) }
        context.fireChannelReadComplete()
    }

    public func read(context: ChannelHandlerContext) {
        if self.downstreamWritable {
            context.read()
        } else {
            self.pendingRead = true
        }
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        self.onServerLoop { self.server.upstreamWritabilityChanged(writable, from: self) }
        context.fireChannelWritabilityChanged()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.armedDeadline?.cancel()
        let error = self.lastError
        self.onServerLoop { self.server.upstreamClosed(from: self, error: error) }
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.lastError = error
        context.close(promise: nil)
    }

    private func armResponseDeadline(context: ChannelHandlerContext) {
        guard let deadline = self.responseDeadline else { return }
        let channel = context.channel
        let loop = context.eventLoop
        self.armedDeadline = deadline.deadlines.arm(loop, deadline.timeout) {
            loop.execute {
                guard !self.responseStarted, self.context != nil else { return }
                self.lastError = UpstreamTimedOut(what: deadline.what, after: deadline.timeout)
                channel.close(promise: nil)
            }
        }
    }

    /// The next hop switched protocols: the head that follows stands for its `101`. Call on this
    /// channel's loop, before delivering that head.
    public func upgraded() { self.upgradeAccepted = true }

    /// Both directions are complete: this hop carries one request only.
    private func done() {
        guard let context = self.context else { return }
        context.flush()
        switch self.whenDone {
        case .leaveOpen:
            break
        case .close:
            context.close(promise: nil)
        case .release(let release):
            guard self.reusable, context.channel.isActive else {
                context.close(promise: nil)
                return
            }
            // Leave the pipeline once the HTTP decoder has finished the read that ended the response.
            let channel = context.channel
            context.eventLoop.execute {
                // A read this handler held back must not be lost, or the idle connection never reads again.
                if self.pendingRead {
                    self.pendingRead = false
                    context.read()
                }
                context.pipeline.syncOperations.removeHandler(context: context).whenComplete { result in
                    if case .success = result { release(channel) } else { channel.close(promise: nil) }
                }
            }
        }
    }
}

/// The next hop accepted the request but sent no response head in time.
public struct UpstreamTimedOut: Error, CustomStringConvertible {
    public var what: String
    public var after: TimeAmount
    public var description: String { "\(self.what) did not answer within \(self.after.nanoseconds / 1_000_000_000) s" }
}

/// The next hop answered a websocket upgrade with a success that was not the upgrade.
public struct UpgradeNotTaken: Error, CustomStringConvertible {
    public var what: String
    public var status: UInt
    public var description: String { "\(self.what) answered \(self.status) without switching to a websocket" }
}
