import NIOConcurrencyHelpers
import NIOCore

/// Idle keep-alive HTTP/1.1 connections to components, kept per component and per event loop (a
/// tunnel stream and its component connection share a loop, so a reused connection needs no hop).
///
/// Bounded: at most `maxIdlePerKey` idle connections per component and loop, each closed after
/// `idleTimeout` unused. The timeout is kept below common server keep-alive timeouts (5 s and up),
/// so a component rarely closes a connection just as it is reused.
final class ComponentConnectionPool: Sendable {
    private struct Key: Hashable {
        var component: String
        var loop: ObjectIdentifier
    }
    private struct Entry {
        var id: UInt64
        var channel: Channel
        var guardHandler: IdleConnectionGuard
        var expiry: Scheduled<Void>
    }
    private struct State {
        var idle: [Key: [Entry]] = [:]
        var nextID: UInt64 = 0
    }

    let maxIdlePerKey: Int
    let idleTimeout: TimeAmount
    private let state = NIOLockedValueBox(State())

    /// - Parameter maxIdlePerKey: as many as a tunnel carries requests at once (256 streams): a
    ///   smaller pool closed connections that the next burst of requests then opened again.
    init(maxIdlePerKey: Int = 256, idleTimeout: TimeAmount = .seconds(2)) {
        self.maxIdlePerKey = maxIdlePerKey
        self.idleTimeout = idleTimeout
    }

    /// An idle, still open connection to `component` on `loop`, removed from the pool.
    func take(component: String, loop: EventLoop) -> Channel? {
        let key = Key(component: component, loop: ObjectIdentifier(loop))
        while let entry = self.state.withLockedValue({ $0.idle[key]?.popLast() }) {
            entry.expiry.cancel()
            guard entry.channel.isActive else { continue }
            // Called on the channel's own loop (the key includes it), so the pipeline is ours to
            // change; outside the lock, since closing calls back into the pool.
            entry.channel.pipeline.syncOperations.removeHandler(entry.guardHandler).whenFailure { _ in
                entry.channel.close(promise: nil)
            }
            return entry.channel
        }
        return nil
    }

    /// Keeps `channel` for reuse, or closes it when the pool for its component and loop is full.
    /// Call on the channel's event loop, with nothing after the HTTP client codec in its pipeline.
    func release(_ channel: Channel, component: String) {
        let key = Key(component: component, loop: ObjectIdentifier(channel.eventLoop))
        let id = self.state.withLockedValue { state -> UInt64? in
            guard (state.idle[key]?.count ?? 0) < self.maxIdlePerKey else { return nil }
            state.nextID += 1
            return state.nextID
        }
        guard let id else {
            channel.close(promise: nil)
            return
        }
        // The guard takes the connection out of the pool if it closes while idle.
        let guardHandler = IdleConnectionGuard { [weak self] in _ = self?.remove(id: id, key: key) }
        guard (try? channel.pipeline.syncOperations.addHandler(guardHandler)) != nil else {
            channel.close(promise: nil)
            return
        }
        let expiry = channel.eventLoop.scheduleTask(in: self.idleTimeout) {
            if self.remove(id: id, key: key) { channel.close(promise: nil) }
        }
        self.state.withLockedValue { state in
            state.idle[key, default: []].append(Entry(id: id, channel: channel, guardHandler: guardHandler, expiry: expiry))
        }
    }

    private func remove(id: UInt64, key: Key) -> Bool {
        self.state.withLockedValue { state in
            guard let index = state.idle[key]?.lastIndex(where: { $0.id == id }) else { return false }
            state.idle[key]!.remove(at: index).expiry.cancel()
            return true
        }
    }
}

/// Sits on an idle pooled connection: a component that sends anything while no request is out
/// (bytes past a response, a broken parser state) has made the connection unusable, so it is closed
/// instead of being handed to the next request.
final class IdleConnectionGuard: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {  // used on its channel's loop
    typealias InboundIn = Any
    private let closed: () -> Void

    init(closed: @escaping () -> Void) { self.closed = closed }

    func channelInactive(context: ChannelHandlerContext) {
        self.closed()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
