import NIOConcurrencyHelpers
import NIOCore

/// Arms per-connection deadlines on event loops: the relay's handshake deadline (TLS and the first
/// request head, or the websocket upgrade, must come by then), the connector's upstream timeout (a
/// component's response head must come by then). A parameter of the programs, so that tests decide
/// when deadlines pass instead of waiting for them: the clock is injected, as everywhere else.
public struct Deadlines: Sendable {
    /// A deadline that has been armed; cancelling it is idempotent.
    public struct Armed: Sendable {
        let cancelAction: @Sendable () -> Void
        public func cancel() { self.cancelAction() }
    }

    public let arm: @Sendable (_ loop: EventLoop, _ after: TimeAmount, _ expire: @escaping @Sendable () -> Void) -> Armed

    public init(arm: @escaping @Sendable (EventLoop, TimeAmount, @escaping @Sendable () -> Void) -> Armed) {
        self.arm = arm
    }

    /// Real time, on the connection's event loop.
    public static let eventLoop = Deadlines { loop, after, expire in
        let task = loop.scheduleTask(in: after) { expire() }
        return Armed { task.cancel() }
    }

    /// Deadlines that pass only when `expireAll()` is called (tests).
    public final class Manual: Sendable {
        private let pending = NIOLockedValueBox<[Int: (loop: EventLoop, expire: @Sendable () -> Void)]>([:])
        private let next = NIOLockedValueBox(0)

        public init() {}

        public var deadlines: Deadlines {
            Deadlines { loop, _, expire in
                let id = self.next.withLockedValue { value -> Int in
                    value += 1
                    return value
                }
                self.pending.withLockedValue { $0[id] = (loop, expire) }
                return Armed { _ = self.pending.withLockedValue { $0.removeValue(forKey: id) } }
            }
        }

        /// Deadlines armed and neither cancelled nor expired yet.
        public var armed: Int { self.pending.withLockedValue { $0.count } }

        /// Every armed deadline passes now (on its connection's event loop).
        public func expireAll() {
            let due = self.pending.withLockedValue { pending in
                defer { pending = [:] }
                return Array(pending.values)
            }
            for deadline in due { deadline.loop.execute { deadline.expire() } }
        }
    }
}
