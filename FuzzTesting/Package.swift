// swift-tools-version:6.0
// The fuzz targets, a package of their own so that `swift test` at the root never builds them:
// they only link with -sanitize=fuzzer (libFuzzer's driver). Run one with Scripts/fuzz.sh.
import PackageDescription

let targets = ["request-target", "websocket-stream", "api-json", "config"]

let package = Package(
    name: "fuzz-testing",
    dependencies: [.package(name: "remote-access-relay", path: "..")],
    targets: [
        .target(name: "FuzzDriver", dependencies: [.product(name: "FuzzEntryPoints", package: "remote-access-relay")])
    ]
        + targets.map { name in
            .executableTarget(name: "fuzz-\(name)", dependencies: ["FuzzDriver"], path: "Sources/fuzz-\(name)")
        },
    swiftLanguageModes: [.v5]
)
