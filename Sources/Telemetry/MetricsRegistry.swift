import CoreMetrics
import NIOConcurrencyHelpers
import Prometheus

/// One program's Prometheus metrics: recorded through swift-metrics, kept and written out by
/// swift-prometheus. Each instance has its own registry (tests run several relay nodes and
/// connectors in one process), so nothing goes through the global `MetricsSystem`. Every metric
/// must be in `catalog` with its help text: promtool asks for one.
public final class MetricsRegistry: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let factory: DescribedMetricsFactory
    private let counters = NIOLockedValueBox<[String: CoreMetrics.Counter]>([:])
    private let timers = NIOLockedValueBox<[String: CoreMetrics.Timer]>([:])
    private let gauges = NIOLockedValueBox<[String: CoreMetrics.Gauge]>([:])

    public init(catalog: [String: String]) {
        self.factory = DescribedMetricsFactory(registry: self.registry, catalog: catalog)
    }

    /// The Prometheus text exposition (format 0.0.4).
    public func exposition() -> [UInt8] { self.registry.emitToBuffer() }

    public func counter(_ name: String, _ labels: [String: String] = [:]) -> CoreMetrics.Counter {
        Self.cached(self.counters, name, labels) { CoreMetrics.Counter(label: name, dimensions: $0, factory: self.factory) }
    }

    public func timer(_ name: String, _ labels: [String: String] = [:]) -> CoreMetrics.Timer {
        Self.cached(self.timers, name, labels) { CoreMetrics.Timer(label: name, dimensions: $0, factory: self.factory) }
    }

    public func gauge(_ name: String, _ labels: [String: String] = [:]) -> CoreMetrics.Gauge {
        Self.cached(self.gauges, name, labels) { CoreMetrics.Gauge(label: name, dimensions: $0, factory: self.factory) }
    }

    public static func nanoseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
    }

    private static func cached<Handle>(
        _ cache: NIOLockedValueBox<[String: Handle]>, _ name: String, _ labels: [String: String], make: ([(String, String)]) -> Handle
    ) -> Handle {
        let sorted = labels.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        let key = ([name] + sorted.map { "\($0.0)=\($0.1)" }).joined(separator: "\u{1}")
        return cache.withLockedValue { cache in
            if let handle = cache[key] { return handle }
            let handle = make(sorted)
            cache[key] = handle
            return handle
        }
    }
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
        precondition(self.catalog[label] != nil, "metric \(label) is missing from its catalog")
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
