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
    /// Set after the relay node went away with every tunnel: the redial grid, below.
    private var spreading: Spread?

    /// Attempts at `phase`, then `gap` after each other (the gap doubling up to the larger of the
    /// cap and the window): every connector of the node keeps its own random phase, so that
    /// whenever the node comes back, they return spread evenly over one window.
    private struct Spread {
        var window: Int64
        var phase: Int64?
        var gap: Int64
    }

    public init(policy: Policy) { self.policy = policy }

    /// Delays drawn since the last reset: the number of the next attempt.
    public var attempts: Int { self.attempt }

    /// The upper end of the next delay's window (while spreading: the next delay itself).
    public var ceilingMilliseconds: Int64 {
        if let spreading = self.spreading { return spreading.phase ?? spreading.gap }
        return min(self.policy.initialMilliseconds << min(self.attempt, 30), self.policy.maximumMilliseconds)
    }

    /// The delay before the next attempt, in milliseconds.
    public mutating func next<R: RandomNumberGenerator>(using random: inout R) -> Int64 {
        let ceiling = self.ceilingMilliseconds
        self.attempt += 1
        if var spreading = self.spreading {
            defer { self.spreading = spreading }
            if let phase = spreading.phase {
                spreading.phase = nil
                return phase
            }
            let gap = spreading.gap
            spreading.gap = min(gap * 2, max(self.policy.maximumMilliseconds, spreading.window))
            return gap
        }
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
            self.spreading = nil
        }
    }

    /// The relay node vanished or drained: every connector it held redials now. Each waits a
    /// random phase within `window`, then redials every `window` (doubling up to the cap) until a
    /// tunnel stays up for the grace period. Full jitter alone would bunch the connectors that
    /// failed before the node came back into its first seconds; on a shared grid with random
    /// phases, whenever it comes back they arrive evenly over one window.
    public mutating func spread<R: RandomNumberGenerator>(overMilliseconds window: Int64, using random: inout R) {
        let window = max(window, 1)
        self.spreading = Spread(window: window, phase: Int64.random(in: 0..<window, using: &random), gap: window)
    }

    public mutating func spread(overMilliseconds window: Int64) {
        var random = SystemRandomNumberGenerator()
        self.spread(overMilliseconds: window, using: &random)
    }
}
