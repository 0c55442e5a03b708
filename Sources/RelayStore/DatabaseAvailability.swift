import Foundation
import NIOConcurrencyHelpers

/// The store cannot answer now (the database is down, restarting or unreachable): callers answer
/// 503 with `reason`, which names no secret (no password, no query arguments).
public struct StoreUnavailable: Error, CustomStringConvertible, Equatable {
    public var reason: String

    public init(reason: String) { self.reason = reason }

    public var description: String { "the relay's database is unavailable (\(self.reason))" }
}

/// Whether the database answers, shared by every query of a store. Once a query finds it gone,
/// every query fails at once with the same reason (no caller waits out a timeout of its own) until
/// one probe, repeated in the background, gets an answer again. Pure state; the store does the I/O.
struct DatabaseAvailability: Sendable {
    private(set) var downReason: String?
    /// Set while a probe runs: one at a time.
    private(set) var probing = false

    /// Calls in a row whose connection answered too slowly: one is a slow statement, several a
    /// connection path gone silent (a network cut without a reset).
    private(set) var slowInARow = 0
    static let slowLimit = 3

    var isUp: Bool { self.downReason == nil }

    /// A call got its connection but no answer in time. True when that makes `slowLimit` in a row.
    mutating func answeredTooSlowly() -> Bool {
        self.slowInARow += 1
        return self.slowInARow >= Self.slowLimit
    }

    mutating func answered() {
        self.slowInARow = 0
    }

    /// A query failed for want of the database. True when a probe should start now.
    mutating func failed(_ reason: String) -> Bool {
        if self.downReason == nil { self.downReason = reason }
        guard !self.probing else { return false }
        self.probing = true
        return true
    }

    /// A probe got an answer: queries go to the database again.
    mutating func recovered() {
        self.downReason = nil
        self.probing = false
        self.slowInARow = 0
    }

    /// The store is closing: no probe runs any more.
    mutating func probeStopped() {
        self.probing = false
    }
}

public struct DeadlinePassed: Error, CustomStringConvertible {
    public var description: String { "no answer in time" }
}

/// The first of `operation` and a timer of `timeout`. The operation is not awaited past the
/// timeout: a query stuck on a silent connection ends with its connection, not with the caller.
public func withDeadline<T: Sendable>(_ timeout: Duration, _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
    let race = NIOLockedValueBox(DeadlineRace<T>())
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            race.withLockedValue { $0.continuation = continuation }
            let work = Task {
                let result: Result<T, any Error>
                do { result = .success(try await operation()) } catch { result = .failure(error) }
                let (waiting, timer) = race.withLockedValue { ($0.continuation.take(), $0.timer.take()) }
                timer?.cancel()
                waiting?.resume(with: result)
            }
            let timer = Task {
                guard (try? await Task.sleep(for: timeout)) != nil else { return }
                if let waiting = race.withLockedValue({ $0.continuation.take() }) {
                    work.cancel()
                    waiting.resume(throwing: DeadlinePassed())
                }
            }
            let settled = race.withLockedValue { state in
                state.work = work
                state.timer = timer
                return state.continuation == nil
            }
            if settled { timer.cancel() }  // the work finished before the timer was stored
        }
    } onCancel: {
        let (waiting, work, timer) = race.withLockedValue { ($0.continuation.take(), $0.work, $0.timer.take()) }
        work?.cancel()
        timer?.cancel()
        waiting?.resume(throwing: CancellationError())
    }
}

private struct DeadlineRace<T: Sendable>: @unchecked Sendable {
    var continuation: CheckedContinuation<T, any Error>?
    var work: Task<Void, Never>?
    var timer: Task<Void, Never>?
}
