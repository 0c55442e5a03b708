import CoreMetrics
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import TunnelCore

/// The relay node's Prometheus metrics (docs/OPERATIONS.md "Metrics"). Code records through
/// swift-metrics; swift-prometheus keeps the values and writes the exposition. Each node has its
/// own registry (tests run several nodes in one process), so nothing goes through the global
/// `MetricsSystem`.
public final class RelayMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let factory: DescribedMetricsFactory
    private let counters = NIOLockedValueBox<[String: CoreMetrics.Counter]>([:])
    private let timers = NIOLockedValueBox<[String: CoreMetrics.Timer]>([:])
    private let gauges = NIOLockedValueBox<[String: CoreMetrics.Gauge]>([:])
    /// Tunnels seen since start, by cluster and node: a later tunnel from one of them is a reconnect.
    private let seenTunnels = NIOLockedValueBox<Set<String>>([])

    public init() {
        self.factory = DescribedMetricsFactory(registry: self.registry, catalog: Self.catalog)
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
        self.timer("relay_api_request_duration_seconds", ["route": route, "status": String(status)]).recordNanoseconds(Self.nanoseconds(took))
    }

    func storeOperation(_ operation: String, failed: Bool, took: Duration) {
        self.timer("relay_store_operation_duration_seconds", ["operation": operation, "outcome": failed ? "error" : "ok"])
            .recordNanoseconds(Self.nanoseconds(took))
    }

    private static func nanoseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
    }

    // MARK: state, set when scraped

    /// The figures that describe now rather than count events, as `RelayServer` sees them at a scrape.
    struct Snapshot {
        var tunnels: Int
        var clusters: Int
        var sessions: Int
        var requests: [String: Int]
        var ready: Bool
        var storeAvailable: Bool
    }

    func record(_ snapshot: Snapshot) {
        self.gauge("relay_tunnels_connected", [:]).record(snapshot.tunnels)
        self.gauge("relay_clusters_connected", [:]).record(snapshot.clusters)
        self.gauge("relay_sessions_active", [:]).record(snapshot.sessions)
        for (state, count) in snapshot.requests { self.gauge("relay_access_requests", ["state": state]).record(count) }
        self.gauge("relay_ready", [:]).record(snapshot.ready ? 1 : 0)
        self.gauge("relay_store_up", [:]).record(snapshot.storeAvailable ? 1 : 0)
    }

    /// The Prometheus text exposition (format 0.0.4).
    public func exposition() -> [UInt8] { self.registry.emitToBuffer() }

    // MARK: handles

    private func counter(_ name: String, _ labels: [String: String]) -> CoreMetrics.Counter {
        let key = Self.key(name, labels)
        return self.counters.withLockedValue { cache in
            if let counter = cache[key] { return counter }
            let counter = CoreMetrics.Counter(label: name, dimensions: Self.sorted(labels), factory: self.factory)
            cache[key] = counter
            return counter
        }
    }

    private func timer(_ name: String, _ labels: [String: String]) -> CoreMetrics.Timer {
        let key = Self.key(name, labels)
        return self.timers.withLockedValue { cache in
            if let timer = cache[key] { return timer }
            let timer = CoreMetrics.Timer(label: name, dimensions: Self.sorted(labels), factory: self.factory)
            cache[key] = timer
            return timer
        }
    }

    private func gauge(_ name: String, _ labels: [String: String]) -> CoreMetrics.Gauge {
        let key = Self.key(name, labels)
        return self.gauges.withLockedValue { cache in
            if let gauge = cache[key] { return gauge }
            let gauge = CoreMetrics.Gauge(label: name, dimensions: Self.sorted(labels), factory: self.factory)
            cache[key] = gauge
            return gauge
        }
    }

    private static func key(_ name: String, _ labels: [String: String]) -> String {
        ([name] + Self.sorted(labels).map { "\($0.0)=\($0.1)" }).joined(separator: "\u{1}")
    }

    private static func sorted(_ labels: [String: String]) -> [(String, String)] {
        labels.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// A code the connector sent: kept only if it looks like one (a label value must not be anything a peer likes).
    static func boundedCode(_ code: String) -> String {
        let ok = !code.isEmpty && code.count <= 40 && code.allSatisfy { $0.isLowercase || $0 == "_" || $0.isNumber }
        return ok ? code : "other"
    }

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

/// swift-prometheus's factory, with each metric's help text from the catalog (its own factory
/// writes none, and promtool asks for one).
struct DescribedMetricsFactory: MetricsFactory {
    let registry: PrometheusCollectorRegistry
    let catalog: [String: String]
    private let plain: PrometheusMetricsFactory
    /// Handshakes and API calls take milliseconds; a store call under 1 ms is common.
    static let buckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2.5), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500),
        .seconds(5), .seconds(10),
    ]

    init(registry: PrometheusCollectorRegistry, catalog: [String: String]) {
        self.registry = registry
        self.catalog = catalog
        self.plain = PrometheusMetricsFactory(registry: registry)
    }

    private func descriptor(_ label: String, suffix: String) -> MetricNameDescriptor {
        precondition(self.catalog[label] != nil, "metric \(label) is missing from RelayMetrics.catalog")
        let base = label.hasSuffix("_" + suffix) ? String(label.dropLast(suffix.count + 1)) : label
        return MetricNameDescriptor(metricName: base, unitName: label.hasSuffix("_" + suffix) ? suffix : "", helpText: self.catalog[label] ?? "")
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        self.registry.makeCounter(descriptor: self.descriptor(label, suffix: "total"), labels: dimensions)
    }

    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        self.registry.makeCounter(descriptor: self.descriptor(label, suffix: "total"), labels: dimensions)
    }

    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        self.registry.makeGauge(descriptor: self.descriptor(label, suffix: ""), labels: dimensions)
    }

    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        self.registry.makeGauge(descriptor: self.descriptor(label, suffix: ""), labels: dimensions)
    }

    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        self.registry.makeDurationHistogram(descriptor: self.descriptor(label, suffix: "seconds"), labels: dimensions, buckets: Self.buckets)
    }

    func destroyCounter(_ handler: any CounterHandler) { self.plain.destroyCounter(handler) }
    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) { self.plain.destroyFloatingPointCounter(handler) }
    func destroyRecorder(_ handler: any RecorderHandler) { self.plain.destroyRecorder(handler) }
    func destroyMeter(_ handler: any MeterHandler) { self.plain.destroyMeter(handler) }
    func destroyTimer(_ handler: any TimerHandler) { self.plain.destroyTimer(handler) }
}
