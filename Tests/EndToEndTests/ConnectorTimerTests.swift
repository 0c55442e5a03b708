import Connector
import Foundation
import Relay
import RelayModel
import TestSupport
import Testing
import TunnelCore

/// The connector's waits (heartbeat interval, redial backoff) run on a clock the test moves: a 60 s
/// or 300 s heartbeat is checked in milliseconds, with no sleep.
@Suite(.serialized) struct ConnectorTimerTests {
    /// The next wait of at least `longerThan` on `clock` (the sweep's 100 ms waits are shorter).
    static func nextWait(_ clock: ManualClock, longerThan: Duration = .seconds(2)) async throws -> Duration {
        var wait: Duration?
        let found = try await TestWait.poll {
            let now = clock.now
            wait = clock.deadlines.map { now.duration(to: $0) }.filter { $0 > longerThan }.min()
            return wait != nil
        }
        guard found, let wait else { throw TestFailure("nothing waits longer than \(longerThan) on the test clock") }
        return wait
    }

    /// Waits until something sleeps `duration` on the clock (a zero sleep never waits).
    static func untilSleeping(_ clock: ManualClock, _ duration: Duration) async throws {
        guard duration > .zero else { return }
        guard try await TestWait.poll({ clock.pendingSleeps.contains(duration) }) else {
            throw TestFailure("nothing sleeps \(duration) on the test clock: \(clock.pendingSleeps)")
        }
    }

    @Test func heartbeatsComeEverySixtySecondsAndEveryFiveMinutesWhileDisabled() async throws {
        let clock = ManualClock()
        let stack = try await TestStack.start(approve: false, timers: clock) { config in config.heartbeat = HeartbeatStateMachine.Configuration() }
        try await stack.waitUntil("the first heartbeat's answer") { stack.driver.answersReceived == 1 }
        let first = try await Self.nextWait(clock)
        #expect(first >= .seconds(54) && first <= .seconds(66), "60 s ± 10%: \(first)")
        clock.advance(by: first - .milliseconds(1))
        #expect(clock.deadlines.contains { clock.now.duration(to: $0) == .milliseconds(1) }, "the heartbeat timer still waits: \(clock.pendingSleeps)")
        #expect(stack.driver.answersReceived == 1, "nothing before the interval is over")
        clock.advance(by: .milliseconds(1))
        try await stack.waitUntil("the second heartbeat's answer") { stack.driver.answersReceived == 2 }

        // The customer disables remote access: the relay is told at once, then every 300 s.
        let _: SettingsApplied = try await CustomerControlTests.control(stack).post(ControlPath.mode, ModeChange(mode: .disabled, by: "carol"))
        try await stack.waitUntil("the heartbeat that tells the relay") { stack.driver.answersReceived == 3 }
        let disabled = try await Self.nextWait(clock, longerThan: .seconds(100))
        #expect(disabled >= .seconds(270) && disabled <= .seconds(330), "300 s ± 10%: \(disabled)")
        await stack.stop()
    }

    /// A relay that accepts and then drops at once is redialled ever more slowly; a tunnel that
    /// stayed up for the grace period (10 s) starts again from the first window.
    @Test func aTunnelDroppedAtOnceBacksOffAndOneThatStayedUpStartsAgain() async throws {
        let clock = ManualClock()
        let stack = try await TestStack.start(approve: false, timers: clock)
        try await stack.waitUntil("the first heartbeat's answer") { stack.driver.answersReceived == 1 }
        _ = try await stack.createRequest(cluster: "demo", role: .admin)
        clock.advance(by: .seconds(1))  // the next heartbeat (200 ms here) brings the flag
        try await stack.waitForTunnels(1)
        // The relay registers a tunnel a moment before the connector's dial completes.
        try await stack.waitUntil("the connector to count the tunnel") { !stack.connector.connectedURLs.isEmpty }
        let url = try #require(stack.connector.connectedURLs.first)
        /// Closes the relay's end of the tunnel up now; returns it (held, so that its identity is
        /// not reused by the next tunnel's channel).
        func dropTunnel() async throws -> TunnelHandle {
            let tunnel = try #require(stack.relay.registry.tunnels(cluster: "demo").first { $0.channel.isActive })
            try? await tunnel.channel.close()
            return tunnel
        }
        func waitForAnotherTunnel(than dropped: TunnelHandle) async throws {
            try await stack.waitUntil("a new tunnel, counted by the connector too") {
                stack.relay.registry.tunnels(cluster: "demo").contains { $0.channel !== dropped.channel && $0.channel.isActive }
                    && stack.connector.connectedURLs.contains(url) && stack.connector.redials[url] == nil
            }
        }
        for attempt in 1...3 {
            let dropped = try await dropTunnel()
            try await stack.waitUntil("redial attempt \(attempt) to wait") { stack.connector.redials[url]?.attempt == attempt }
            let window = Int64(100) << (attempt - 1)  // TestStack's reconnect_initial is 100 ms
            let delay = try #require(stack.connector.redials[url]?.delay)
            #expect(delay <= .milliseconds(window), "attempt \(attempt) waits at most \(window) ms: \(delay)")
            try await Self.untilSleeping(clock, delay)
            clock.advance(by: .milliseconds(window))
            try await waitForAnotherTunnel(than: dropped)
        }
        clock.advance(by: .seconds(10))
        let dropped = try await dropTunnel()
        try await stack.waitUntil("a first redial attempt again") { stack.connector.redials[url]?.attempt == 1 }
        try await Self.untilSleeping(clock, try #require(stack.connector.redials[url]?.delay))
        clock.advance(by: .milliseconds(100))
        try await waitForAnotherTunnel(than: dropped)
        await stack.stop()
    }
}
