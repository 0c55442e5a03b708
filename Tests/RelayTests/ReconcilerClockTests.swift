import Foundation
import Logging
import NIOConcurrencyHelpers
@testable import Relay
import RelayAPI
import RelayModel
import TestSupport
import Testing

/// The reconciler ticks on the clock it is given: a request past its window is expired on the
/// first tick after it lapsed, not before, and the test drives the ticks instead of waiting.
@Suite struct ReconcilerClockTests {
    /// Mission Control on a store of its own, its wall clock moved by the test; an operator, expert
    /// alice and cluster demo.
    static func control(
        _ configure: (inout RelayConfig) -> Void = { _ in }
    ) async throws -> (MissionControl, NIOLockedValueBox<Date>, TokenRecord, Logger) {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("reconciler-\(UUID().uuidString.prefix(8))").path
        let wall = NIOLockedValueBox(Date())
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        var config = RelayConfig(certificateFile: "unused.pem", privateKeyFile: "unused.key", dataDirectory: folder)
        configure(&config)
        let control = try RelayServer.openEmbeddedControl(config: config, logger: logger, clock: { wall.withLockedValue { $0 } })
        let ops = try await control.createToken(CreateTokenRequest(name: "root", role: .ops, ttlSeconds: nil), by: nil)
        let operator_ = try await control.authenticateUser(bearer: ops.secret, action: "test")
        _ = try await control.createToken(CreateTokenRequest(name: "alice", role: .expert, ttlSeconds: nil), by: operator_)
        _ = try await control.addCluster(CreateClusterRequest(id: "demo", description: "test"), by: operator_)
        return (control, wall, operator_, logger)
    }

    @Test func aLapsedRequestIsExpiredOnTheNextTickOfTheReconcilersClock() async throws {
        let (control, wall, operator_, logger) = try await Self.control()
        let pending = try await control.createRequest(
            CreateAccessRequest(clusterID: "demo", expert: "alice", reason: "test", role: .admin, durationSeconds: 60), by: operator_)
        let request = try await control.approve(pending, by: "test", now: control.now)
        wall.withLockedValue { $0 = $0.addingTimeInterval(61) }  // past its window

        // Made after the approval, so no wake-up from it is waiting: only the clock makes it tick.
        let clock = ManualClock()
        let reconciler = AccessReconciler(
            control: control, registry: TunnelRegistry(), sessions: LiveSessions(), interval: .seconds(1), clock: clock)
        let services = RunningServices([reconciler], logger: logger)
        func state() async throws -> RequestState? { try await control.store.request(id: request.id)?.state }
        #expect(try await TestWait.poll { clock.pendingSleeps == [.seconds(1)] }, "the reconciler waits for its interval")
        clock.advance(by: .milliseconds(999))
        #expect(try await state() == .approved, "no tick before the interval")
        clock.advance(by: .milliseconds(1))
        #expect(try await TestWait.poll { try await state() == .expired }, "expired on the tick")
        // The audit record is written just after the state (a separate write): wait for it.
        #expect(try await TestWait.poll {
            try await control.store.audit(since: nil, afterID: 0, limit: 100).contains {
                $0.action == "request.expire" && $0.subject == String(request.id) && $0.actor == "relay"
            }
        }, "the expiry is audited")
        await services.stop()
    }

    /// A request the customer never decides expires after `pending_request_ttl`, saying so; one
    /// made later is untouched.
    @Test func aRequestTheCustomerNeverDecidesExpiresAfterThePendingLimit() async throws {
        let (control, wall, operator_, _) = try await Self.control { $0.pendingRequestTTLSeconds = 600 }
        let ask = CreateAccessRequest(clusterID: "demo", expert: "alice", reason: "test", role: .admin, durationSeconds: 60)
        let old = try await control.createRequest(ask, by: operator_)
        wall.withLockedValue { $0 = $0.addingTimeInterval(300) }
        let newer = try await control.createRequest(ask, by: operator_)
        wall.withLockedValue { $0 = $0.addingTimeInterval(299) }
        #expect(try await control.expireDue().isEmpty, "not before the limit")
        wall.withLockedValue { $0 = $0.addingTimeInterval(2) }  // the store keeps times to the millisecond
        let expired = try await control.expireDue()
        #expect(expired.map(\.id) == [old.id])
        let stored = try #require(try await control.store.request(id: old.id))
        #expect(stored.state == .expired && stored.changedBy == "relay" && stored.endReason == "the customer did not decide within 10 min")
        #expect(try await control.store.request(id: newer.id)?.state == .pending)
        #expect(try await control.store.audit(since: nil, afterID: 0, limit: 100).contains {
            $0.action == "request.expire" && $0.subject == String(old.id) && $0.reason == "the customer did not decide within 10 min"
        })
    }
}
