import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Testing
import TunnelCore

/// The websocket layer, configured as the relay configures it (NIO's upgrader and frame decoder
/// with the production limits, `WebSocketByteStreamHandler` with its rules), behind an echo
/// endpoint only this test runs, against Autobahn's cases 1-7 (framing, pings, reserved bits,
/// opcodes, fragmentation, UTF-8, closing) as PyPI's kosoku drives them.
@Suite(.serialized) struct WebSocketConformanceTests {
    @Test func theWebSocketLayerPassesAutobahnCasesOneToSeven() async throws {
        guard let python = Self.python, try await TestProcess.run(python, ["-c", "import kosoku"]).0 == 0 else {
            Issue.record("kosoku is not installed (python3 -m pip install kosoku==0.1.0, as .ci/run does)")
            return
        }
        let limits = TunnelLimits()
        let server = try await ServerBootstrap(group: TestStack.group)
            .childChannelInitializer { channel in
                let upgrader = NIOWebSocketServerUpgrader(
                    maxFrameSize: limits.maxWebSocketFrameSize, automaticErrorHandling: true,
                    shouldUpgrade: { channel, _ in channel.eventLoop.makeSucceededFuture(HTTPHeaders()) },
                    upgradePipelineHandler: { channel, _ in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(
                                WebSocketByteStreamHandler(
                                    role: .server, maxOutboundFrameSize: limits.maxOutboundWebSocketFrameSize,
                                    keepaliveInterval: limits.keepaliveInterval, keepaliveTimeout: limits.keepaliveTimeout,
                                    messages: .echo(maxMessageSize: 16 << 20)))
                        }
                    })
                return channel.pipeline.configureHTTPServerPipeline(withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let reports = TestStack.temporaryDirectory("autobahn")
        let cases = (1...7).flatMap { ["-i", "\($0).*"] }
        // kosoku's command line, run by the python it is installed in (its script may not be on PATH).
        let cli = "import sys; from kosoku._cli import main; sys.argv[0] = 'kosoku'; sys.exit(main())"
        let (code, out, err) = try await TestProcess.run(
            python, ["-c", cli] + cases + ["-p", "4", "-o", reports, "127.0.0.1:\(server.localAddress!.port!)"])
        try await server.close()
        let index = try Self.index(in: reports)
        var totals: [String: Int] = [:]
        var failed: [String] = []
        for (id, result) in index {
            totals[result.behavior, default: 0] += 1
            if result.behavior == "FAILED" || result.behaviorClose == "FAILED" { failed.append("\(id) (\(result.behavior)/\(result.behaviorClose))") }
        }
        print("AUTOBAHN cases 1-7 (kosoku): \(index.count) cases: \(totals.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))")
        #expect(index.count >= 200, "kosoku ran the cases (exit \(code)): \(out.suffix(500)) \(err.suffix(500))")
        #expect(failed.isEmpty, "failed: \(failed.sorted().joined(separator: ", "))")
    }

    struct CaseResult: Decodable {
        var behavior: String
        var behaviorClose: String
    }

    /// Autobahn's report index: agent -> case -> result.
    static func index(in folder: String) throws -> [String: CaseResult] {
        let enumerator = FileManager.default.enumerator(atPath: folder)
        while let path = enumerator?.nextObject() as? String {
            guard path.hasSuffix("index.json") else { continue }
            let data = try Data(contentsOf: URL(fileURLWithPath: folder + "/" + path))
            let agents = try JSONDecoder().decode([String: [String: CaseResult]].self, from: data)
            return agents.values.first ?? [:]
        }
        throw TestFailure("no index.json under \(folder)")
    }

    static var python: String? {
        let paths = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/python3" }
        return paths.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}
