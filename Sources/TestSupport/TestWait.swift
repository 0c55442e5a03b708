/// The one way tests wait: for an observable event, polled, with a generous bound (never a fixed sleep).
public enum TestWait {
    /// Polls `condition` every 20 ms until it holds (true) or `seconds` pass (false). 30 s by
    /// default: generous, for a machine loaded by a second build beside the suite (seen: a tunnel
    /// taking over 10 s to come up while the 100-concurrent-requests test ran).
    @discardableResult
    public static func poll(seconds: Int = 30, _ condition: () async throws -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while true {
            if try await condition() { return true }
            if ContinuousClock.now >= deadline { return false }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}
