import Foundation
import NIOCore
import NIOHPACK
import NIOHTTP2

/// One message on a tunnel's control stream (docs/PROTOCOL.md, "Control stream"). Either side
/// says what it ended, at once, so the other side's view and audit match: the connector names the
/// sessions and grants it ended (idle, length, kill, settings), the relay the sessions and access
/// requests it ended (kill, token or request revoked, expiry, the engineer closing). An event can
/// only end something on the receiving side, never allow anything.
public struct ControlEvent: Codable, Sendable, Equatable {
    /// `session.ended` (`session`), `grant.ended` (`accessRequest` + `expert`), `access.off` (the
    /// customer turned remote access off on this node), `request.ended` (`accessRequest`, `state`).
    /// Unknown kinds are ignored, so either side can add kinds later.
    public var event: String
    public var session: String?
    public var accessRequest: Int64?
    public var expert: String?
    /// `request.ended`: revoked, expired or rejected.
    public var state: String?
    /// For a person: shown to the engineer, written in the customer's audit log.
    public var reason: String
    /// `grant.ended`: the customer's user who ended it (a kill, a revocation); nil for a limit.
    public var by: String?

    public static let sessionEnded = "session.ended"
    public static let grantEnded = "grant.ended"
    public static let accessOff = "access.off"
    public static let requestEnded = "request.ended"

    public init(
        event: String, session: String? = nil, accessRequest: Int64? = nil, expert: String? = nil, state: String? = nil, reason: String,
        by: String? = nil
    ) {
        self.by = by
        self.event = event
        self.session = session
        self.accessRequest = accessRequest
        self.expert = expert
        self.state = state
        self.reason = reason
    }
}

/// The control stream's framing: the relay opens one HTTP/2 stream per tunnel (`POST /` with
/// `x-relay-control: v1`), its first, right after the upgrade and never ends it; the connector
/// answers `200` and never ends it either. Each side writes events as JSON lines in DATA frames. A
/// line over `maxLineBytes`, one that is not JSON, or more than `maxEventsPerSecond` resets the
/// stream; the tunnel goes on without pushes (each side still enforces, and the relay still learns
/// ends from refusals and heartbeats), and `onClosed` says so.
public final class ControlStreamHandler: ChannelInboundHandler, @unchecked Sendable {
    public typealias InboundIn = HTTP2Frame.FramePayload
    public typealias OutboundOut = HTTP2Frame.FramePayload

    public enum Role: Sendable {
        /// The relay: sends the request head at once.
        case opener
        /// The connector: first in every inbound stream's pipeline. A stream whose head is not a
        /// control head passes on untouched (an expert request). Only the tunnel's first stream may
        /// be the control stream, and only if `onOpen` accepts it (once per tunnel).
        case answerer(onOpen: @Sendable (ControlStreamHandler) -> Bool)
    }

    public static let header = WireHeader.control
    public static let version = "v1"
    public static let maxLineBytes = 16 * 1024
    /// More events than this in one second resets the stream (a flood, not a peer telling news).
    public static let maxEventsPerSecond = 500

    private let role: Role
    private let loop: EventLoop
    private let onEvent: @Sendable (ControlEvent) -> Void
    private let onClosed: (@Sendable (ControlStreamHandler) -> Void)?
    private var context: ChannelHandlerContext?
    private var mode: Mode = .waiting
    private var pending = ByteBuffer()
    private var queued: [ControlEvent] = []
    private var second: (start: NIODeadline, events: Int) = (.now(), 0)

    private enum Mode { case waiting, control, passThrough, closed }

    /// - Parameters:
    ///   - loop: the stream channel's event loop (everything here runs on it).
    ///   - onClosed: the control stream closed (not for a stream that passed through).
    public init(
        role: Role, loop: EventLoop, onClosed: (@Sendable (ControlStreamHandler) -> Void)? = nil,
        onEvent: @escaping @Sendable (ControlEvent) -> Void
    ) {
        self.role = role
        self.loop = loop
        self.onClosed = onClosed
        self.onEvent = onEvent
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if case .opener = self.role, context.channel.isActive { self.openAsRelay(context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.closed()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.closed()
        context.fireChannelInactive()
    }

    /// Nothing is sent or queued any more.
    private func closed() {
        let wasControl = self.mode == .control || (self.mode == .waiting && self.isOpener)
        self.mode = .closed
        self.queued.removeAll()
        if wasControl { self.onClosed?(self) }
    }

    private var isOpener: Bool {
        if case .opener = self.role { return true }
        return false
    }

    public func channelActive(context: ChannelHandlerContext) {
        if case .opener = self.role, self.mode == .waiting { self.openAsRelay(context) }
        context.fireChannelActive()
    }

    private func openAsRelay(_ context: ChannelHandlerContext) {
        guard self.mode == .waiting else { return }
        self.mode = .control
        let head: HPACKHeaders = [
            ":method": "POST", ":path": "/", ":scheme": "https", ":authority": "relay", Self.header: Self.version,
        ]
        context.writeAndFlush(self.wrapOutboundOut(.headers(.init(headers: head, endStream: false))), promise: nil)
        self.writeQueued()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let payload = self.unwrapInboundIn(data)
        switch self.mode {
        case .passThrough:
            context.fireChannelRead(data)
        case .closed:
            break
        case .waiting:
            guard case .answerer(let onOpen) = self.role, case .headers(let headers) = payload,
                headers.headers.first(name: Self.header) == Self.version
            else {
                self.mode = .passThrough
                context.fireChannelRead(data)
                return
            }
            // Only what `onOpen` accepts (the relay's first stream, once per tunnel): any other is reset.
            guard onOpen(self) else {
                self.mode = .closed
                context.close(promise: nil)
                return
            }
            self.mode = .control
            context.writeAndFlush(self.wrapOutboundOut(.headers(.init(headers: [":status": "200"], endStream: false))), promise: nil)
            self.writeQueued()
        case .control:
            self.readControl(context, payload)
        }
    }

    private func readControl(_ context: ChannelHandlerContext, _ payload: HTTP2Frame.FramePayload) {
        switch payload {
        case .data(let data):
            if case .byteBuffer(var bytes) = data.data { self.pending.writeBuffer(&bytes) }
            while let newline = self.pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                let length = newline - self.pending.readerIndex
                let line = self.pending.readSlice(length: length)!
                self.pending.moveReaderIndex(forwardBy: 1)
                guard line.readableBytes > 0 else { continue }
                guard let event = try? JSONDecoder().decode(ControlEvent.self, from: Data(line.readableBytesView)), self.withinRate() else {
                    context.close(promise: nil)
                    return
                }
                self.onEvent(event)
            }
            self.pending.discardReadBytes()
            if self.pending.readableBytes > Self.maxLineBytes || data.endStream { context.close(promise: nil) }
        case .headers(let headers):
            // The relay reads the connector's answer: anything but 200 ends the stream.
            if headers.headers.first(name: ":status").map({ $0 != "200" }) ?? false || headers.endStream { context.close(promise: nil) }
        default:
            break
        }
    }

    /// Counts one event against `maxEventsPerSecond`.
    private func withinRate() -> Bool {
        let now = NIODeadline.now()
        if now - self.second.start >= .seconds(1) { self.second = (now, 0) }
        self.second.events += 1
        return self.second.events <= Self.maxEventsPerSecond
    }

    /// Sends events (call from any thread); queued until the stream is open, dropped once it closed. On the stream's loop
    /// the write happens now, so a tunnel closed right after still carries them first.
    public func send(_ events: [ControlEvent]) {
        guard !events.isEmpty else { return }
        self.onLoop {
            guard self.mode != .closed else { return }
            self.queued += events
            if self.mode == .control { self.writeQueued() }
        }
    }

    /// Resets the stream (a newer control stream replaced it).
    public func close() {
        self.onLoop { self.context?.close(promise: nil) }
    }

    private func onLoop(_ body: @escaping @Sendable () -> Void) {
        if self.loop.inEventLoop { body() } else { self.loop.execute(body) }
    }

    private func writeQueued() {
        guard let context = self.context, !self.queued.isEmpty else { return }
        var buffer = context.channel.allocator.buffer(capacity: 256 * self.queued.count)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        for event in self.queued {
            guard let line = try? encoder.encode(event), line.count < Self.maxLineBytes else { continue }
            buffer.writeBytes(line)
            buffer.writeInteger(UInt8(ascii: "\n"))
        }
        self.queued.removeAll()
        context.writeAndFlush(self.wrapOutboundOut(.data(.init(data: .byteBuffer(buffer), endStream: false))), promise: nil)
    }
}
