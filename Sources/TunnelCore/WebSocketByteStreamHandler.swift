import NIOCore
import NIOSSL
import NIOWebSocket

/// Carries a byte stream (the HTTP/2 connection) in websocket binary messages.
///
/// Inbound: the payload of every binary or continuation frame is passed on as bytes, in order;
/// message boundaries carry no meaning. Outbound: bytes written between two flushes go out as
/// binary messages of at most `maxOutboundFrameSize` each (larger single writes are split into frames).
///
/// Protocol violations (text frames, reserved bits, a continuation with no message open, a new
/// message while one is open) close the tunnel with the matching RFC 6455 close code. Frames larger
/// than the decoder's limit are refused by `WebSocketFrameDecoder` (close code 1009).
public final class WebSocketByteStreamHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = WebSocketFrame
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = WebSocketFrame

    public enum Role: Sendable { case client, server }

    /// What inbound messages are. Production: a byte stream. `.echo`: each message (text or
    /// binary) is sent back whole, for conformance tests of this layer (Autobahn's cases); never
    /// used by the programs.
    public enum Messages: Sendable { case byteStream, echo(maxMessageSize: Int) }

    private enum State { case open, closeSent, closed }

    /// Space left in front of an outbound message so the frame encoder can write the header in place.
    private static let headerRoom = 14
    /// The largest write HTTP/2 makes at its default SETTINGS_MAX_FRAME_SIZE: a DATA frame's payload
    /// (its 9-byte header is a write of its own just before).
    private static let fullHTTP2FrameWrite = 16_384 + 9

    private let role: Role
    private let maxOutboundFrameSize: Int
    /// Pending bytes that leave without waiting for the flush: room is kept for one more write of
    /// a full HTTP/2 frame (16 KiB and its header), so a message rarely needs splitting.
    private let flushThreshold: Int
    private var state = State.open
    private var messageOpen = false
    private var pending: ByteBuffer?
    private var pendingPromise: EventLoopPromise<Void>?
    private let keepaliveInterval: TimeAmount?
    private let keepaliveTimeout: TimeAmount
    private var keepaliveTask: Scheduled<Void>?
    /// When the peer last sent a frame (the event loop's clock), and whether a ping went out since.
    private(set) var lastInbound = NIODeadline.uptimeNanoseconds(0)
    private var pinged = false
    /// When the unanswered ping was queued, and when it left (its write completed): the peer's
    /// time to answer counts from the latter, or from the former for a ping that cannot leave.
    private var pingQueuedAt: NIODeadline?
    private var pingSentAt: NIODeadline?
    /// When the keepalive timer was due: a tick that runs late means this side's loop stalled.
    private var tickDue = NIODeadline.uptimeNanoseconds(0)
    private var pongInFlight = false
    /// The code and reason a plain `close()` sends (1000 unless a `WebSocketClosePlan` said otherwise).
    private var plannedClose = WebSocketCloseRequest(code: 1000, reason: "")
    private let messages: Messages
    /// `.echo`: the message being received, and whether it is text.
    private var echoed: (text: Bool, bytes: ByteBuffer)?
    /// Between a read and its read-complete, flushes wait for the read-complete; otherwise for the
    /// end of the event loop's turn. Every flush is a frame, a TLS record and a write: the streams
    /// that flush in one turn (responses read from several components at once) share them.
    private var inRead = false
    private var flushScheduled = false

    /// - Parameters:
    ///   - keepaliveInterval: with no inbound frame for this long a ping is sent. `nil` turns keepalive off.
    ///   - keepaliveTimeout: with no inbound frame for this long (the pong included) the peer is
    ///     taken for gone (a half-open connection: it vanished without FIN or RST) and the socket
    ///     closes, without a close frame. Twice the interval by default.
    public init(
        role: Role, maxOutboundFrameSize: Int = 1 << 16, keepaliveInterval: TimeAmount? = nil, keepaliveTimeout: TimeAmount? = nil,
        messages: Messages = .byteStream
    ) {
        precondition(maxOutboundFrameSize > 0)
        self.messages = messages
        self.role = role
        self.maxOutboundFrameSize = maxOutboundFrameSize
        self.flushThreshold = max(maxOutboundFrameSize - Self.fullHTTP2FrameWrite, maxOutboundFrameSize / 2)
        self.keepaliveInterval = keepaliveInterval
        self.keepaliveTimeout = keepaliveTimeout ?? (keepaliveInterval.map { $0 * 2 } ?? .seconds(60))
    }

    // MARK: keepalive

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.startKeepalive(context: context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        self.startKeepalive(context: context)
        context.fireChannelActive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.keepaliveTask?.cancel()
        self.keepaliveTask = nil
        // Whatever was written and not yet sent goes now (a flush may be waiting for the turn's end).
        if self.pending != nil { self.flushNow(context: context) }
    }

    private func startKeepalive(context: ChannelHandlerContext) {
        guard let interval = self.keepaliveInterval, self.keepaliveTask == nil else { return }
        self.lastInbound = context.eventLoop.now
        self.checkKeepalive(context: context, at: self.lastInbound + interval)
    }

    /// One timer, re-armed at each check for the next moment that matters; frames only note the
    /// time they came (no timer work per frame).
    private func checkKeepalive(context: ChannelHandlerContext, at deadline: NIODeadline) {
        self.tickDue = deadline
        self.keepaliveTask = context.eventLoop.scheduleTask(deadline: deadline) { self.keepaliveTick(context: context) }
    }

    /// After `interval` of silence a ping; the peer is taken for gone only when that ping, once
    /// out, has had `keepaliveTimeout - interval` to be answered, judged by a tick that ran on
    /// time. A late tick means this side's loop was stalled (a paused VM, a starved process): the
    /// peer's answer may be unread in the socket, so reads run first and the tick comes again.
    private func keepaliveTick(context: ChannelHandlerContext) {
        guard self.state == .open, let interval = self.keepaliveInterval else { return }
        let now = context.eventLoop.now
        let window = self.keepaliveTimeout - interval
        if self.pinged, let queued = self.pingQueuedAt {
            let since = self.pingSentAt ?? queued
            guard now - since >= window else { return self.checkKeepalive(context: context, at: since + window) }
            let tolerance = TimeAmount.nanoseconds(min(TimeAmount.seconds(1).nanoseconds, window.nanoseconds / 2))
            if now - self.tickDue > tolerance { return self.checkKeepalive(context: context, at: now + tolerance) }
            // No close frame and no TLS goodbye: the peer is gone, and TLS would wait 5 s more for
            // its close_notify before letting the socket go.
            let seconds = self.keepaliveTimeout.nanoseconds / 1_000_000_000
            self.state = .closed
            context.fireErrorCaught(
                WebSocketByteStreamError(code: .goingAway, reason: "no frame from the peer for \(seconds) s (keepalive_timeout): taken for gone"))
            return Self.closeWithoutGoodbye(context)
        }
        guard now - self.lastInbound >= interval else { return self.checkKeepalive(context: context, at: self.lastInbound + interval) }
        self.pinged = true
        self.pingQueuedAt = now
        self.pingSentAt = nil
        let ping = WebSocketFrame(fin: true, opcode: .ping, maskKey: self.maskKey(), data: context.channel.allocator.buffer(string: "ka"))
        let sent = context.eventLoop.makePromise(of: Void.self)
        sent.futureResult.whenSuccess {
            // Still the same unanswered ping (no frame came meanwhile).
            if self.pinged && self.pingQueuedAt == now { self.pingSentAt = context.eventLoop.now }
        }
        context.writeAndFlush(self.wrapOutboundOut(ping), promise: sent)
        self.checkKeepalive(context: context, at: now + window)
    }

    /// Closes the socket under TLS (from the TLS handler's place in the pipeline), skipping its
    /// close_notify exchange.
    static func closeWithoutGoodbye(_ context: ChannelHandlerContext) {
        if let tls = try? context.pipeline.syncOperations.context(handlerType: NIOSSLHandler.self) {
            tls.close(promise: nil)
        } else {
            context.close(promise: nil)
        }
    }

    // MARK: inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = self.unwrapInboundIn(data)
        guard self.state != .closed else { return }
        self.inRead = true
        if self.keepaliveInterval != nil {
            self.lastInbound = context.eventLoop.now
            self.pinged = false
            self.pingQueuedAt = nil
            self.pingSentAt = nil
        }
        if frame.rsv1 || frame.rsv2 || frame.rsv3 {
            return self.fail(context: context, code: .protocolError, reason: "reserved bits set without an extension")
        }
        switch frame.opcode {
        case .binary:
            if self.messageOpen {
                return self.fail(context: context, code: .protocolError, reason: "new message before the previous one ended")
            }
            self.messageOpen = !frame.fin
            if case .echo = self.messages { self.echoed = (false, context.channel.allocator.buffer(capacity: frame.length)) }
            self.deliver(context: context, frame: frame)
        case .continuation:
            if !self.messageOpen {
                return self.fail(context: context, code: .protocolError, reason: "continuation frame with no message open")
            }
            self.messageOpen = !frame.fin
            self.deliver(context: context, frame: frame)
        case .text:
            guard case .echo = self.messages else {
                return self.fail(context: context, code: .unacceptableData, reason: "text frames are not part of the tunnel protocol")
            }
            if self.messageOpen {
                return self.fail(context: context, code: .protocolError, reason: "new message before the previous one ended")
            }
            self.messageOpen = !frame.fin
            self.echoed = (true, context.channel.allocator.buffer(capacity: frame.length))
            self.deliver(context: context, frame: frame)
        case .ping:
            guard frame.fin else {
                return self.fail(context: context, code: .protocolError, reason: "fragmented control frame")
            }
            // One pong in flight at most, and none while the peer is not reading what we send:
            // a peer that pings and never reads cannot make us queue pongs without bound.
            if self.state == .open, !self.pongInFlight, context.channel.isWritable {
                self.pongInFlight = true
                let pong = WebSocketFrame(fin: true, opcode: .pong, maskKey: self.maskKey(), data: frame.unmaskedData)
                context.writeAndFlush(self.wrapOutboundOut(pong)).whenComplete { _ in self.pongInFlight = false }
            }
        case .pong:
            break
        case .connectionClose:
            self.receivedClose(context: context, frame: frame)
        default:
            self.fail(context: context, code: .protocolError, reason: "unknown opcode")
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
        self.inRead = false
        if self.pending != nil { self.flushNow(context: context) }
    }

    private func deliver(context: ChannelHandlerContext, frame: WebSocketFrame) {
        var bytes = frame.data
        if let key = frame.maskKey { bytes = bytes.xorWebSocketMaskedCopy(key, allocator: context.channel.allocator) }
        if case .echo(let maxMessageSize) = self.messages {
            return self.echo(context: context, bytes: &bytes, fin: frame.fin, limit: maxMessageSize)
        }
        if bytes.readableBytes > 0 {
            context.fireChannelRead(self.wrapInboundOut(bytes))
        }
    }

    private func echo(context: ChannelHandlerContext, bytes: inout ByteBuffer, fin: Bool, limit: Int) {
        guard var message = self.echoed else { return }
        guard message.bytes.readableBytes + bytes.readableBytes <= limit else {
            return self.fail(context: context, code: .messageTooLarge, reason: "message larger than \(limit) bytes")
        }
        message.bytes.writeBuffer(&bytes)
        self.echoed = message
        guard fin else { return }
        self.echoed = nil
        if message.text, !message.bytes.readableBytesView.isValidUTF8 {
            return self.fail(context: context, code: .dataInconsistentWithMessage, reason: "text message is not valid UTF-8")
        }
        let frame = WebSocketFrame(fin: true, opcode: message.text ? .text : .binary, maskKey: self.maskKey(), data: message.bytes)
        context.writeAndFlush(self.wrapOutboundOut(frame), promise: nil)
    }

    private func receivedClose(context: ChannelHandlerContext, frame: WebSocketFrame) {
        switch self.state {
        case .open:
            if let problem = Self.closeProblem(frame) {
                return self.fail(context: context, code: problem.code, reason: problem.reason)
            }
            // Echo the peer's code, as RFC 6455 5.5.1 asks, then close the TCP connection.
            let closed = WebSocketPeerClosed(frame: frame)
            context.fireUserInboundEventTriggered(closed)
            self.state = .closeSent
            self.sendClose(context: context, code: closed.code).whenComplete { _ in context.close(promise: nil) }
        case .closeSent:
            context.fireUserInboundEventTriggered(WebSocketPeerClosed(frame: frame))
            self.state = .closed
            context.close(promise: nil)
        case .closed:
            break
        }
    }

    /// RFC 6455 7.4: a close frame's body is empty, or a code a peer may send (1000-1003,
    /// 1007-1011, IANA's 1012-1014 such as our 1012, 3000-4999) and a UTF-8 reason.
    static func closeProblem(_ frame: WebSocketFrame) -> (code: WebSocketErrorCode, reason: String)? {
        var data = frame.unmaskedData
        guard data.readableBytes != 0 else { return nil }
        guard let code = data.readInteger(as: UInt16.self) else { return (.protocolError, "a close frame with a one-byte body") }
        guard (1000...1003).contains(code) || (1007...1014).contains(code) || (3000...4999).contains(code) else {
            return (.protocolError, "close code \(code) may not be sent")
        }
        guard data.readableBytesView.isValidUTF8 else { return (.dataInconsistentWithMessage, "close reason is not valid UTF-8") }
        return nil
    }

    private func fail(context: ChannelHandlerContext, code: WebSocketErrorCode, reason: String) {
        context.fireErrorCaught(WebSocketByteStreamError(code: code, reason: reason))
        guard self.state == .open else {
            context.close(promise: nil)
            return
        }
        self.state = .closeSent
        self.sendClose(context: context, code: code).whenComplete { _ in context.close(promise: nil) }
    }

    // MARK: outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard self.state == .open else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        let bytes = self.unwrapOutboundIn(data)
        if self.pending == nil {
            var buffer = context.channel.allocator.buffer(capacity: Self.headerRoom + max(bytes.readableBytes, 1024))
            buffer.moveWriterIndex(forwardBy: Self.headerRoom)
            buffer.moveReaderIndex(forwardBy: Self.headerRoom)
            self.pending = buffer
        }
        var incoming = bytes
        self.pending!.writeBuffer(&incoming)
        if let promise {
            if let existing = self.pendingPromise { existing.futureResult.cascade(to: promise) } else { self.pendingPromise = promise }
        }
        // Bulk data leaves once a frame's worth is in, after a whole write: HTTP/2 writes a frame's
        // header and payload one after the other, so a frame ends where an HTTP/2 frame ends, and
        // the receiver's HTTP/2 parser gets whole frames (a header left at a frame's end made it copy
        // the next payload, about a third more CPU per GiB at the relay and at relayctl).
        if self.pending!.readableBytes >= self.flushThreshold { self.flushNow(context: context) }
    }

    public func flush(context: ChannelHandlerContext) {
        guard self.pending != nil else {
            context.flush()
            return
        }
        guard !self.inRead, !self.flushScheduled else { return }
        self.flushScheduled = true
        context.eventLoop.assumeIsolatedUnsafeUnchecked().execute {
            self.flushScheduled = false
            self.flushNow(context: context)
        }
    }

    private func flushNow(context: ChannelHandlerContext) {
        self.writePending(context: context)
        context.flush()
    }

    /// What is pending, as one binary message in frames of at most `maxOutboundFrameSize`.
    private func writePending(context: ChannelHandlerContext) {
        guard var message = self.pending else { return }
        let promise = self.pendingPromise
        self.pending = nil
        self.pendingPromise = nil
        var first = true
        while message.readableBytes > 0 {
            let size = min(message.readableBytes, self.maxOutboundFrameSize)
            let payload = size == message.readableBytes ? message : message.getSlice(at: message.readerIndex, length: size)!
            message.moveReaderIndex(forwardBy: size)
            let last = message.readableBytes == 0
            let frame = WebSocketFrame(
                fin: last, opcode: first ? .binary : .continuation, maskKey: self.maskKey(), data: payload)
            context.write(self.wrapOutboundOut(frame), promise: last ? promise : nil)
            first = false
        }
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all, self.state == .open, context.channel.isActive else {
            context.close(mode: mode, promise: promise)
            return
        }
        self.state = .closeSent
        self.sendClose(context: context, code: self.plannedClose.code, reason: self.plannedClose.reason).whenComplete { _ in
            context.close(mode: .all, promise: promise)
        }
    }

    /// `WebSocketCloseRequest` closes the connection with that code and reason (for example: the access
    /// request was revoked), so the peer can tell a person why.
    public func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if let plan = event as? WebSocketClosePlan {
            self.plannedClose = plan.close
            promise?.succeed()
            return
        }
        guard let request = event as? WebSocketCloseRequest else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        guard self.state == .open, context.channel.isActive else {
            context.close(promise: promise)
            return
        }
        self.state = .closeSent
        self.sendClose(context: context, code: request.code, reason: request.reason).whenComplete { _ in
            context.close(mode: .all, promise: promise)
        }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.state = .closed
        self.keepaliveTask?.cancel()
        self.keepaliveTask = nil
        self.pendingPromise?.fail(ChannelError.ioOnClosedChannel)
        self.pendingPromise = nil
        self.pending = nil
        context.fireChannelInactive()
    }

    /// Writes a close frame, first sending what is pending; the tunnel code travels in the payload.
    private func sendClose(context: ChannelHandlerContext, code: WebSocketErrorCode, reason: String = "") -> EventLoopFuture<Void> {
        if self.pending != nil { self.flushNow(context: context) }
        var data = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        data.write(webSocketErrorCode: code)
        data.writeString(WebSocketCloseRequest.truncated(reason))
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: self.maskKey(), data: data)
        return context.writeAndFlush(self.wrapOutboundOut(frame))
    }

    private func maskKey() -> WebSocketMaskingKey? {
        // RFC 6455 5.3: a client masks every frame, a server never does.
        self.role == .client ? WebSocketMaskingKey(SecureRandom.bytes(4)) : nil
    }
}

/// Ask `WebSocketByteStreamHandler` to close with a code and a reason a person can read
/// (`channel.triggerUserOutboundEvent`). Codes 4000-4999 are ours (docs/PROTOCOL.md).
public struct WebSocketCloseRequest: Sendable {
    public var code: WebSocketErrorCode
    public var reason: String

    public init(code: UInt16, reason: String) {
        self.code = WebSocketErrorCode(codeNumber: Int(code))
        self.reason = reason
    }

    /// A close frame's payload is at most 125 bytes: the reason is cut at 123, on a character boundary.
    static func truncated(_ reason: String) -> String {
        var out = ""
        var size = 0
        for character in reason {
            size += character.utf8.count
            if size > 123 { break }
            out.append(character)
        }
        return out
    }
}

/// Sets the code and reason `WebSocketByteStreamHandler` sends when the connection is later closed
/// by a handler that knows nothing of websockets (HTTP/2's graceful shutdown, for example)
/// (`channel.triggerUserOutboundEvent`).
public struct WebSocketClosePlan: Sendable {
    public var close: WebSocketCloseRequest

    public init(code: UInt16, reason: String) { self.close = WebSocketCloseRequest(code: code, reason: reason) }
}

/// Fired inbound when the peer's close frame arrives: its code and reason.
public struct WebSocketPeerClosed: Sendable, Equatable {
    public var code: WebSocketErrorCode
    public var reason: String

    init(frame: WebSocketFrame) {
        var data = frame.unmaskedData
        self.code = data.readWebSocketErrorCode() ?? .normalClosure
        self.reason = data.readString(length: data.readableBytes) ?? ""
    }

    /// The close's reason as the peer said it, or its code when it gave none.
    public var why: String { self.reason.isEmpty ? "\(self.code)" : self.reason }
}

/// Why the websocket layer closed a tunnel.
public struct WebSocketByteStreamError: Error, CustomStringConvertible, Equatable {
    public var code: WebSocketErrorCode
    public var reason: String
    public var description: String { "websocket protocol violation (\(self.code)): \(self.reason)" }
}

extension Collection where Element == UInt8 {
    /// Whether the bytes are well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, at most U+10FFFF).
    var isValidUTF8: Bool {
        var iterator = self.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }
}
