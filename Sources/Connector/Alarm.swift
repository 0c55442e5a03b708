import NIOConcurrencyHelpers

/// A sleep on an injected clock that another task can end early: a redial wait ends when its relay
/// is no longer wanted, a heartbeat timer when it is set again. Once rung, it stays rung.
final class Alarm: Sendable {
    private struct State {
        var rung = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = NIOLockedValueBox(State())

    init() {}

    var hasRung: Bool { self.state.withLockedValue { $0.rung } }

    /// Sleeps `duration` on `clock`: true when the time passed, false when `ring()` came first or
    /// the task was cancelled.
    func sleep(for duration: Duration, on clock: any Clock<Duration>) async -> Bool {
        guard !self.hasRung else { return false }
        return await withTaskGroup(of: Bool.self) { group in
            group.addTask { (try? await clock.sleep(for: duration, tolerance: nil)) != nil }
            group.addTask {
                await self.untilRung()
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    func ring() {
        let waiter = self.state.withLockedValue { state -> CheckedContinuation<Void, Never>? in
            state.rung = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    private func untilRung() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = self.state.withLockedValue { state -> Bool in
                    if state.rung || Task.isCancelled { return true }
                    state.waiter = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let waiter = self.state.withLockedValue { state -> CheckedContinuation<Void, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume()
        }
    }
}
