import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Waits for SIGINT or SIGTERM, so a program can close its tunnels and listeners before it exits.
public enum TerminationSignal {
    public static func wait() async -> Int32 {
        await withCheckedContinuation { (continuation: CheckedContinuation<Int32, Never>) in
            let queue = DispatchQueue(label: "termination-signal")
            let box = SignalSources()
            for signalNumber in [SIGINT, SIGTERM] {
                signal(signalNumber, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: queue)
                source.setEventHandler {
                    guard !box.fired else { return }
                    box.fired = true
                    box.sources.forEach { $0.cancel() }
                    continuation.resume(returning: signalNumber)
                }
                box.sources.append(source)
                source.resume()
            }
        }
    }
}

private final class SignalSources: @unchecked Sendable {
    // Touched only on the signal queue.
    var sources: [DispatchSourceSignal] = []
    var fired = false
}

/// Calls `handler` on every SIGHUP (the conventional "reload your config" signal) until cancelled.
public final class HangupSignal: @unchecked Sendable {
    private let source: DispatchSourceSignal

    public init(_ handler: @escaping @Sendable () -> Void) {
        signal(SIGHUP, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: DispatchQueue(label: "hangup-signal"))
        source.setEventHandler(handler: handler)
        source.resume()
        self.source = source
    }

    public func cancel() { self.source.cancel() }
}
