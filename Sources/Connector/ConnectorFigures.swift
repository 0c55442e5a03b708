import CoreMetrics
import Foundation
import Logging
import NIOConcurrencyHelpers
import RelayModel
import ServiceLifecycle
import Telemetry
import TunnelCore

/// What this connector has done since it started: `connector status --json` shows it, and the
/// optional node_exporter textfile (`metrics_textfile`) carries it to Prometheus. The connector
/// never listens, so there is no endpoint to scrape.
public final class ConnectorFigures: Sendable {
    public struct Counts: Codable, Sendable, Equatable {
        public var since: Date
        public var heartbeatsAnswered: Int64 = 0
        public var heartbeatsFailed: Int64 = 0
        /// Tunnels that came up (each dial that succeeded, first ones and redials).
        public var tunnelsOpened: Int64 = 0
        /// Expert requests the customer's settings let through, and those refused.
        public var requestsAllowed: Int64 = 0
        public var requestsRefused: Int64 = 0
        /// Body bytes to the cluster's components and back to the experts.
        public var bytesToCluster: Int64 = 0
        public var bytesToExperts: Int64 = 0
    }

    private let box: NIOLockedValueBox<Counts>

    public init(since: Date) { self.box = NIOLockedValueBox(Counts(since: since)) }

    public var counts: Counts { self.box.withLockedValue { $0 } }

    func heartbeat(answered: Bool) {
        self.box.withLockedValue { if answered { $0.heartbeatsAnswered += 1 } else { $0.heartbeatsFailed += 1 } }
    }

    func tunnelOpened() { self.box.withLockedValue { $0.tunnelsOpened += 1 } }

    func request(allowed: Bool, bytesToCluster: Int, bytesToExperts: Int) {
        self.box.withLockedValue {
            if allowed { $0.requestsAllowed += 1 } else { $0.requestsRefused += 1 }
            $0.bytesToCluster += Int64(bytesToCluster)
            $0.bytesToExperts += Int64(bytesToExperts)
        }
    }
}

/// Writes the connector's figures for node_exporter's textfile collector every `interval` and at
/// stop: to a temporary file beside it, then renamed (node_exporter never reads half a file).
struct MetricsTextfileWriter: Service {
    let path: String
    let interval: Duration
    let status: @Sendable () -> ConnectorStatus
    let figures: ConnectorFigures
    let clock: any Clock<Duration>
    let logger: Logger
    private let metrics = MetricsRegistry(catalog: MetricsTextfileWriter.catalog)
    private let exported = NIOLockedValueBox<ConnectorFigures.Counts?>(nil)

    init(
        path: String, interval: Duration = .seconds(15), figures: ConnectorFigures, clock: any Clock<Duration>, logger: Logger,
        status: @escaping @Sendable () -> ConnectorStatus
    ) {
        self.path = path
        self.interval = interval
        self.figures = figures
        self.clock = clock
        self.logger = logger
        self.status = status
    }

    func run() async {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            self.write()
            do {
                try await cancelWhenGracefulShutdown { [clock, interval] in try await clock.sleep(for: interval, tolerance: nil) }
            } catch {
                break  // shutting down
            }
        }
        self.write()  // the figures as they stand at the stop
    }

    func write() {
        let text = self.exposition(status: self.status(), counts: self.figures.counts)
        let temporary = self.path + ".tmp"
        do {
            try Data(text).write(to: URL(fileURLWithPath: temporary))
            // node_exporter runs as another user: the figures are not secret, the file is readable.
            chmod(temporary, 0o644)
            guard rename(temporary, self.path) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        } catch {
            self.logger.warning("cannot write the metrics textfile", metadata: ["path": "\(self.path)", "error": "\(error)"])
        }
    }

    /// The figures in Prometheus's text format. Counters move by what happened since the last write.
    func exposition(status: ConnectorStatus, counts: ConnectorFigures.Counts) -> [UInt8] {
        let before = self.exported.withLockedValue { old in defer { old = counts }; return old } ?? ConnectorFigures.Counts(since: counts.since)
        func add(_ name: String, _ labels: [String: String], _ now: Int64, _ then: Int64) {
            self.metrics.counter(name, labels).increment(by: max(0, now - then))
        }
        add("connector_heartbeats_total", ["outcome": "answered"], counts.heartbeatsAnswered, before.heartbeatsAnswered)
        add("connector_heartbeats_total", ["outcome": "failed"], counts.heartbeatsFailed, before.heartbeatsFailed)
        add("connector_tunnels_opened_total", [:], counts.tunnelsOpened, before.tunnelsOpened)
        add("connector_requests_total", ["decision": "allow"], counts.requestsAllowed, before.requestsAllowed)
        add("connector_requests_total", ["decision": "deny"], counts.requestsRefused, before.requestsRefused)
        add("connector_bytes_total", ["direction": "to_cluster"], counts.bytesToCluster, before.bytesToCluster)
        add("connector_bytes_total", ["direction": "to_experts"], counts.bytesToExperts, before.bytesToExperts)
        self.metrics.gauge("connector_info", ["cluster": status.cluster, "node": status.node, "version": ProductVersion.current]).record(1)
        self.metrics.gauge("connector_start_time_seconds").record(counts.since.timeIntervalSince1970)
        if let last = status.lastHeartbeatAt { self.metrics.gauge("connector_last_heartbeat_timestamp_seconds").record(last.timeIntervalSince1970) }
        self.metrics.gauge("connector_tunnels_connected").record(status.tunnels.count)
        self.metrics.gauge("connector_sessions_live").record(status.liveSessions)
        self.metrics.gauge("connector_requests_pending_approval").record(status.pendingRequests)
        self.metrics.gauge("connector_audit_failing").record(status.auditFailure == nil ? 0 : 1)
        for mode in PrivacyMode.allCases { self.metrics.gauge("connector_mode", ["mode": mode.rawValue]).record(mode == status.mode ? 1 : 0) }
        return self.metrics.exposition()
    }

    static let catalog: [String: String] = [
        "connector_info": "The connector's cluster, node and version (always 1).",
        "connector_start_time_seconds": "When this connector started (Unix time).",
        "connector_last_heartbeat_timestamp_seconds": "When the relay last answered a heartbeat (Unix time).",
        "connector_heartbeats_total": "Heartbeats since start, by outcome (answered, failed).",
        "connector_tunnels_connected": "Tunnels to relay nodes up now.",
        "connector_tunnels_opened_total": "Tunnels that came up since start (first dials and redials).",
        "connector_requests_total": "Expert requests since start, by the customer's settings' decision (allow, deny).",
        "connector_bytes_total": "Body bytes carried since start, by direction (to_cluster, to_experts).",
        "connector_sessions_live": "Expert sessions live now.",
        "connector_requests_pending_approval": "Access requests waiting for the customer's decision.",
        "connector_audit_failing": "1 while the audit log cannot be written (every request is refused meanwhile).",
        "connector_mode": "The privacy mode in force (1 for the current mode).",
    ]
}
