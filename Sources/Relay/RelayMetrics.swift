import CoreMetrics
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import RelayAPI
import RelayModel
import Telemetry
import TunnelCore

/// The relay node's Prometheus metrics (docs/OPERATIONS.md "Metrics"). Code records through
/// swift-metrics; swift-prometheus keeps the values and writes the exposition. Each node has its
/// own registry (tests run several nodes in one process), so nothing goes through the global
/// `MetricsSystem`.
public final class RelayMetrics: Sendable {
    private let metrics = MetricsRegistry(catalog: RelayMetrics.catalog)
    /// Tunnels seen since start, by cluster and node: a later tunnel from one of them is a reconnect.
    private let seenTunnels = NIOLockedValueBox<Set<String>>([])

    public init() {
        // Known series start at 0, so that rate() sees their first increase.
        for outcome in ["ok", "unauthorized", "refused", "store_unavailable", "error"] { _ = self.counter("relay_heartbeats_total", ["outcome": outcome]) }
        for kind in AuthFailure.allCases { _ = self.counter("relay_auth_failures_total", ["kind": kind.rawValue]) }
        for direction in ["to_cluster", "to_expert"] { _ = self.counter("relay_bytes_total", ["direction": direction]) }
        _ = self.counter("relay_streams_opened_total", [:])
        _ = self.counter("relay_tunnel_reconnects_total", [:])
        self.gauge("relay_build_info", ["version": ProductVersion.current]).record(1)
    }

    /// What failed to authenticate (`relay_auth_failures_total{kind}`).
    public enum AuthFailure: String, CaseIterable, Sendable {
        /// An API or session bearer token (expert or operator).
        case apiToken = "api_token"
        /// A connector's credential (heartbeat or tunnel).
        case connectorCredential = "connector_credential"
        /// An enrollment token at registration.
        case enrollment
        /// A valid token without the role the call needs (403).
        case role
    }

    // MARK: events

    func heartbeat(outcome: String) { self.counter("relay_heartbeats_total", ["outcome": outcome]).increment() }

    func authFailed(_ kind: AuthFailure) { self.counter("relay_auth_failures_total", ["kind": kind.rawValue]).increment() }

    /// A tunnel came up; one from a node seen before (since this relay started) is a reconnect.
    func tunnelUp(cluster: String, node: String) {
        let again = self.seenTunnels.withLockedValue { !$0.insert("\(cluster)/\(node)").inserted }
        if again { self.counter("relay_tunnel_reconnects_total", [:]).increment() }
    }

    /// Time from accepting the connection to the websocket upgrade (TLS and the relay's decision included).
    func handshake(link: String, took: TimeAmount) {
        self.timer("relay_handshake_duration_seconds", ["link": link]).recordNanoseconds(took.nanoseconds)
    }

    /// One expert request carried by a session: opened or refused (by the relay or the customer's connector), bytes, time.
    func stream(_ exchange: ProxyExchangeRecord) {
        if let code = exchange.refusalCode {
            // The relay's own refusal, or the connector's answer saying it refused (privacy settings, say).
            self.counter("relay_streams_refused_total", ["code": Self.boundedCode(code)]).increment()
        }
        if case .refused = exchange.outcome { return }
        self.counter("relay_streams_opened_total", [:]).increment()
        self.counter("relay_bytes_total", ["direction": "to_cluster"]).increment(by: Int64(exchange.requestBodyBytes))
        self.counter("relay_bytes_total", ["direction": "to_expert"]).increment(by: Int64(exchange.responseBodyBytes))
        self.timer("relay_stream_duration_seconds", [:]).recordNanoseconds(exchange.duration.nanoseconds)
    }

    /// One API call, labelled by its route (not its path: IDs would make a series each).
    func apiRequest(route: String, status: UInt, took: Duration) {
        self.timer("relay_api_request_duration_seconds", ["route": route, "status": String(status)]).recordNanoseconds(MetricsRegistry.nanoseconds(took))
    }

    func storeOperation(_ operation: String, failed: Bool, took: Duration) {
        self.timer("relay_store_operation_duration_seconds", ["operation": operation, "outcome": failed ? "error" : "ok"])
            .recordNanoseconds(MetricsRegistry.nanoseconds(took))
    }


    // MARK: state, set when scraped

    /// The figures that describe now rather than count events, as `RelayServer` sees them at a scrape.
    struct Snapshot {
        var tunnels: Int
        var clusters: Int
        var sessions: Int
        /// By state; nil when the store did not answer (the gauges then read NaN, not a stale count).
        var requests: [String: Int]?
        var ready: Bool
        var storeAvailable: Bool
    }

    func record(_ snapshot: Snapshot) {
        self.gauge("relay_tunnels_connected", [:]).record(snapshot.tunnels)
        self.gauge("relay_clusters_connected", [:]).record(snapshot.clusters)
        self.gauge("relay_sessions_active", [:]).record(snapshot.sessions)
        for state in ["pending", "approved"] {
            self.gauge("relay_access_requests", ["state": state]).record(snapshot.requests.map { Double($0[state] ?? 0) } ?? .nan)
        }
        self.gauge("relay_ready", [:]).record(snapshot.ready ? 1 : 0)
        self.gauge("relay_store_up", [:]).record(snapshot.storeAvailable ? 1 : 0)
    }

    /// The Prometheus text exposition (format 0.0.4).
    public func exposition() -> [UInt8] { self.metrics.exposition() }

    private func counter(_ name: String, _ labels: [String: String]) -> CoreMetrics.Counter { self.metrics.counter(name, labels) }
    private func timer(_ name: String, _ labels: [String: String]) -> CoreMetrics.Timer { self.metrics.timer(name, labels) }
    private func gauge(_ name: String, _ labels: [String: String]) -> CoreMetrics.Gauge { self.metrics.gauge(name, labels) }

    /// A code the connector sent, as a label value only if it is one the programs use: a peer must
    /// not be able to make a series per request.
    public static func boundedCode(_ code: String) -> String {
        Self.streamCodes.contains(code) ? code : "other"
    }

    /// Every refusal code a stream can carry: the relay's own and every hop's.
    static let streamCodes: Set<String> = Set(APIErrorCode.allCases.map(\.rawValue)).union(StreamErrorCode.allCases.map(\.rawValue))

    /// Every metric the relay exposes, with its help text (also what docs/OPERATIONS.md lists).
    static let catalog: [String: String] = [
        "relay_build_info": "The relay's version (always 1).",
        "relay_tunnels_connected": "Connector tunnels connected to this relay node.",
        "relay_clusters_connected": "Clusters with at least one tunnel to this relay node.",
        "relay_sessions_active": "Expert sessions open on this relay node.",
        "relay_access_requests": "Access requests by state: pending (awaiting the customer) and approved (in force now).",
        "relay_ready": "1 while /readyz answers ready.",
        "relay_store_up": "1 while the store answers.",
        "relay_heartbeats_total": "Connector heartbeats answered, by outcome.",
        "relay_auth_failures_total": "Refused credentials, by kind (401s, and 403 for a token without the role).",
        "relay_streams_opened_total": "Expert requests carried into a tunnel.",
        "relay_streams_refused_total": "Expert requests refused, by the relay or the customer's connector, by error code.",
        "relay_bytes_total": "Request and response body bytes carried for experts, by direction.",
        "relay_tunnel_reconnects_total": "Tunnels from a node that had connected to this relay before (since it started).",
        "relay_handshake_duration_seconds": "From accepting a connection to its websocket upgrade, by link (tunnel or session).",
        "relay_stream_duration_seconds": "One expert request through the relay, from its head to the end of its response.",
        "relay_api_request_duration_seconds": "JSON API calls (heartbeats included), by route and status.",
        "relay_store_operation_duration_seconds": "Store calls, by operation and outcome.",
    ]
}

