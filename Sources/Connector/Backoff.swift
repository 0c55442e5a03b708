/// Exponential backoff with full jitter for redialing a relay (no I/O, no clock: the caller sleeps,
/// and says how long each tunnel stayed up).
///
/// Delay n is drawn uniformly from [0, min(initial * 2^n, maximum)] ("full jitter"): connectors
/// that lost the same relay spread over the whole window instead of redialing together. A tunnel
/// starts the sequence again only once it has stayed up for `grace`, so a relay that accepts and
/// then drops at once is redialled ever more slowly, not every few hundred milliseconds.
public struct Backoff: Sendable {
    public struct Policy: Sendable, Equatable {
        public var initialMilliseconds: Int64 = 500
        public var maximumMilliseconds: Int64 = 30_000
        /// How long a tunnel must stay up before a drop counts as a first failure again.
        public var graceMilliseconds: Int64 = 10_000
        public init() {}
    }

    public let policy: Policy
    private var attempt = 0
    /// The smallest window while set: the spread the relay asked for after a tunnel dropped.
    private var floorMilliseconds: Int64 = 0

    public init(policy: Policy) { self.policy = policy }

    /// Delays drawn since the last reset: the number of the next attempt.
    public var attempts: Int { self.attempt }

    /// The upper end of the next delay's window.
    public var ceilingMilliseconds: Int64 {
        max(min(self.policy.initialMilliseconds << min(self.attempt, 30), self.policy.maximumMilliseconds), self.floorMilliseconds)
    }

    /// The delay before the next attempt, in milliseconds.
    public mutating func next<R: RandomNumberGenerator>(using random: inout R) -> Int64 {
        let ceiling = self.ceilingMilliseconds
        self.attempt += 1
        return Int64.random(in: 0...max(ceiling, 0), using: &random)
    }

    public mutating func next() -> Int64 {
        var random = SystemRandomNumberGenerator()
        return self.next(using: &random)
    }

    /// A tunnel closed after being up this long: past the grace period the next failure starts
    /// from the initial delay again; a shorter one counts as a failed attempt.
    public mutating func tunnelClosed(afterMilliseconds up: Int64) {
        if up >= self.policy.graceMilliseconds {
            self.attempt = 0
            self.floorMilliseconds = 0
        }
    }

    /// The relay node vanished or drained: every connector it held redials now, so each waits a
    /// random part of `window` at least (until a tunnel stays up for the grace period again),
    /// and a restarted node sees its connectors come back spread over the window, not at once.
    public mutating func spread(overMilliseconds window: Int64) {
        self.floorMilliseconds = max(window, 0)
    }
}
