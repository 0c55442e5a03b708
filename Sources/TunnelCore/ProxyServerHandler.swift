import NIOCore
import NIOHTTP1

/// Opens the next hop for one request. It must add `upstream` to the pipeline of the channel it opens
/// (after an HTTP/1 client codec, or an HTTP/2-to-HTTP/1 client codec), and return the request head
/// to send there: rewritten as this hop requires. A `ProxyRefusal` failure is answered to the client.
public typealias UpstreamOpener = @Sendable (_ head: HTTPRequestHead, _ upstream: ProxyUpstreamHandler) -> EventLoopFuture<HTTPRequestHead>

/// Runs when the next hop has sent the whole response, before its end goes on to the client; the
/// end waits for the future (the connector makes its audit record durable here). A failure cuts
/// the stream instead of ending it cleanly.
public typealias ResponseEndGate = @Sendable (_ record: ProxyExchangeRecord) -> EventLoopFuture<Void>

/// What one proxied request did, reported when it ends (for sessions, audit and metrics).
public struct ProxyExchangeRecord: Sendable {
    public enum Outcome: Sendable, Equatable {
        case completed
        case refused(ProxyRefusal)
        case aborted(String)
    }
    public var head: HTTPRequestHead
    public var status: UInt?
    /// Headers of the response sent to the client (a refusal's too).
    public var responseHeaders: HTTPHeaders
    public var requestBodyBytes: Int
    public var responseBodyBytes: Int
    public var duration: TimeAmount
    public var outcome: Outcome
    /// The reused connection closed before answering, and the request was sent again on a fresh one.
    public var retried = false
    /// `x-relay-request-id` as sent on (or, at the connector, as received from) the tunnel.
    public var requestID: String?

    /// The refusal's code: this hop's, or the next hop's (`x-relay-error`).
    public var refusalCode: String? {
        if case .refused(let refusal) = self.outcome { return refusal.code }
        return self.responseHeaders.first(name: WireHeader.error)
    }
}

/// The client-facing half of a proxy hop, used at every hop of the product: relayctl's local listener,
/// the relay's expert streams and the connector's tunnel streams. It reads requests
/// (`HTTPServerRequestPart`), has `UpstreamOpener` open the next hop for each, and streams the
/// request and the response through, never buffering a body: it reads from one side only while the
/// other side is writable (swift-nio-ssh GlueHandler), so bytes in flight stay bounded by the
/// channels' watermarks and the HTTP/2 windows.
///
/// The two halves may live on different event loops; every call across is hopped onto the callee's
/// loop, and in order.
public final class ProxyServerHandler: ChannelDuplexHandler {
    public typealias InboundIn = HTTPServerRequestPart
    public typealias OutboundIn = HTTPServerResponsePart
    public typealias OutboundOut = HTTPServerResponsePart

    private enum Phase { case opening, forwarding, refused, responded }

    private final class Exchange {
        let head: HTTPRequestHead
        var upstream: ProxyUpstreamHandler
        /// Sent once more on a fresh connection after the reused one closed before answering.
        var retried = false
        var requestID: String?
        let started = NIODeadline.now()
        var phase = Phase.opening
        var buffered: [HTTPClientRequestPart] = []
        var requestEnded = false
        var responseStarted = false
        var responseEnded = false
        var status: UInt?
        var responseHeaders = HTTPHeaders()
        var requestBytes = 0
        /// Request body bytes read and dropped after the answer went out.
        var drainedBytes = 0
        var responseBytes = 0
        var outcome = ProxyExchangeRecord.Outcome.completed
        /// A websocket: its bytes go on only once the far end has accepted it (2xx), never onto a
        /// component's HTTP/1 connection before its `101`.
        let webSocket: Bool
        init(head: HTTPRequestHead, upstream: ProxyUpstreamHandler) {
            self.head = head
            self.upstream = upstream
            self.webSocket = head.opensWebSocket
        }

        /// Whether request body parts must wait (or, after a refusal of the websocket, be dropped).
        var holdsBody: Bool { self.webSocket && !self.accepted }
        var accepted: Bool { self.webSocket && self.responseStarted && (200..<300).contains(self.status ?? 0) }
    }

    private let opener: UpstreamOpener
    private let onComplete: (@Sendable (ProxyExchangeRecord) -> Void)?
    private let onBodyBytes: (@Sendable () -> Void)?
    private let responseEndGate: ResponseEndGate?
    private let limits: Limits
    private var context: ChannelHandlerContext?
    private var exchange: Exchange?
    private var upstreamWritable = true
    private var pendingRead = false

    /// What one hop lets through, so that nothing one request does can break the connection the
    /// next hop shares with others.
    public struct Limits: Sendable {
        /// Request heads that do not fit are refused with 431: the next hop's HTTP/2 link would
        /// otherwise fail as a whole on them.
        public var requestHeaders: HeaderBudget?
        /// Request trailers that do not fit are refused with 431 (nothing is added to trailers,
        /// so their budget is the link's own, without the headroom a head may need).
        public var requestTrailers: HeaderBudget?
        /// Response heads that do not fit are answered with 502 in place of the response; response
        /// trailers that do not fit cut the stream.
        public var responseHeaders: HeaderBudget?
        /// Request body read and dropped after a refusal; beyond it the stream is reset.
        public var drainLimit: Int

        public init(
            requestHeaders: HeaderBudget? = nil, requestTrailers: HeaderBudget? = nil, responseHeaders: HeaderBudget? = nil,
            drainLimit: Int = TunnelLimits().refusedBodyDrainLimit
        ) {
            self.requestHeaders = requestHeaders
            self.requestTrailers = requestTrailers
            self.responseHeaders = responseHeaders
            self.drainLimit = drainLimit
        }
    }

    /// - Parameter onBodyBytes: called whenever body bytes pass either way (the connector's idle
    ///   clock for websockets).
    public init(
        opener: @escaping UpstreamOpener, limits: Limits = Limits(), onComplete: (@Sendable (ProxyExchangeRecord) -> Void)? = nil,
        responseEndGate: ResponseEndGate? = nil, onBodyBytes: (@Sendable () -> Void)? = nil
    ) {
        self.opener = opener
        self.limits = limits
        self.onComplete = onComplete
        self.responseEndGate = responseEndGate
        self.onBodyBytes = onBodyBytes
    }

    public func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    public func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    // MARK: requests from the client

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            guard self.exchange == nil else {
                // HTTPServerPipelineHandler (HTTP/1) and one-request-per-stream (HTTP/2) rule this out.
                context.close(promise: nil)
                return
            }
            self.begin(context: context, head: head)
        case .body(let bytes):
            guard let exchange = self.exchange else { return }
            exchange.requestBytes += bytes.readableBytes
            if exchange.webSocket && exchange.responseStarted && !exchange.accepted && exchange.phase != .refused {
                // The far end refused the websocket: its bytes are drained like a refused body.
                exchange.drainedBytes += bytes.readableBytes
                if exchange.drainedBytes > self.limits.drainLimit { context.close(promise: nil) }
                return
            }
            if !exchange.holdsBody { self.onBodyBytes?() }
            if exchange.phase == .refused {
                // Refused here: read the rest and drop it, so the stream ends cleanly rather than
                // by a reset (the peer counts resets), up to a limit.
                exchange.drainedBytes += bytes.readableBytes
                if exchange.drainedBytes > self.limits.drainLimit { context.close(promise: nil) }
                return
            }
            self.forward(.body(.byteBuffer(bytes)), exchange)
        case .end(let trailers):
            guard let exchange = self.exchange else { return }
            exchange.requestEnded = true
            if let trailers, let budget = self.limits.requestTrailers, exchange.phase != .refused, !budget.admits(trailers) {
                // A header block the next hop's link cannot carry would fail that link as a whole.
                if exchange.responseStarted {
                    return self.cut(exchange, "the request's trailers are larger than the next hop carries")
                }
                return self.refuse(exchange, .requestTrailersTooLarge(budget))
            }
            self.forward(.end(trailers), exchange)
            if exchange.responseEnded {
                self.finish(exchange)
                self.readIfPending()
            }
        }
    }

    private func begin(context: ChannelHandlerContext, head: HTTPRequestHead) {
        let upstream = ProxyUpstreamHandler(server: self, serverLoop: context.eventLoop)
        let exchange = Exchange(head: head, upstream: upstream)
        self.exchange = exchange
        self.upstreamWritable = true
        if let budget = self.limits.requestHeaders, !budget.admits(head.headers, pseudoBytes: head.uri.utf8.count) {
            self.refuse(exchange, .requestHeadersTooLarge(budget))
            return
        }
        let loop = context.eventLoop
        self.opener(head, upstream).hop(to: loop).whenComplete { [self] result in
            guard self.exchange === exchange, exchange.phase == .opening else {
                // The client went away while the next hop was being opened.
                if case .success = result { exchange.upstream.abort() }
                return
            }
            switch result {
            case .success(var upstreamHead):
                upstreamHead.headers.removeHopByHop()
                exchange.requestID = upstreamHead.headers.first(name: WireHeader.requestID) ?? exchange.head.headers.first(name: WireHeader.requestID)
                exchange.phase = .forwarding
                exchange.upstream.send(.head(upstreamHead))
                if !exchange.holdsBody {
                    for part in exchange.buffered { exchange.upstream.send(part) }
                    exchange.buffered = []
                }
                exchange.upstream.flush()
                exchange.upstream.downstreamWritabilityChanged(self.context?.channel.isWritable ?? true)
                self.readIfPending()
            case .failure(let error):
                self.refuse(exchange, error as? ProxyRefusal ?? .badGateway("could not open the next hop: \(error)"))
            }
        }
    }

    private func forward(_ part: HTTPClientRequestPart, _ exchange: Exchange) {
        if exchange.holdsBody, exchange.phase != .opening {
            if !exchange.responseStarted {
                exchange.buffered.append(part)  // in order, until the answer
                return
            }
            if case .body = part { return }  // a refused websocket's bytes have nobody to go to
        }
        switch exchange.phase {
        case .opening: exchange.buffered.append(part)
        // The next hop answered early: the rest of the request still goes to it, which ends its
        // stream cleanly (or lets it drain or close its own connection).
        case .forwarding, .responded: exchange.upstream.send(part)
        case .refused: break  // drained in channelRead
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        if let exchange = self.exchange, exchange.phase == .forwarding || exchange.phase == .responded { exchange.upstream.flush() }
        context.fireChannelReadComplete()
    }

    // MARK: backpressure

    public func read(context: ChannelHandlerContext) {
        if self.mayRead {
            context.read()
        } else {
            self.pendingRead = true
        }
    }

    private var mayRead: Bool {
        guard let exchange = self.exchange else { return true }
        switch exchange.phase {
        case .opening: return false
        case .forwarding, .responded: return self.upstreamWritable && !(exchange.holdsBody && !exchange.responseStarted)
        case .refused: return true
        }
    }

    private func readIfPending() {
        guard self.pendingRead, self.mayRead, let context = self.context else { return }
        self.pendingRead = false
        context.read()
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if let exchange = self.exchange, exchange.phase == .forwarding {
            exchange.upstream.downstreamWritabilityChanged(context.channel.isWritable)
        }
        context.fireChannelWritabilityChanged()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        if let exchange = self.exchange {
            // Let go first: closing the next hop calls back at once when it shares this loop
            // (upstreamClosed), which must not take this client's leaving for the next hop's and
            // record a 502 that nobody was sent.
            self.exchange = nil
            // A refusal closes a connection whose request body was still coming: it stays a refusal.
            if case .completed = exchange.outcome, exchange.phase != .refused { exchange.outcome = .aborted("client closed the connection") }
            exchange.upstream.abort()
            self.report(exchange)
        }
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    // MARK: responses from the upstream half (always called on this handler's loop)

    func upstreamResponse(_ part: HTTPClientResponsePart, from upstream: ProxyUpstreamHandler) {
        guard let exchange = self.exchange, exchange.upstream === upstream, exchange.phase == .forwarding,
            let context = self.context
        else { return }
        switch part {
        case .head(var head):
            if let budget = self.limits.responseHeaders, !budget.admits(head.headers) {
                self.refuse(
                    exchange,
                    .badGateway("the response headers are larger than the tunnel carries (\(budget.listSize) bytes, \(budget.encodedSize) encoded)"))
                return
            }
            exchange.responseStarted = true
            exchange.status = head.status.code
            head.version = exchange.head.version
            head.headers.removeHopByHop()
            exchange.responseHeaders = head.headers
            context.write(self.wrapOutboundOut(.head(head)), promise: nil)
            if exchange.webSocket {
                // Accepted: what waited goes on; refused: only its end (the answer is not a websocket).
                let waiting = exchange.buffered
                exchange.buffered = []
                for part in waiting {
                    if exchange.accepted { exchange.upstream.send(part) } else if case .end = part { exchange.upstream.send(part) }
                }
                exchange.upstream.flush()
                self.readIfPending()
            }
        case .body(let bytes):
            exchange.responseBytes += bytes.readableBytes
            self.onBodyBytes?()
            context.write(self.wrapOutboundOut(.body(.byteBuffer(bytes))), promise: nil)
        case .end(let trailers):
            if let trailers, let budget = self.limits.responseHeaders, !budget.admits(trailers) {
                // The head and body are out: cutting the stream is the only signal left, and the
                // link the stream shares with others is spared a header block it cannot carry.
                return self.cut(
                    exchange,
                    "the response trailers are larger than the next link carries (\(budget.listSize) bytes, \(budget.encodedSize) encoded)")
            }
            if let gate = self.responseEndGate {
                self.endAfterGate(gate, exchange, trailers, context: context)
                return
            }
            exchange.responseEnded = true
            exchange.phase = .responded
            // Settle the exchange before writing: on an HTTP/2 stream, writing END_STREAM can close
            // the channel re-entrantly, and channelInactive must then see nothing left to abort.
            if exchange.requestEnded { self.finish(exchange) }
            self.writeEnd(context: context, trailers, closing: exchange.head.closesAfterResponse)
            self.readIfPending()
        }
    }

    private func endAfterGate(_ gate: ResponseEndGate, _ exchange: Exchange, _ trailers: HTTPHeaders?, context: ChannelHandlerContext) {
        exchange.phase = .responded  // nothing more comes from upstream; reads may go on
        gate(self.record(exchange)).hop(to: context.eventLoop).whenComplete { [self] result in
            guard self.exchange === exchange, let context = self.context else { return }
            switch result {
            case .success:
                exchange.responseEnded = true
                if exchange.requestEnded { self.finish(exchange) }
                self.writeEnd(context: context, trailers, closing: exchange.head.closesAfterResponse)
                self.readIfPending()
            case .failure(let error):
                exchange.outcome = .aborted("response end held back: \(error)")
                self.report(exchange)
                self.exchange = nil
                context.close(promise: nil)
            }
        }
    }

    func upstreamFlush(from upstream: ProxyUpstreamHandler) {
        guard self.exchange?.upstream === upstream else { return }
        self.context?.flush()
    }

    func upstreamWritabilityChanged(_ writable: Bool, from upstream: ProxyUpstreamHandler) {
        guard self.exchange?.upstream === upstream else { return }
        self.upstreamWritable = writable
        self.readIfPending()
    }

    func upstreamClosed(from upstream: ProxyUpstreamHandler, error: Error?) {
        guard let exchange = self.exchange, exchange.upstream === upstream else { return }
        if exchange.responseEnded || exchange.phase == .responded {
            // The whole response is in (its end may still wait for the audit gate): the next hop
            // going away now (a component that sent bytes past its response, say) changes nothing,
            // but a request body still coming is drained here.
            if !exchange.requestEnded && exchange.phase == .responded {
                exchange.phase = .refused
                self.readIfPending()
            }
            return
        }
        if exchange.responseStarted {
            // Part of the response is out: the only honest signal left is to cut this stream.
            self.cut(exchange, "upstream closed mid-response: \(describe(error))")
        } else if let timedOut = error as? UpstreamTimedOut {
            // Never retried: the next hop has the request and is still working on it, or stuck.
            self.refuse(exchange, ProxyRefusal(stream: .upstreamTimeout, "\(timedOut); it may be busy or stuck"))
        } else if let retry = upstream.freshRetry, !exchange.retried, exchange.requestEnded, exchange.requestBytes == 0,
            exchange.head.method.isIdempotent
        {
            self.retry(exchange, with: retry)
        } else {
            self.refuse(exchange, .badGateway("\(upstream.nextHop) closed before answering: \(describe(error))"))
        }
    }

    /// Sends the request again on a fresh connection: it has no body and nothing of the answer
    /// came, so nothing is lost or done twice by an idempotent method.
    private func retry(_ exchange: Exchange, with open: @Sendable (ProxyUpstreamHandler) -> EventLoopFuture<HTTPRequestHead>) {
        guard let context = self.context else { return }
        let failed = exchange.upstream.nextHop
        let fresh = ProxyUpstreamHandler(server: self, serverLoop: context.eventLoop)
        exchange.retried = true
        exchange.upstream = fresh
        open(fresh).hop(to: context.eventLoop).whenComplete { [self] result in
            guard self.exchange === exchange, exchange.upstream === fresh else {
                if case .success = result { fresh.abort() }
                return
            }
            switch result {
            case .success(var head):
                head.headers.removeHopByHop()
                fresh.send(.head(head))
                fresh.send(.end(nil))
                fresh.flush()
                fresh.downstreamWritabilityChanged(self.context?.channel.isWritable ?? true)
            case .failure(let error):
                self.refuse(exchange, error as? ProxyRefusal ?? .badGateway("\(failed) closed before answering, and a fresh connection failed: \(error)"))
            }
        }
    }

    // MARK: ending an exchange

    /// Ends the exchange by closing the client's connection or stream (an HTTP/2 reset): part of
    /// the response is out, so no answer can say what went wrong.
    private func cut(_ exchange: Exchange, _ why: String) {
        exchange.outcome = .aborted(why)
        self.report(exchange)
        // Let go first: aborting the next hop may call back at once (upstreamClosed).
        self.exchange = nil
        exchange.upstream.abort()
        self.context?.close(promise: nil)
    }

    private func refuse(_ exchange: Exchange, _ refusal: ProxyRefusal) {
        guard let context = self.context else { return }
        exchange.phase = .refused
        exchange.buffered = []
        exchange.responseStarted = true
        exchange.responseEnded = true
        exchange.status = refusal.status.code
        exchange.outcome = .refused(refusal)
        // After the state above: closing the next hop can call back (upstreamClosed) at once.
        exchange.upstream.abort()
        let body = refusal.body(allocator: context.channel.allocator)
        let head = refusal.responseHead(version: exchange.head.version, bodyLength: body.readableBytes)
        exchange.responseHeaders = head.headers
        if exchange.requestEnded { self.finish(exchange) }  // before the writes, as in upstreamResponse
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        // The rest of a refused upload is drained (see channelRead), up to `limits.drainLimit`.
        self.writeEnd(context: context, nil, closing: exchange.head.closesAfterResponse)
        self.readIfPending()
    }

    /// Ends the response; for HTTP/1.0 and `Connection: close` clients the end of the body is the
    /// end of the connection.
    private func writeEnd(context: ChannelHandlerContext, _ trailers: HTTPHeaders?, closing: Bool) {
        let written = context.writeAndFlush(self.wrapOutboundOut(.end(trailers)))
        if closing { written.whenComplete { _ in context.close(promise: nil) } }
    }

    /// Both directions are complete: report and get ready for the next request (HTTP/1 keep-alive).
    private func finish(_ exchange: Exchange) {
        guard self.exchange === exchange else { return }
        self.report(exchange)
        self.exchange = nil
        self.upstreamWritable = true
    }

    private func report(_ exchange: Exchange) {
        self.onComplete?(self.record(exchange))
    }

    private func record(_ exchange: Exchange) -> ProxyExchangeRecord {
        ProxyExchangeRecord(
            head: exchange.head, status: exchange.status, responseHeaders: exchange.responseHeaders, requestBodyBytes: exchange.requestBytes,
            responseBodyBytes: exchange.responseBytes, duration: .now() - exchange.started, outcome: exchange.outcome, retried: exchange.retried,
            requestID: exchange.requestID ?? exchange.head.headers.first(name: WireHeader.requestID))
    }
}

extension HTTPMethod {
    /// RFC 9110 9.2.2: sending it twice has the effect of sending it once.
    var isIdempotent: Bool {
        switch self {
        case .GET, .HEAD, .OPTIONS, .TRACE, .PUT, .DELETE: true
        default: false
        }
    }
}

extension HTTPRequestHead {
    /// HTTP/1.0 and `Connection: close` clients: the end of the response is the end of the
    /// connection. An HTTP/2 stream ends by END_STREAM both ways instead; closing it early would
    /// reset it (and peers count resets).
    var closesAfterResponse: Bool { self.version.major < 2 && !self.isKeepAlive }
}

private func describe(_ error: Error?) -> String {
    guard let error else { return "connection closed" }
    return String(describing: error)
}

extension NIODeadline {
    static func - (lhs: NIODeadline, rhs: NIODeadline) -> TimeAmount {
        .nanoseconds(Int64(lhs.uptimeNanoseconds) - Int64(rhs.uptimeNanoseconds))
    }
}
