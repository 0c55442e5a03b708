/// Jittered exponential backoff for redialing a relay (no I/O, no clock: the caller sleeps).
///
/// Delay n is drawn uniformly from [base/2, base] with base = min(initial * 2^n, maximum)
/// ("equal jitter"), so many connectors that lost the same relay do not redial in lockstep.
public struct Backoff: Sendable {
    public struct Policy: Sendable, Equatable {
        public var initialMilliseconds: Int64 = 500
        public var maximumMilliseconds: Int64 = 30_000
        public init() {}
    }

    public let policy: Policy
    private var attempt = 0

    public init(policy: Policy) { self.policy = policy }

    /// The delay before the next attempt, in milliseconds.
    public mutating func next<R: RandomNumberGenerator>(using random: inout R) -> Int64 {
        let exponent = min(self.attempt, 30)
        self.attempt += 1
        let base = min(self.policy.initialMilliseconds << exponent, self.policy.maximumMilliseconds)
        let low = max(base / 2, 1)
        return Int64.random(in: low...max(base, low), using: &random)
    }

    public mutating func next() -> Int64 {
        var random = SystemRandomNumberGenerator()
        return self.next(using: &random)
    }

    /// A tunnel stayed up: the next failure starts from the initial delay again.
    public mutating func reset() { self.attempt = 0 }
}
