import Foundation
import NIOConcurrencyHelpers
import NIOCore
import RelayModel
import TunnelCore

/// One expert session carried by this relay node: its websocket connection and running counts.
public final class LiveSession: Sendable {
    public let channel: Channel
    private let state: NIOLockedValueBox<SessionRecord>
    /// Completes once the session's start is recorded, so its end is never written first.
    let started: NIOLockedValueBox<EventLoopFuture<Void>?> = NIOLockedValueBox(nil)
    /// The session's open websocket streams: a drain closes them at once.
    private let webSockets = NIOLockedValueBox<[ObjectIdentifier: Channel]>([:])

    init(channel: Channel, record: SessionRecord) {
        self.channel = channel
        self.state = NIOLockedValueBox(record)
    }

    public var record: SessionRecord { self.state.withLockedValue { $0 } }

    func count(_ exchange: ProxyExchangeRecord) {
        self.state.withLockedValue { record in
            record.requests += 1
            record.bytesIn += Int64(exchange.requestBodyBytes)
            record.bytesOut += Int64(exchange.responseBodyBytes)
        }
    }

    /// Ends the session with a websocket close code and a reason relayctl shows the engineer.
    public func end(code: UInt16, reason: String) {
        self.state.withLockedValue { if $0.endReason == nil { $0.endReason = reason } }
        self.channel.triggerUserOutboundEvent(WebSocketCloseRequest(code: code, reason: reason), promise: nil)
    }

    /// A stream of this session carries a websocket (until it closes).
    func holdsWebSocket(_ stream: Channel) {
        let key = ObjectIdentifier(stream)
        self.webSockets.withLockedValue { $0[key] = stream }
        stream.closeFuture.whenComplete { _ in self.webSockets.withLockedValue { _ = $0.removeValue(forKey: key) } }
    }

    /// Drains the session: GOAWAY now, so relayctl opens no new request on it; requests in flight
    /// finish, within `bound`; then it closes with `code` and `reason`. Websockets are reset at
    /// once: they never finish on their own (the page reconnects, through another node or this
    /// one restarted), and waiting for them would hold every drain for its whole bound.
    func drain(code: UInt16, reason: String, within bound: TimeAmount, deadlines: Deadlines) {
        self.state.withLockedValue { if $0.endReason == nil { $0.endReason = reason } }
        for stream in self.webSockets.withLockedValue({ Array($0.values) }) { stream.close(promise: nil) }
        let channel = self.channel
        channel.eventLoop.execute {
            channel.triggerUserOutboundEvent(WebSocketClosePlan(code: code, reason: reason), promise: nil)
            channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
            // The bound on the whole drain, whether or not the peer answered its PING; and 5 s
            // later the socket itself, for a peer that reads nothing (its close frame cannot go out).
            let cut = deadlines.arm(channel.eventLoop, bound) {
                channel.triggerUserOutboundEvent(WebSocketCloseRequest(code: code, reason: reason), promise: nil)
            }
            let hardCut = deadlines.arm(channel.eventLoop, bound + .seconds(5)) { channel.close(promise: nil) }
            channel.closeFuture.whenComplete { _ in
                cut.cancel()
                hardCut.cancel()
            }
        }
    }

    /// The final record: end time set, reason defaulted.
    func finish(at now: Date) -> SessionRecord {
        self.state.withLockedValue { record in
            record.endedAt = now
            if record.endReason == nil { record.endReason = "closed by the expert" }
            return record
        }
    }
}

/// The sessions this relay node carries, by ID.
public final class LiveSessions: Sendable {
    private let sessions = NIOLockedValueBox<[String: LiveSession]>([:])

    public init() {}

    func add(_ session: LiveSession) { self.sessions.withLockedValue { $0[session.record.id] = session } }
    func remove(_ id: String) { self.sessions.withLockedValue { _ = $0.removeValue(forKey: id) } }
    public var all: [LiveSession] { self.sessions.withLockedValue { Array($0.values) } }
    public func session(id: String) -> LiveSession? { self.sessions.withLockedValue { $0[id] } }
}
