import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// Bounds on what anyone can hold open on the relay before authenticating (relay.yaml
/// `connections:`). The relay is a public endpoint: connections, request heads and bodies all cost
/// memory and file descriptors, so each is capped or timed.
public struct ConnectionLimits: Sendable, Equatable {
    /// Open connections in total; beyond, new ones are closed at once.
    public var maxTotal: Int = 10_000
    /// Open connections from one IP address. Sized for a customer site whose connectors all leave
    /// through one NAT address (a node holds a tunnel per relay node plus a heartbeat).
    public var maxPerAddress: Int = 1_000
    /// A request body must arrive at least this fast (bytes per second) once the handshake time
    /// (`limits.handshake_timeout`) has passed since its head: a client that sends a large
    /// Content-Length and then nothing, or a trickle, is closed.
    public var minBodyBytesPerSecond: Int = 1024
    /// TCP keepalive on accepted connections: the first probe after this much silence.
    public var tcpKeepaliveIdleSeconds: Int = 60

    public init() {}
}

/// Counts open connections per address: pure, no locks, no I/O.
struct ConnectionCounts: Equatable {
    let limits: ConnectionLimits
    private(set) var total = 0
    private(set) var perAddress: [String: Int] = [:]

    init(limits: ConnectionLimits) { self.limits = limits }

    enum Refusal: Equatable, CustomStringConvertible {
        case total(Int)
        case perAddress(Int)
        var description: String {
            switch self {
            case .total(let limit): "the relay holds its maximum of \(limit) connections"
            case .perAddress(let limit): "this address holds its maximum of \(limit) connections"
            }
        }
    }

    /// Admits a new connection from `address`, or says why not.
    mutating func admit(_ address: String) -> Refusal? {
        if self.total >= self.limits.maxTotal { return .total(self.limits.maxTotal) }
        if self.perAddress[address, default: 0] >= self.limits.maxPerAddress { return .perAddress(self.limits.maxPerAddress) }
        self.total += 1
        self.perAddress[address, default: 0] += 1
        return nil
    }

    /// An admitted connection from `address` closed.
    mutating func release(_ address: String) {
        guard let count = self.perAddress[address] else { return }
        self.total -= 1
        self.perAddress[address] = count > 1 ? count - 1 : nil
    }
}

/// The relay's admission control: `ConnectionCounts` behind a lock, with a log line per refused
/// address at most once a minute (a flood must not flood the log too).
public final class ConnectionLimiter: Sendable {
    private let state: NIOLockedValueBox<(counts: ConnectionCounts, logged: [String: NIODeadline])>
    private let logger: Logger

    public init(limits: ConnectionLimits, logger: Logger) {
        self.state = NIOLockedValueBox((ConnectionCounts(limits: limits), [:]))
        self.logger = logger
    }

    /// Open connections now.
    public var open: Int { self.state.withLockedValue { $0.counts.total } }

    /// Admits `channel` or closes it at once; an admitted one is counted until it closes.
    func admit(_ channel: Channel) -> Bool {
        let address = channel.remoteAddress?.ipAddress ?? "unknown"
        let now = NIODeadline.now()
        let (refusal, log) = self.state.withLockedValue { state -> (ConnectionCounts.Refusal?, Bool) in
            guard let refusal = state.counts.admit(address) else { return (nil, false) }
            if let last = state.logged[address], now - last < .minutes(1) { return (refusal, false) }
            if state.logged.count > 10_000 { state.logged.removeAll() }
            state.logged[address] = now
            return (refusal, true)
        }
        if let refusal {
            if log { self.logger.notice("connection refused", metadata: ["peer": "\(address)", "reason": "\(refusal)"]) }
            channel.close(promise: nil)
            return false
        }
        channel.closeFuture.whenComplete { _ in self.state.withLockedValue { $0.counts.release(address) } }
        return true
    }
}

/// The time a request may take to arrive, as a pure rule: its body must keep up with
/// `minBodyBytesPerSecond` once `grace` has passed since its head.
struct RequestPace: Sendable, Equatable {
    var grace: TimeAmount
    var minBodyBytesPerSecond: Int

    /// When a request whose head came at `headAt` is late if no more than `bodyBytes` have come.
    func deadline(headAt: NIODeadline, bodyBytes: Int) -> NIODeadline {
        let rate = Int64(max(self.minBodyBytesPerSecond, 1))
        let (earned, overflow) = Int64(bodyBytes).multipliedReportingOverflow(by: 1_000_000_000)
        return headAt + self.grace + .nanoseconds(overflow ? Int64.max / 4 : earned / rate)
    }
}

/// Closes a connection whose request body does not keep up with `RequestPace` (slow POST): sits in
/// front of `RelayHTTPHandler` and only watches. The head itself is bounded by the handshake
/// deadline (first request) or the API idle timeout (later requests on a kept-alive connection).
final class SlowRequestGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    private let pace: RequestPace
    private let logger: Logger
    private var headAt: NIODeadline?
    private var bodyBytes = 0
    private var check: Scheduled<Void>?

    init(pace: RequestPace, logger: Logger) {
        self.pace = pace
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head:
            self.headAt = context.eventLoop.now
            self.bodyBytes = 0
            self.arm(context: context)
        case .body(let bytes):
            self.bodyBytes += bytes.readableBytes
            self.arm(context: context)
        case .end:
            self.headAt = nil
            self.check?.cancel()
        }
        context.fireChannelRead(data)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.check?.cancel()
    }

    private func arm(context: ChannelHandlerContext) {
        guard let headAt = self.headAt else { return }
        self.check?.cancel()
        let deadline = self.pace.deadline(headAt: headAt, bodyBytes: self.bodyBytes)
        let bytes = self.bodyBytes
        self.check = context.eventLoop.scheduleTask(deadline: deadline) {
            self.logger.notice(
                "closing a slow client",
                metadata: [
                    "peer": "\(context.channel.remoteAddress?.ipAddress ?? "?")", "body_bytes": "\(bytes)",
                    "minimum_rate": "\(self.pace.minBodyBytesPerSecond) B/s",
                ])
            context.close(promise: nil)
        }
    }
}
