// swift-tools-version:6.0
import PackageDescription

let lifecycle: [Target.Dependency] = [
    .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
    .product(name: "UnixSignals", package: "swift-service-lifecycle"),
]

let nio: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
    .product(name: "NIOHTTP1", package: "swift-nio"),
]

let package = Package(
    name: "remote-access-relay",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "relay", targets: ["relay"]),
        .executable(name: "connector", targets: ["connector"]),
        .executable(name: "relayctl", targets: ["relayctl"]),
        .executable(name: "demo-component", targets: ["demo-component"]),
        // What FuzzTesting/ links its fuzzers against.
        .library(name: "FuzzEntryPoints", targets: ["FuzzEntryPoints"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // Wire contract shared by all programs: websocket <-> byte stream, HTTP/2 setup, TLS, glue.
        .target(name: "TunnelCore", dependencies: nio + [
            // StreamErrorCode: the codes every hop refuses a request with.
            "RelayModel",
            .product(name: "NIOWebSocket", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            .product(name: "NIOHPACK", package: "swift-nio-http2"),
            // NIOHTTP1ProxyConnectHandler: the connector's way out through a corporate HTTP proxy.
            .product(name: "NIOExtras", package: "swift-nio-extras"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Strict YAML config reading: unknown keys and bad values are errors that name the key.
        .target(name: "ConfigKit", dependencies: ["TunnelCore", "RelayModel", .product(name: "Yams", package: "Yams"), .product(name: "Logging", package: "swift-log")]),
        // The relay's records (clusters, tokens, access requests, sessions, audit): plain values, no I/O.
        .target(name: "RelayModel"),
        // The customer's privacy settings decided per stream: pure, default deny, no I/O.
        .target(name: "PrivacyPolicy", dependencies: ["RelayModel"]),
        // The customer's hash-chained audit log (JSON lines on the connector's disk) and its verifier.
        .target(name: "CustomerAudit", dependencies: [.product(name: "Crypto", package: "swift-crypto")]),
        // Persistence behind the `Store` protocol; SQLite (GRDB) is the embedded default.
        .target(name: "RelayStore", dependencies: [
            "RelayModel", "TunnelCore", .product(name: "GRDB", package: "GRDB.swift"), .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "PostgresNIO", package: "postgres-nio"), .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            // ConnectionPoolError: how postgres-nio's pool says it cannot connect at all.
            .product(name: "_ConnectionPoolModule", package: "postgres-nio"),
        ] + lifecycle),
        // The relay's HTTPS JSON API: message types and a small client (connector and relayctl).
        .target(name: "RelayAPI", dependencies: ["RelayModel", "TunnelCore", .product(name: "NIOSSL", package: "swift-nio-ssl")] + nio),
        // Prometheus metrics: recorded through swift-metrics, kept and written out by swift-prometheus.
        .target(name: "Telemetry", dependencies: [
            .product(name: "CoreMetrics", package: "swift-metrics"), .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ]),
        .target(name: "Relay", dependencies: ["TunnelCore", "ConfigKit", "RelayModel", "RelayStore", "RelayAPI", "Telemetry", .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"), .product(name: "NIOHTTP2", package: "swift-nio-http2"), .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "NIOWebSocket", package: "swift-nio")] + nio + lifecycle),
        .target(name: "Connector", dependencies: ["TunnelCore", "PrivacyPolicy", "CustomerAudit", "ConfigKit", "RelayAPI", "RelayModel", "Telemetry", .product(name: "CoreMetrics", package: "swift-metrics"), .product(name: "Logging", package: "swift-log"), .product(name: "NIOHTTP2", package: "swift-nio-http2"), .product(name: "NIOSSL", package: "swift-nio-ssl")] + nio + lifecycle),
        // Test doubles shared by the test targets (a clock that moves only when told).
        .target(name: "TestSupport", dependencies: [
            "RelayStore", .product(name: "NIOConcurrencyHelpers", package: "swift-nio"), .product(name: "Logging", package: "swift-log"),
            .product(name: "PostgresNIO", package: "postgres-nio"),
        ] + lifecycle + nio),
        .target(name: "RelayCtlKit", dependencies: ["TunnelCore", "ConfigKit", "RelayAPI", "RelayModel", .product(name: "Logging", package: "swift-log"), .product(name: "NIOHTTP2", package: "swift-nio-http2"), .product(name: "NIOSSL", package: "swift-nio-ssl")] + nio),
        .target(name: "DemoComponentKit", dependencies: nio + [.product(name: "Crypto", package: "swift-crypto"), .product(name: "NIOWebSocket", package: "swift-nio")]),
        // The fuzz targets' bodies, shared by the fuzzers (FuzzTesting/) and the replay tests.
        .target(name: "FuzzEntryPoints", dependencies: ["ConfigKit", "Connector", "PrivacyPolicy", "Relay", "RelayAPI", "RelayModel", "TunnelCore", .product(name: "NIOEmbedded", package: "swift-nio"), .product(name: "NIOWebSocket", package: "swift-nio")] + nio),
        .executableTarget(name: "relay", dependencies: ["Relay", "ConfigKit", "RelayStore", "TunnelCore", .product(name: "Logging", package: "swift-log"), .product(name: "NIOPosix", package: "swift-nio"), .product(name: "ArgumentParser", package: "swift-argument-parser")] + lifecycle),
        .executableTarget(name: "connector", dependencies: ["Connector", "ConfigKit", "CustomerAudit", "PrivacyPolicy", "RelayCtlKit", "RelayAPI", "RelayModel", "TunnelCore", .product(name: "Logging", package: "swift-log"), .product(name: "NIOPosix", package: "swift-nio"), .product(name: "ArgumentParser", package: "swift-argument-parser")] + lifecycle),
        .executableTarget(name: "relayctl", dependencies: ["RelayCtlKit", "RelayAPI", "RelayModel", "ConfigKit", "TunnelCore", .product(name: "Logging", package: "swift-log"), .product(name: "NIOPosix", package: "swift-nio"), .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "UnixSignals", package: "swift-service-lifecycle")]),
        .executableTarget(name: "demo-component", dependencies: ["DemoComponentKit", "ConfigKit", "TunnelCore", .product(name: "NIOPosix", package: "swift-nio"), .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "UnixSignals", package: "swift-service-lifecycle")]),
        // A benchmark tool (Scripts/perf.py): one process holding many nodes' tunnels through the real TunnelConnector.
        .executableTarget(name: "tunnel-swarm", dependencies: ["Connector", "TunnelCore", .product(name: "Logging", package: "swift-log"), .product(name: "NIOPosix", package: "swift-nio"), .product(name: "ArgumentParser", package: "swift-argument-parser")] + lifecycle),
        // Replays every input kept under Tests/Fuzz/TARGET/ (seeds and past findings).
        .testTarget(name: "FuzzReplayTests", dependencies: ["FuzzEntryPoints"]),
        .testTarget(name: "RelayCtlKitTests", dependencies: ["RelayCtlKit", "RelayAPI", "TunnelCore", .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio")]),
        .testTarget(name: "TunnelCoreTests", dependencies: ["TunnelCore", "TestSupport", .product(name: "NIOPosix", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"), .product(name: "NIOHTTP2", package: "swift-nio-http2"), .product(name: "NIOHPACK", package: "swift-nio-http2")]),
        .testTarget(name: "ConfigKitTests", dependencies: ["ConfigKit", "Relay", "RelayStore", "Connector"]),
        .testTarget(name: "ConnectorTests", dependencies: ["Connector", "RelayAPI", "RelayModel", "TestSupport", .product(name: "NIOEmbedded", package: "swift-nio"), .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle")] + lifecycle),
        .testTarget(name: "PrivacyPolicyTests", dependencies: ["PrivacyPolicy", "RelayModel"]),
        .testTarget(name: "CustomerAuditTests", dependencies: ["CustomerAudit"]),
        .testTarget(name: "RelayTests", dependencies: ["Relay", "RelayStore", "RelayModel", "RelayAPI", "RelayCtlKit", "TestSupport", .product(name: "NIOEmbedded", package: "swift-nio"), .product(name: "GRDB", package: "GRDB.swift")] + nio + lifecycle),
        .testTarget(name: "EndToEndTests", dependencies: ["Relay", "RelayStore", "RelayModel", "RelayAPI", "Connector", "RelayCtlKit", "DemoComponentKit", "TunnelCore", "TestSupport", .product(name: "NIOWebSocket", package: "swift-nio"), .product(name: "NIOConcurrencyHelpers", package: "swift-nio"), .product(name: "NIOHTTP2", package: "swift-nio-http2"), .product(name: "NIOHPACK", package: "swift-nio-http2")] + lifecycle),
    ],
    swiftLanguageModes: [.v5]
)
