// swift-tools-version:6.0
import PackageDescription

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
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
    ],
    targets: [
        // Wire contract shared by all programs: websocket <-> byte stream, HTTP/2 setup, TLS, glue.
        .target(name: "TunnelCore", dependencies: nio + [
            .product(name: "NIOWebSocket", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Strict YAML config reading: unknown keys and bad values are errors that name the key.
        .target(name: "ConfigKit", dependencies: ["TunnelCore", .product(name: "Yams", package: "Yams")]),
        .target(name: "Relay", dependencies: ["TunnelCore", "ConfigKit", .product(name: "Logging", package: "swift-log"), .product(name: "NIOHTTP2", package: "swift-nio-http2"), .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "NIOWebSocket", package: "swift-nio")] + nio),
        .target(name: "Connector", dependencies: ["TunnelCore", "ConfigKit", .product(name: "Logging", package: "swift-log"), .product(name: "NIOHTTP2", package: "swift-nio-http2"), .product(name: "NIOSSL", package: "swift-nio-ssl")] + nio),
        .target(name: "RelayCtlKit", dependencies: ["TunnelCore", "ConfigKit", .product(name: "Logging", package: "swift-log"), .product(name: "NIOHTTP2", package: "swift-nio-http2"), .product(name: "NIOSSL", package: "swift-nio-ssl")] + nio),
        .target(name: "DemoComponentKit", dependencies: nio + [.product(name: "Crypto", package: "swift-crypto")]),
        .executableTarget(name: "relay", dependencies: ["Relay", "TunnelCore", .product(name: "Logging", package: "swift-log"), .product(name: "NIOPosix", package: "swift-nio"), .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(name: "connector", dependencies: ["Connector", "TunnelCore", .product(name: "Logging", package: "swift-log"), .product(name: "NIOPosix", package: "swift-nio"), .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(name: "relayctl", dependencies: ["RelayCtlKit", "ConfigKit", "TunnelCore", .product(name: "Logging", package: "swift-log"), .product(name: "NIOPosix", package: "swift-nio"), .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(name: "demo-component", dependencies: ["DemoComponentKit", "ConfigKit", "TunnelCore", .product(name: "NIOPosix", package: "swift-nio"), .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .testTarget(name: "TunnelCoreTests", dependencies: ["TunnelCore", .product(name: "NIOEmbedded", package: "swift-nio")]),
        .testTarget(name: "ConfigKitTests", dependencies: ["ConfigKit", "Relay", "Connector"]),
        .testTarget(name: "ConnectorTests", dependencies: ["Connector"]),
        .testTarget(name: "EndToEndTests", dependencies: ["Relay", "Connector", "RelayCtlKit", "DemoComponentKit", "TunnelCore", .product(name: "NIOWebSocket", package: "swift-nio"), .product(name: "NIOConcurrencyHelpers", package: "swift-nio")]),
    ],
    swiftLanguageModes: [.v5]
)
