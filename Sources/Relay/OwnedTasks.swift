import NIOCore
import ServiceLifecycle
import TunnelCore

/// Work that event-loop code starts (a handshake decision, an API call, a record to store) runs
/// here, owned by the relay's service group and awaited when it stops: nothing runs as a stray
/// task. It stops after the listener (nothing new arrives) and before the store (what it writes lands).
public final class OwnedTasks: Service, Sendable {
    private typealias Job = @Sendable () async -> Void
    private let jobs: AsyncStream<Job>
    private let continuation: AsyncStream<Job>.Continuation

    public init() {
        (self.jobs, self.continuation) = AsyncStream.makeStream(of: Job.self)
    }

    static let stopping = RelayError(.relayStopping, "the relay node is shutting down; retry")

    /// Runs `work`; its result completes the returned future on `loop`. Once the relay stops,
    /// the future fails with 503 `relay_stopping`.
    func submit<T: Sendable>(on loop: EventLoop, _ work: @escaping @Sendable () async throws -> T) -> EventLoopFuture<T> {
        let promise = loop.makePromise(of: T.self)
        let job: Job = {
            do {
                promise.succeed(try await work())
            } catch {
                promise.fail(error)
            }
        }
        if case .terminated = self.continuation.yield(job) { promise.fail(Self.stopping) }
        return promise.futureResult
    }

    /// Runs what is submitted until graceful shutdown, then what is already queued, and returns
    /// once all of it has finished.
    public func run() async {
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                for await job in self.jobs { group.addTask { await job() } }
            }
        } onGracefulShutdown: {
            self.continuation.finish()
        }
    }
}
