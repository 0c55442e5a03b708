import Crypto
@testable import CustomerAudit
import DemoComponentKit
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Relay
import RelayCtlKit
import TestSupport
import Testing
import TunnelCore

/// What one expert does never costs the tunnel, which carries every expert of the cluster.
@Suite(.serialized) struct OneOffenderTests {
    /// Component `trickle` sends the start of a long body, then 1 KiB every 20 ms: a download that
    /// is always cancelled mid-body, without pushing megabytes through the test machine.
    static func start(limits: TunnelLimits = TestStack.limits) async throws -> (TestStack, TestComponentServer) {
        let trickle = try await TestComponentServer.start { TrickleComponent() }
        let stack = try await TestStack.start(extraComponents: ["trickle": trickle.url], limits: limits) {
            config in config.deniedPathPrefixes = ["/secrets"]
        }
        return (stack, trickle)
    }

    /// A session whose end (the relay's close frame) is captured.
    static func observedSession(_ stack: TestStack) async throws -> (LocalListener, NIOLockedValueBox<WebSocketPeerClosed?>) {
        let ended = NIOLockedValueBox<WebSocketPeerClosed?>(nil)
        let client = try SessionClient(target: try stack.sessionTarget(component: "trickle"), group: TestStack.group, logger: TestStack.quietLogger) { closed in
            ended.withLockedValue { $0 = closed }
        }
        try await client.connect()
        return (try await LocalListener.startConduit(host: "127.0.0.1", port: 0, session: client, group: TestStack.group), ended)
    }

    /// `count` downloads, `concurrency` at a time, each closed as soon as its first bytes arrive
    /// (as a browser does when the engineer clicks on). Bounded: every wait is. Returns how many
    /// started (status 200) before the first that did not.
    @discardableResult
    static func cancelDownloads(port: Int, count: Int, concurrency: Int = 8, untilRefused: Bool = false) async throws -> Int {
        try await withThrowingTaskGroup(of: Int.self) { group in
            for worker in 0..<concurrency {
                group.addTask {
                    var started = 0
                    for _ in stride(from: worker, to: count, by: concurrency) {
                        do {
                            try await CancelledDownload.run(port: port, path: "/download")
                            started += 1
                        } catch let refused as CancelledDownload.Refused where untilRefused {
                            _ = refused
                            break
                        }
                    }
                    return started
                }
            }
            return try await group.reduce(0, +)
        }
    }

    @Test func cancelledDownloadsAndRefusedUploadsLeaveTheTunnelAndOtherSessionsIntact() async throws {
        let (stack, trickle) = try await Self.start()
        let tunnel = try #require(stack.relay.registry.tunnels(cluster: "demo").first)
        let flooding = try await stack.openSession(component: "trickle")
        let other = try await stack.openSession()
        // Another engineer's download, read slowly, stays in flight for the whole flood.
        let size = 48 << 20  // read slowly to 4 MiB, then held until the flood is over
        let download = try await PacedDownload.start(port: other.localAddress!.port!, path: "/bytes/\(size)")
        try await stack.waitUntil("the other download to be running") { download.received > 0 }

        let started = ContinuousClock.now
        try await Self.cancelDownloads(port: flooding.localAddress!.port!, count: 1_000)
        // 300 uploads to a denied path: refused, their bodies drained, no reset.
        try await withThrowingTaskGroup(of: HTTPResponseStatus.self) { group in
            for worker in 0..<6 {
                group.addTask {
                    for _ in stride(from: worker, to: 300, by: 6) {
                        let answer = try await TestHTTPConnection.request(
                            port: flooding.localAddress!.port!, .POST, "/secrets/upload", body: Array(repeating: 7, count: 64 << 10))
                        guard answer.status == .forbidden else { return answer.status }
                    }
                    return .forbidden
                }
            }
            for try await status in group { #expect(status == .forbidden) }
        }
        let floodTook = ContinuousClock.now - started
        #expect(download.received < size, "the other download was still in flight when the flood ended (\(floodTook))")

        // The same tunnel is up, the flooding engineer's own session still works, the other download completes intact.
        #expect(stack.relay.registry.tunnels(cluster: "demo").map(\.id) == [tunnel.id], "the tunnel was never closed")
        #expect(try await TestHTTPConnection.request(port: flooding.localAddress!.port!, .GET, "/api/status").status == .ok)
        #expect(stack.privacy.sessions.count == 2 && stack.privacy.sessions.allSatisfy { $0.endReason == nil })
        download.readFreely()
        let finished = try await download.result()
        #expect(finished.status == 200 && finished.bodyBytes == size)
        #expect(finished.sha256 == DemoComponent.sha256OfPattern(size: size))
        try await flooding.close()
        try await other.close()
        await stack.stop()
        try await trickle.close()
    }

    /// A refusal reads the rest of the upload and ends the stream cleanly: with NIOHTTP2's own reset
    /// budget on the tunnel (200 per 30 s), 300 refused uploads would otherwise close it.
    @Test func refusedUploadsAreDrainedNotReset() async throws {
        var limits = TestStack.limits
        limits.tunnelResetBudget = 200
        let (stack, trickle) = try await Self.start(limits: limits)
        let tunnel = try #require(stack.relay.registry.tunnels(cluster: "demo").first)
        let session = try await stack.openSession()
        let connection = try await TestHTTPConnection.connect(port: session.localAddress!.port!)
        for _ in 0..<300 {
            let answer = try await connection.request(.PUT, "/secrets/upload", body: Array(repeating: 1, count: 32 << 10))
            #expect(answer.status == .forbidden && answer.headers.first(name: WireHeader.error) == "denied_path", "\(answer.status) \(answer.text)")
        }
        // The same keep-alive connection goes on: the refused bodies were read to their ends.
        #expect(try await connection.request(.GET, "/api/status").status == .ok)
        #expect(stack.relay.registry.tunnels(cluster: "demo").map(\.id) == [tunnel.id])
        await connection.close()
        try await session.close()
        await stack.stop()
        try await trickle.close()
    }

    @Test func aSessionThatFloodsBeyondItsBudgetIsClosedAloneWithTheReason() async throws {
        var limits = TestStack.limits
        limits.sessionResetBudget = 40
        let (stack, trickle) = try await Self.start(limits: limits)
        let tunnel = try #require(stack.relay.registry.tunnels(cluster: "demo").first)
        let (flooding, ended) = try await Self.observedSession(stack)
        let other = try await stack.openSession()
        let started = try await Self.cancelDownloads(port: flooding.localAddress!.port!, count: 120, concurrency: 4, untilRefused: true)
        #expect(started > 40, "the budget was used up before the session closed")
        try await stack.waitUntil("the flooding session to be closed") { ended.withLockedValue { $0 } != nil }
        let closed = ended.withLockedValue { $0 }
        #expect(closed?.code == .unknown(WireCloseCode.flood))
        #expect(closed?.reason.contains("too many cancelled requests") == true, "\(String(describing: closed))")
        // 60 s: on a machine compiling beside the suite the record once took longer than 30 s.
        let recorded = try await TestWait.poll(seconds: 60) {
            try await stack.control.store.sessions(live: false).contains { $0.endReason?.contains("flooding") == true }
        }
        #expect(recorded, "the relay records why it closed the session")
        // Nobody else paid for it.
        #expect(stack.relay.registry.tunnels(cluster: "demo").map(\.id) == [tunnel.id])
        #expect(try await TestHTTPConnection.request(port: other.localAddress!.port!, .GET, "/api/status").status == .ok)
        try await flooding.close()
        try await other.close()
        await stack.stop()
        try await trickle.close()
    }

    @Test func oversizedHeadersFailOneRequestNeverTheTunnel() async throws {
        let big = try await TestComponentServer.start { BigHeaderComponent() }
        let stack = try await TestStack.start(extraComponents: ["big": big.url])
        let tunnel = try #require(stack.relay.registry.tunnels(cluster: "demo").first)
        let session = try await stack.openSession()
        let port = session.localAddress!.port!
        // Larger than one HTTP/2 frame: refused by relayctl before it reaches any link.
        let cookie = (0..<40).map { "c\($0)=\(String(repeating: "z", count: 600))" }.joined(separator: "; ")
        let tooBig = try await TestHTTPConnection.request(port: port, .GET, "/api/status", headers: [("cookie", cookie)])
        #expect(tooBig.status == .requestHeaderFieldsTooLarge && tooBig.headers.first(name: WireHeader.error) == "request_headers_too_large")
        // Sent past relayctl (a rogue client): the relay refuses it before the tunnel.
        // Just small enough for its own link: the relay's identity headers would make it too large for the tunnel.
        let (rogue, multiplexer) = try await RogueSession.dial(stack)
        let unchecked = try await RogueRelay.send(
            on: multiplexer, loop: rogue.eventLoop, method: .GET, target: "/api/status",
            headers: [("host", "ui"), ("cookie", Self.cookie(encodedSize: HeaderBudget.smallestFrame - 200))])
        #expect(unchecked.status == 431 && unchecked.error == "request_headers_too_large", "the relay refused it: \(unchecked)")
        try? await rogue.close()
        // A component whose response head is larger than the tunnel carries: 502 for that request.
        let bigSession = try await stack.openSession(component: "big")
        let answer = try await TestHTTPConnection.request(port: bigSession.localAddress!.port!, .GET, "/")
        #expect(answer.status == .badGateway && answer.text.contains("response headers are larger"), "\(answer.status) \(answer.text)")
        // Heads that fit go through whole: 12 KiB of cookies, and 6 KiB ones the relay adds to.
        let fits = (0..<12).map { "c\($0)=\(String(repeating: "z", count: 1000))" }.joined(separator: "; ")
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/api/status", headers: [("cookie", fits)]).status == .ok)
        #expect(stack.relay.registry.tunnels(cluster: "demo").map(\.id) == [tunnel.id])
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/api/status").status == .ok)
        try await bigSession.close()
        try await session.close()
        await stack.stop()
        try await big.close()
    }
}

extension OneOffenderTests {
    /// A component that accepts a request and never answers: that request alone gets 504
    /// `upstream_timeout` once `upstream_timeout` passes (driven by the test); a download running
    /// beside it on the same tunnel goes on, and the customer's audit records the timeout.
    @Test func aComponentThatNeverAnswersFailsThatRequestAloneWith504() async throws {
        let silent = try await TestComponentServer.start { SilentComponent() }
        let deadlines = Deadlines.Manual()
        let stack = try await TestStack.start(
            extraComponents: ["silent": silent.url], upstreamDeadlines: deadlines.deadlines)
        let ui = try await stack.openSession()
        let size = 4 << 20
        let download = try await PacedDownload.start(port: ui.localAddress!.port!, path: "/bytes/\(size)")
        try await stack.waitUntil("the download's response to start") { download.received > 0 }
        let stuckSession = try await stack.openSession(component: "silent")
        let stuck = Task { try await TestHTTPConnection.request(port: stuckSession.localAddress!.port!, .GET, "/never") }
        try await stack.waitUntil("the silent component's deadline to be armed") { deadlines.armed == 1 }
        deadlines.expireAll()
        let answer = try await stuck.value
        #expect(answer.status == .gatewayTimeout && answer.headers.first(name: WireHeader.error) == "upstream_timeout", "\(answer.status) \(answer.text)")
        #expect(answer.text.contains("silent") && answer.text.contains("did not answer within 60 s"), "\(answer.text)")
        download.readFreely()
        let result = try await download.result()
        #expect(result.status == 200 && result.bodyBytes == size && result.sha256 == DemoComponent.sha256OfPattern(size: size))
        #expect(try await TestHTTPConnection.request(port: ui.localAddress!.port!, .GET, "/api/status").status == .ok)
        stack.privacy.audit.sync()
        let records = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 500)
        #expect(records.contains { $0.event == "request" && $0.path == "/never" && $0.status == 504 && $0.reason?.contains("upstream_timeout") == true })
        try await stuckSession.close()
        try await ui.close()
        await stack.stop()
        try await silent.close()
    }

    /// A cookie whose HPACK encoding (as NIOHTTP2 sends it) is about `encodedSize` bytes.
    static func cookie(encodedSize: Int) -> String {
        func encoded(_ value: String) -> Int {
            var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
            var buffer = ByteBuffer()
            try? encoder.encode(headers: HPACKHeaders([("cookie", value)]), to: &buffer)
            return buffer.readableBytes
        }
        var value = "c="
        while encoded(value + String(repeating: "z", count: 64)) < encodedSize { value += String(repeating: "z", count: 64) }
        return value
    }
}

/// Reads requests and never answers (a component that is stuck); counts the reads it got.
final class SilentComponent: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    private let heard: NIOLockedValueBox<Int>
    init(heard: NIOLockedValueBox<Int> = .init(0)) { self.heard = heard }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { self.heard.withLockedValue { $0 += 1 } }
}

/// Answers every request with 1 MiB of Content-Length, sending 1 KiB at once and 1 KiB every 20 ms.
final class TrickleComponent: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private var request = ""
    private var task: RepeatedTask?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.request += String(buffer: self.unwrapInboundIn(data))
        guard self.request.contains("\r\n\r\n"), self.task == nil else { return }
        if self.request.hasPrefix("GET /api/status") {
            context.writeAndFlush(NIOAny(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")), promise: nil)
            self.request = ""
            return
        }
        context.writeAndFlush(NIOAny(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n")), promise: nil)
        let chunk = ByteBuffer(repeating: 0x61, count: 1024)
        let channel = context.channel
        self.task = context.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(20)) { _ in
            channel.writeAndFlush(chunk, promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.task?.cancel()
        context.fireChannelInactive()
    }
}

/// Answers every request with 28 KiB of headers: more than one HTTP/2 frame holds (NIOHTTP2 sends
/// no CONTINUATION frames, so forwarding them would fail the whole tunnel).
final class BigHeaderComponent: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private var request = ""
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.request += String(buffer: self.unwrapInboundIn(data))
        guard self.request.contains("\r\n\r\n") else { return }
        self.request = ""
        var text = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
        for index in 0..<40 { text += "x-filler-\(index): \(String(repeating: "b", count: 680))\r\n" }
        context.writeAndFlush(NIOAny(ByteBuffer(string: text + "\r\nok")), promise: nil)
    }
}

/// A download closed as soon as its first body bytes arrive (bounded: 60 s). Returns the status line.
enum CancelledDownload {
    /// The download was answered with something else than 200 (the session is gone, say).
    struct Refused: Error, CustomStringConvertible {
        var description: String
    }

    @discardableResult
    static func run(port: Int, path: String) async throws -> String {
        let received = NIOLockedValueBox("")
        let channel = try await ClientBootstrap(group: TestStack.group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(FirstBytes(received)) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        try await channel.writeAndFlush(ByteBuffer(string: "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\n\r\n"))
        func bodyStarted() -> Bool {
            received.withLockedValue { text in text.range(of: "\r\n\r\n").map { !text[$0.upperBound...].isEmpty } ?? false }
        }
        try await TestWait.poll(seconds: 60) { bodyStarted() || !channel.isActive }
        try? await channel.close()
        let line = received.withLockedValue { $0 }.components(separatedBy: "\r\n").first ?? ""
        if line.hasPrefix("HTTP/1.1 200") { return line }
        if line.isEmpty { throw TestFailure("the download got no answer within 60 s") }
        throw Refused(description: "the download was refused: \(line)")
    }

    private final class FirstBytes: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let received: NIOLockedValueBox<String>
        init(_ received: NIOLockedValueBox<String>) { self.received = received }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let text = String(buffer: self.unwrapInboundIn(data))
            self.received.withLockedValue { if $0.count < 4096 { $0 += text } }
        }
    }
}

/// A download read 16 KiB every 20 ms up to 4 MiB, then held, until `readFreely`; hashes the body (HTTP/1.1, Content-Length).
final class PacedDownload: @unchecked Sendable {
    struct Result: Sendable {
        var status: Int
        var bodyBytes: Int
        var sha256: String
    }

    private let reader: Reader
    private let channel: Channel

    private init(reader: Reader, channel: Channel) {
        self.reader = reader
        self.channel = channel
    }

    /// - Parameter headers: extra header lines (a script's `X-Relayctl-Token`).
    static func start(port: Int, path: String, headers: String = "") async throws -> PacedDownload {
        let reader = Reader()
        let channel = try await ClientBootstrap(group: TestStack.group)
            .channelOption(ChannelOptions.autoRead, value: false)
            .channelOption(ChannelOptions.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 16 << 10))
            .channelOption(ChannelOptions.maxMessagesPerRead, value: 1)
            .channelOption(ChannelOptions.socketOption(.so_rcvbuf), value: 16 << 10)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(reader) } }
            .connect(host: "127.0.0.1", port: port).get()
        // The local port as the Host, as a browser sends it: relayctl names the session's component instead.
        try await channel.writeAndFlush(ByteBuffer(string: "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\n\(headers)\r\n"))
        channel.read()
        return PacedDownload(reader: reader, channel: channel)
    }

    /// Body bytes received so far.
    var received: Int { self.reader.state.withLockedValue { $0.body } }

    func readFreely() {
        self.channel.eventLoop.execute {
            self.reader.paced = false
            self.channel.read()
        }
    }

    /// The whole response (bounded: 60 s).
    /// - Parameter seconds: how long the rest may take. Generous: a 6 MiB download on a debug
    /// build, beside the other suites and a rebuild, once took over 60 s.
    func result(seconds: Int64 = 180) async throws -> Result {
        let reader = self.reader
        let timeout = self.channel.eventLoop.scheduleTask(in: .seconds(seconds)) {
            let finished = reader.state.withLockedValue { state in
                defer { state.finished = true }
                return state.finished
            }
            if !finished { reader.done.fail(TestFailure("download not done in \(seconds) s")) }
        }
        defer { timeout.cancel() }
        return try await self.reader.done.futureResult.get()
    }

    final class Reader: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        struct State {
            var head: [UInt8] = []
            var status = 0
            var length: Int?
            var body = 0
            var finished = false
        }
        let state = NIOLockedValueBox(State())
        let done = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: Result.self)
        var paced = true
        private var hash = SHA256()

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let bytes = Array(buffer: self.unwrapInboundIn(data))
            let outcome = self.state.withLockedValue { state -> Swift.Result<Result, TestFailure>? in
                var body = bytes[...]
                if state.length == nil {
                    state.head += bytes
                    guard let end = state.head.indices.first(where: { state.head[$0...].starts(with: Array("\r\n\r\n".utf8)) }) else { return nil }
                    let head = String(decoding: state.head[..<end], as: UTF8.self)
                    state.status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
                    let lengthLine = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                    state.length = lengthLine.flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
                    body = state.head[(end + 4)...]
                }
                state.body += body.count
                self.hash.update(data: Array(body))
                guard let length = state.length, state.body >= length, !state.finished else { return nil }
                state.finished = true
                let digest = self.hash.finalize().map { String(format: "%02x", $0) }.joined()
                return .success(Result(status: state.status, bodyBytes: state.body, sha256: digest))
            }
            if case .success(let result) = outcome { self.done.succeed(result) }
        }

        /// Paced reading stops here until `readFreely`: the download stays in flight however long
        /// the test takes on a loaded machine (the pace alone made that a race with the clock).
        let holdAt = 4 << 20

        func channelReadComplete(context: ChannelHandlerContext) {
            if self.paced {
                guard self.state.withLockedValue({ $0.body }) < self.holdAt else { return }
                context.eventLoop.scheduleTask(in: .milliseconds(20)) { context.read() }
            } else {
                context.read()
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            let finished = self.state.withLockedValue { state in
                defer { state.finished = true }
                return state.finished
            }
            if !finished { self.done.fail(TestFailure("the download's connection closed")) }
        }
    }
}
