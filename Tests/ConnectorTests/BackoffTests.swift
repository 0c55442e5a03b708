import Connector
import Testing

/// Redial delays: full jitter over a window that doubles up to a cap, reset only by a tunnel that
/// stayed up for the grace period.
@Suite struct BackoffTests {
    static var policy: Backoff.Policy {
        var policy = Backoff.Policy()
        policy.initialMilliseconds = 100
        policy.maximumMilliseconds = 1000
        policy.graceMilliseconds = 10_000
        return policy
    }

    /// Draws `count` delays from a backoff held at its current window.
    static func draws(_ backoff: Backoff, count: Int = 400) -> [Int64] {
        var random = SystemRandomNumberGenerator()
        return (0..<count).map { _ in
            var copy = backoff
            return copy.next(using: &random)
        }
    }

    @Test func theWindowDoublesUpToTheCapAndDelaysSpreadOverAllOfIt() {
        var backoff = Backoff(policy: Self.policy)
        var random = SystemRandomNumberGenerator()
        for ceiling: Int64 in [100, 200, 400, 800, 1000, 1000, 1000] {
            #expect(backoff.ceilingMilliseconds == ceiling)
            let delays = Self.draws(backoff)
            #expect(delays.allSatisfy { (0...ceiling).contains($0) }, "a delay outside 0...\(ceiling)")
            // Full jitter: from near zero to near the ceiling, not bunched at its top half. 400 draws
            // miss either fifth with a probability below 1e-38.
            #expect(delays.min()! < ceiling / 5 && delays.max()! > ceiling * 4 / 5, "\(delays.min()!)...\(delays.max()!) of \(ceiling)")
            _ = backoff.next(using: &random)
        }
    }

    /// A relay that accepts and then drops at once is redialled ever more slowly: the short-lived
    /// tunnel counts as a failed attempt.
    @Test func onlyATunnelThatStayedUpForTheGracePeriodStartsAgain() {
        var backoff = Backoff(policy: Self.policy)
        var random = SystemRandomNumberGenerator()
        for _ in 0..<3 { _ = backoff.next(using: &random) }
        #expect(backoff.ceilingMilliseconds == 800)
        backoff.tunnelClosed(afterMilliseconds: 9_999)
        #expect(backoff.ceilingMilliseconds == 800)
        _ = backoff.next(using: &random)
        backoff.tunnelClosed(afterMilliseconds: 10_000)
        #expect(backoff.ceilingMilliseconds == 100)
    }
}
