import Connector
import TestSupport
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

    /// After the relay node went away with every tunnel: a random phase within the window, then
    /// the window, doubling up to the cap (or the window, if larger), until a tunnel stays up.
    @Test func afterTheRelayWentAwayRedialsFollowAGridWithARandomPhase() {
        var backoff = Backoff(policy: Self.policy)
        var random = SeededGenerator(seed: 7)
        backoff.spread(overMilliseconds: 15_000, using: &random)
        let phase = backoff.next(using: &random)
        #expect((0..<15_000).contains(phase))
        #expect((0..<4).map { _ in backoff.next(using: &random) } == [15_000, 15_000, 15_000, 15_000], "the cap (1 s) is below the window")
        backoff.tunnelClosed(afterMilliseconds: 10_000)
        #expect(backoff.ceilingMilliseconds == 100, "a tunnel that stayed up ends the grid")

        var wide = Backoff(policy: Backoff.Policy())  // cap 30 s
        wide.spread(overMilliseconds: 5_000, using: &random)
        _ = wide.next(using: &random)
        #expect((0..<4).map { _ in wide.next(using: &random) } == [5_000, 10_000, 20_000, 30_000])
    }

    /// 200 connectors lose their relay node at once; it is back after 0.5 to 40 s. Whenever that
    /// is, no one-second window holds more than 20% of their redials (a grid with random phases
    /// spreads them evenly; full jitter would bunch those that failed before the restart).
    @Test func connectorsThatLostTheSameRelayReturnSpreadWheneverItComesBack() {
        var random = SeededGenerator(seed: 11)
        for downMilliseconds: Int64 in [500, 1_500, 3_000, 7_000, 15_000, 40_000] {
            var arrivals: [Int64] = []
            for _ in 0..<200 {
                var backoff = Backoff(policy: Backoff.Policy())
                backoff.spread(overMilliseconds: 15_000, using: &random)
                var at: Int64 = 0
                repeat { at += backoff.next(using: &random) } while at < downMilliseconds
                arrivals.append(at - downMilliseconds)
            }
            arrivals.sort()
            var busiest = 0
            var start = 0
            for end in arrivals.indices {
                while arrivals[start] <= arrivals[end] - 1_000 { start += 1 }
                busiest = max(busiest, end - start + 1)
            }
            #expect(busiest <= 40, "down \(downMilliseconds) ms: \(busiest) of 200 in one second")
            #expect(arrivals.last! <= 30_000, "down \(downMilliseconds) ms: all back within 30 s (\(arrivals.last!) ms)")
        }
    }
}
