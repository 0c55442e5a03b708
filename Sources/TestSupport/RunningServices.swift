import Logging
import ServiceLifecycle

/// Services run as the programs run them, under one `ServiceGroup` (without signals), until `stop()`.
public final class RunningServices: Sendable {
    private let group: ServiceGroup
    private let task: Task<Void, any Error>

    public init(_ services: [any Service], logger: Logger) {
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: services, logger: logger))
        self.group = group
        self.task = Task { try await group.run() }
    }

    /// Graceful shutdown, in reverse order, as on SIGTERM; returns once every service has returned.
    public func stop() async {
        await self.group.triggerGracefulShutdown()
        _ = try? await self.task.value
    }
}
