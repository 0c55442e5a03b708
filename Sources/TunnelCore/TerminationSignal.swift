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
        await self.install().wait()
    }

    /// Starts watching now (synchronously): a signal that comes before `wait` is awaited is kept,
    /// not lost (a program that says "ready" and is stopped at once still stops).
    public static func install() -> Watch {
        let (stream, continuation) = AsyncStream<Int32>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let queue = DispatchQueue(label: "termination-signal")
        var sources: [DispatchSourceSignal] = []
        for signalNumber in [SIGINT, SIGTERM] {
            // The default action (exit at once) off; the source below takes the signal (libdispatch
            // installs its own handler when the source is resumed).
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: queue)
            source.setEventHandler { continuation.yield(signalNumber) }
            source.resume()
            sources.append(source)
        }
        return Watch(stream: stream, sources: sources)
    }

    public struct Watch: @unchecked Sendable {
        let stream: AsyncStream<Int32>
        let sources: [DispatchSourceSignal]

        /// The first signal (SIGINT or SIGTERM) since `install`.
        public func wait() async -> Int32 {
            for await signal in self.stream {
                self.sources.forEach { $0.cancel() }
                return signal
            }
            return SIGTERM
        }
    }
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
