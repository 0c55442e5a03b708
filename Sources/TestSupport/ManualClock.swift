import NIOConcurrencyHelpers

/// A clock that moves only when told: sleepers wake when `advance` reaches their deadline. Tests
/// drive every timer of the product (heartbeat, backoff, reconciler, limits) with it, and wait for
/// the observable event "something sleeps on the clock" instead of a wall-clock delay.
public final class ManualClock: Clock, Sendable {
    public struct Instant: InstantProtocol, CustomStringConvertible {
        /// Time since the clock was made.
        public var offset: Duration
        public func advanced(by duration: Duration) -> Instant { Instant(offset: self.offset + duration) }
        public func duration(to other: Instant) -> Duration { other.offset - self.offset }
        public static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.offset < rhs.offset }
        public var description: String { "+\(self.offset)" }
    }

    private struct Sleeper {
        let deadline: Instant
        /// How long the sleeper asked to sleep, from when it began.
        let requested: Duration
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now = Instant(offset: .zero)
        var nextID = 0
        var sleepers: [Int: Sleeper] = [:]
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    public var now: Instant { self.state.withLockedValue { $0.now } }
    public var minimumResolution: Duration { .zero }

    /// How many tasks sleep on this clock right now.
    public var sleeping: Int { self.state.withLockedValue { $0.sleepers.count } }

    /// How long each task sleeping now asked to sleep (from when it began), shortest first: a test
    /// waits for the sleep it means to end before it moves the clock.
    public var pendingSleeps: [Duration] { self.state.withLockedValue { $0.sleepers.values.map(\.requested).sorted() } }

    /// The deadlines of the tasks sleeping now, soonest first.
    public var deadlines: [Instant] { self.state.withLockedValue { $0.sleepers.values.map(\.deadline).sorted() } }

    public func sleep(until deadline: Instant, tolerance: Duration? = nil) async throws {
        let id = self.state.withLockedValue { state -> Int in
            defer { state.nextID += 1 }
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resume: Result<Void, any Error>? = self.state.withLockedValue { state in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if deadline <= state.now { return .success(()) }
                    state.sleepers[id] = Sleeper(deadline: deadline, requested: state.now.duration(to: deadline), continuation: continuation)
                    return nil
                }
                if let resume { continuation.resume(with: resume) }
            }
        } onCancel: {
            self.state.withLockedValue { $0.sleepers.removeValue(forKey: id) }?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Moves the clock on and wakes every sleeper whose deadline is reached.
    public func advance(by duration: Duration) {
        let due = self.state.withLockedValue { state -> [Sleeper] in
            state.now = state.now.advanced(by: duration)
            let now = state.now
            let due = state.sleepers.filter { $0.value.deadline <= now }
            for id in due.keys { state.sleepers[id] = nil }
            return due.values.sorted { $0.deadline < $1.deadline }
        }
        for sleeper in due { sleeper.continuation.resume() }
    }
}
