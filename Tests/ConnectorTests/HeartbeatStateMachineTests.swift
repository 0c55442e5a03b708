import Connector
import Testing

/// The heartbeat and dial lifecycle, driven by hand: no event loop, no clock, jitter fixed.
@Suite struct HeartbeatStateMachineTests {
    let urls = ["wss://relay-1:8443/v1/tunnel", "wss://relay-2:8443/v1/tunnel"]

    func answer(_ flag: Bool, _ urls: [String]? = nil, next: Int64? = nil) -> HeartbeatStateMachine.Answer {
        .init(remoteUIRequested: flag, websocketURLs: urls ?? self.urls, nextIntervalMilliseconds: next)
    }

    @Test func enabledConnectorHeartbeatsEverySixtySecondsAndNeverDialsWithoutTheFlag() {
        var machine = HeartbeatStateMachine(remoteAccessEnabled: true)
        #expect(machine.start() == [.sendHeartbeat])
        for _ in 0..<5 {
            #expect(machine.received(self.answer(false), jitter: 0) == [.scheduleHeartbeat(afterMilliseconds: 60_000)])
            #expect(machine.timerFired() == [.sendHeartbeat])
        }
        #expect(machine.tunnelURLs.isEmpty)
    }

    @Test func disabledConnectorHeartbeatsEveryFiveMinutesAndIgnoresTheFlag() {
        var machine = HeartbeatStateMachine(remoteAccessEnabled: false)
        _ = machine.start()
        #expect(machine.received(self.answer(true), jitter: 0) == [.scheduleHeartbeat(afterMilliseconds: 300_000)])
        #expect(machine.tunnelURLs.isEmpty)
    }

    @Test(arguments: [(true, 54_000, 66_000), (false, 270_000, 330_000)])
    func jitterStaysWithinTenPercent(enabled: Bool, low: Int64, high: Int64) {
        for jitter in [-1.0, -0.5, 0, 0.5, 1, 7, -7] {
            var machine = HeartbeatStateMachine(remoteAccessEnabled: enabled)
            _ = machine.start()
            guard case .scheduleHeartbeat(let delay)? = machine.received(self.answer(false), jitter: jitter).last else {
                Issue.record("no schedule")
                return
            }
            #expect((low...high).contains(delay), "jitter \(jitter) gave \(delay)")
        }
    }

    @Test func flagOnDialsEveryURLFlagOffClosesTunnels() {
        var machine = HeartbeatStateMachine(remoteAccessEnabled: true)
        _ = machine.start()
        #expect(machine.received(self.answer(true), jitter: 0) == [.openTunnels(self.urls), .scheduleHeartbeat(afterMilliseconds: 60_000)])
        _ = machine.timerFired()
        // Same flag, same URLs: nothing to change.
        #expect(machine.received(self.answer(true), jitter: 0) == [.scheduleHeartbeat(afterMilliseconds: 60_000)])
        _ = machine.timerFired()
        // A relay node was added.
        let three = self.urls + ["wss://relay-3:8443/v1/tunnel"]
        #expect(machine.received(self.answer(true, three), jitter: 0) == [.openTunnels(three), .scheduleHeartbeat(afterMilliseconds: 60_000)])
        _ = machine.timerFired()
        #expect(
            machine.received(self.answer(false), jitter: 0)
                == [.closeTunnels(reason: "the access request ended"), .scheduleHeartbeat(afterMilliseconds: 60_000)])
        #expect(machine.tunnelURLs.isEmpty)
    }

    @Test func disablingClosesTunnelsAtOnceAndSlowsHeartbeats() {
        var machine = HeartbeatStateMachine(remoteAccessEnabled: true)
        _ = machine.start()
        _ = machine.received(self.answer(true), jitter: 0)
        #expect(
            machine.remoteAccessChanged(enabled: false, jitter: 0)
                == [.closeTunnels(reason: "remote access is disabled"), .sendHeartbeat])
        // The answer schedules the next heartbeat at the disabled interval.
        #expect(machine.received(self.answer(true), jitter: 0) == [.scheduleHeartbeat(afterMilliseconds: 300_000)])
        // Re-enabling heartbeats at once, so a waiting request is served without a 300 s wait.
        #expect(machine.remoteAccessChanged(enabled: true, jitter: 0) == [.sendHeartbeat])
        #expect(machine.received(self.answer(true), jitter: 0) == [.openTunnels(self.urls), .scheduleHeartbeat(afterMilliseconds: 60_000)])
    }

    /// The heartbeat in flight was built before the change: the relay must still learn the new mode
    /// now, not 300 s later.
    @Test func aModeChangeDuringAHeartbeatInFlightIsSentRightAfterItsAnswer() {
        var machine = HeartbeatStateMachine(remoteAccessEnabled: true)
        _ = machine.start()
        _ = machine.received(self.answer(true), jitter: 0)
        #expect(machine.timerFired() == [.sendHeartbeat])
        #expect(machine.remoteAccessChanged(enabled: false, jitter: 0) == [.closeTunnels(reason: "remote access is disabled")])
        #expect(machine.received(self.answer(true), jitter: 0) == [.sendHeartbeat], "the old mode went out: tell again")
        #expect(machine.received(self.answer(true), jitter: 0) == [.scheduleHeartbeat(afterMilliseconds: 300_000)])
        // A failure clears the debt: the retry carries the state as it is then.
        _ = machine.timerFired()
        #expect(machine.remoteAccessChanged(enabled: true, jitter: 0) == [])
        #expect(machine.failed(jitter: 0) == [.scheduleHeartbeat(afterMilliseconds: 10_000)])
    }

    @Test func aCustomerDecisionIsSentAtOnceOrRightAfterTheHeartbeatInFlight() {
        var machine = HeartbeatStateMachine(remoteAccessEnabled: true)
        #expect(machine.relayMustLearn() == [], "not started")
        _ = machine.start()
        #expect(machine.relayMustLearn() == [], "one heartbeat in flight at a time")
        #expect(machine.received(self.answer(false), jitter: 0) == [.sendHeartbeat])
        #expect(machine.received(self.answer(false), jitter: 0) == [.scheduleHeartbeat(afterMilliseconds: 60_000)])
        #expect(machine.relayMustLearn() == [.sendHeartbeat])
    }

    @Test func failuresRetrySoonerAndKeepTunnels() {
        var machine = HeartbeatStateMachine(remoteAccessEnabled: true)
        _ = machine.start()
        _ = machine.received(self.answer(true), jitter: 0)
        _ = machine.timerFired()
        #expect(machine.failed(jitter: 0) == [.scheduleHeartbeat(afterMilliseconds: 10_000)])
        #expect(machine.tunnelURLs == self.urls)
    }

    @Test func oneHeartbeatInFlightAndStrayEventsIgnored() {
        var machine = HeartbeatStateMachine(remoteAccessEnabled: true)
        #expect(machine.timerFired() == [], "not started")
        #expect(machine.received(self.answer(true), jitter: 0) == [], "no heartbeat sent yet")
        _ = machine.start()
        #expect(machine.start() == [])
        #expect(machine.timerFired() == [], "an answer is still awaited")
        _ = machine.received(self.answer(false), jitter: 0)
        #expect(machine.received(self.answer(true), jitter: 0) == [], "a second answer to one heartbeat")
        #expect(machine.failed(jitter: 0) == [])
    }

    @Test func relayChosenIntervalIsClamped() {
        var machine = HeartbeatStateMachine(remoteAccessEnabled: true)
        _ = machine.start()
        #expect(machine.received(self.answer(false, next: 5_000), jitter: 0) == [.scheduleHeartbeat(afterMilliseconds: 5_000)])
        _ = machine.timerFired()
        #expect(machine.received(self.answer(false, next: 10), jitter: 0) == [.scheduleHeartbeat(afterMilliseconds: 1_000)])
        _ = machine.timerFired()
        #expect(machine.received(self.answer(false, next: 86_400_000), jitter: 0) == [.scheduleHeartbeat(afterMilliseconds: 300_000)])
        // Whatever number the relay sends, the conversion saturates instead of trapping.
        typealias Answer = HeartbeatStateMachine.Answer
        #expect(Answer.milliseconds(fromSeconds: Int.max) == Int64.max && Answer.milliseconds(fromSeconds: Int.min) == Int64.min)
        #expect(Answer.milliseconds(fromSeconds: 30) == 30_000 && Answer.milliseconds(fromSeconds: nil) == nil)
        for seconds in [Int.max, Int.min, -1] {
            _ = machine.timerFired()
            let next = Answer.milliseconds(fromSeconds: seconds)
            let actions = machine.received(self.answer(false, next: next), jitter: 1)
            #expect(actions == [.scheduleHeartbeat(afterMilliseconds: seconds < 0 ? 1_100 : 330_000)])
        }
    }
}

@Suite struct HeartbeatNowTests {
    @Test func aLostTunnelAsksAtOnceButNeverTwiceInFlight() {
        var machine = HeartbeatStateMachine(remoteAccessEnabled: true)
        #expect(machine.heartbeatNow() == [], "not started")
        #expect(machine.start() == [.sendHeartbeat])
        #expect(machine.heartbeatNow() == [], "one heartbeat in flight at a time")
        _ = machine.received(.init(remoteUIRequested: true, websocketURLs: ["wss://a/v1/tunnel"]), jitter: 0)
        #expect(machine.heartbeatNow() == [.sendHeartbeat])
        let actions = machine.received(.init(remoteUIRequested: false, websocketURLs: ["wss://a/v1/tunnel"]), jitter: 0)
        #expect(actions == [.closeTunnels(reason: "the access request ended"), .scheduleHeartbeat(afterMilliseconds: 60_000)])
    }
}

/// The relay's heartbeat answer names the relay nodes; the connector dials only hosts the customer allowed.
@Suite struct TunnelURLPolicyTests {
    @Test func onlyTheRelayHostAndAllowedHostsAreDialedAtMostSixteen() {
        let policy = TunnelURLPolicy(relayHost: "relay.example.com", allowedHosts: ["relay-b.example.com", "*.nodes.example.com"])
        let (kept, dropped) = policy.filter([
            "wss://relay.example.com:8443/v1/tunnel", "wss://RELAY-B.example.com/v1/tunnel", "wss://n1.nodes.example.com/v1/tunnel",
            "wss://evil.example/v1/tunnel", "wss://nodes.example.com/v1/tunnel", "wss://relay.example.com.evil.net/v1/tunnel",
            "https://relay.example.com/v1/tunnel", "ws://relay.example.com/v1/tunnel", "wss://relay.example.com:8443/v1/tunnel",
        ])
        #expect(kept == ["wss://relay.example.com:8443/v1/tunnel", "wss://relay-b.example.com:443/v1/tunnel", "wss://n1.nodes.example.com:443/v1/tunnel"])
        #expect(dropped.map(\.url) == [
            "wss://evil.example/v1/tunnel", "wss://nodes.example.com/v1/tunnel", "wss://relay.example.com.evil.net/v1/tunnel",
            "https://relay.example.com/v1/tunnel", "ws://relay.example.com/v1/tunnel",
        ])
        let many = (0..<40).map { "wss://n\($0).nodes.example.com/v1/tunnel" }
        let capped = policy.filter(many)
        #expect(capped.kept.count == TunnelURLPolicy.defaultMaxURLs && capped.dropped.count == 40 - TunnelURLPolicy.defaultMaxURLs)
    }
}
