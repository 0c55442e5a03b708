@testable import CustomerAudit
import DemoComponentKit
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
import TunnelCore

/// A session under sustained load keeps answering: a kept-alive component connection that closes
/// under a request is retried once (when that is safe), and cancelled downloads never leave the
/// session unable to carry the next request.
@Suite(.serialized) struct SustainedLoadTests {
    /// The component closes an idle kept-alive connection just as the connector sends on it (its
    /// keep-alive timeout ran out): a request without a body is sent once more on a fresh
    /// connection and answered; one with a body is not (it may have been acted on) and gets 502.
    @Test func aReusedConnectionTheComponentClosedIsRetriedOnceForARequestWithoutABody() async throws {
        let flaky = HangUpOnReuseComponent.Counts()
        let server = try await TestComponentServer.start { HangUpOnReuseComponent(flaky, onReuse: .hangUp) }
        let stack = try await TestStack.start(extraComponents: ["flaky": server.url])
        let session = try await stack.openSession(component: "flaky")
        let port = session.localAddress!.port!
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/first").status == .ok)
        let retried = try await TestHTTPConnection.request(port: port, .GET, "/second")
        #expect(retried.status == .ok, "answered on a fresh connection: \(retried.status) \(retried.text)")
        #expect(flaky.snapshot == (connections: 2, hungUp: 1), "the reused connection hung up once, a fresh one answered")
        let upload = try await TestHTTPConnection.request(port: port, .POST, "/third", body: [1, 2, 3])
        #expect(upload.status == .badGateway && upload.text.contains("closed before answering"), "never sent twice: \(upload.text)")
        stack.privacy.audit.sync()
        let records = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 100).filter { $0.event == "request" }
        #expect(records.filter { $0.path == "/second" }.map(\.status) == [200], "one record for the retried request")
        try await session.close()
        await stack.stop()
        try await server.close()
    }

    /// The engineer gives up on a request the component has not answered yet (wrk closing its
    /// connections at the end of a run, a browser tab closed): the customer's audit says the client
    /// cut it, not that the connector answered 502. Closing the component connection used to call
    /// back into the exchange being cut, and ten to thirty such 502s per run were audited that no
    /// client was ever sent (the "lost 502" of issue 11).
    @Test func aRequestTheEngineerAbandonsIsAuditedAsCutNotAsAnError() async throws {
        let heard = NIOLockedValueBox(0)
        let silent = try await TestComponentServer.start { SilentComponent(heard: heard) }
        let stack = try await TestStack.start(extraComponents: ["silent": silent.url])
        let session = try await stack.openSession(component: "silent")
        let connection = try await TestHTTPConnection.connect(port: session.localAddress!.port!)
        let abandoned = Task { try await connection.request(.GET, "/abandoned") }
        try await stack.waitUntil("the component to have the request") { heard.withLockedValue { $0 } > 0 }
        await connection.close()
        _ = try? await abandoned.value
        // The record is written once the exchange reports, a moment after the stream is gone.
        var records: [AuditEntry] = []
        try await stack.waitUntil("the customer's audit record of the request") {
            stack.privacy.audit.sync()
            records = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 100).filter { $0.path == "/abandoned" }
            return !records.isEmpty
        }
        #expect(records.count == 1, "\(records)")
        #expect(records.first?.status == nil && records.first?.reason == "aborted: client closed the connection", "\(records)")
        try await session.close()
        await stack.stop()
        try await silent.close()
    }

    /// A request a reused connection accepted and never answered is not sent again when
    /// `upstream_timeout` passes: the component may still be working on it. 504, one connection.
    @Test func aRequestThatTimedOutIsNeverRetried() async throws {
        let stuck = HangUpOnReuseComponent.Counts()
        let server = try await TestComponentServer.start { HangUpOnReuseComponent(stuck, onReuse: .stall) }
        let deadlines = Deadlines.Manual()
        let stack = try await TestStack.start(
            extraComponents: ["stuck": server.url], upstreamDeadlines: deadlines.deadlines)
        let session = try await stack.openSession(component: "stuck")
        let port = session.localAddress!.port!
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/first").status == .ok)
        let second = Task { try await TestHTTPConnection.request(port: port, .GET, "/second") }
        try await stack.waitUntil("the reused connection's deadline to be armed") { deadlines.armed == 1 }
        deadlines.expireAll()
        let answer = try await second.value
        #expect(answer.status == .gatewayTimeout && answer.headers.first(name: WireHeader.error) == "upstream_timeout", "\(answer.status) \(answer.text)")
        #expect(stuck.snapshot.connections == 1, "not sent again on a fresh connection")
        try await session.close()
        await stack.stop()
        try await server.close()
    }

    /// Rounds of 32 large downloads cancelled mid-body (their bytes in flight on every hop, the
    /// HTTP/2 windows full): after each round the session answers at once.
    @Test func cancelledLargeDownloadsNeverLeaveTheSessionStalled() async throws {
        let stack = try await TestStack.start()
        let session = try await stack.openSession()
        let port = session.localAddress!.port!
        var slowest = Duration.zero
        for _ in 1...5 {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<32 { group.addTask { try await CancelledDownload.run(port: port, path: "/bytes/\(16 << 20)") } }
                try await group.waitForAll()
            }
            let asked = ContinuousClock.now
            let answer = try await TestHTTPConnection.request(port: port, .GET, "/api/status")
            slowest = max(slowest, ContinuousClock.now - asked)
            #expect(answer.status == .ok)
        }
        print("cancelled downloads: 5 rounds of 32; the slowest request after a round took \(slowest)")
        // The stalls reported lasted 25 s (until keepalive gave the connection up) to over two
        // minutes. Here: 0.6 s on an idle machine, 6.3 s seen with a build beside the suite (the
        // debug build still discarding 32 cancelled downloads' bytes in flight).
        #expect(slowest < .seconds(15), "no stall after cancelled downloads: \(slowest)")
        try await session.close()
        await stack.stop()
    }
}

/// Answers the first request on each connection (kept alive); on the next one it closes the
/// connection without answering, as a server whose keep-alive timeout just ran out (`.hangUp`), or
/// never answers (`.stall`).
final class HangUpOnReuseComponent: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    enum OnReuse { case hangUp, stall }

    final class Counts: Sendable {
        private let box = NIOLockedValueBox((connections: 0, hungUp: 0))
        var snapshot: (connections: Int, hungUp: Int) { self.box.withLockedValue { $0 } }
        func connected() { self.box.withLockedValue { $0.connections += 1 } }
        func hungUp() { self.box.withLockedValue { $0.hungUp += 1 } }
    }

    private let counts: Counts
    private let onReuse: OnReuse
    private var request = ""
    private var answered = 0

    init(_ counts: Counts, onReuse: OnReuse) {
        self.counts = counts
        self.onReuse = onReuse
    }

    func channelActive(context: ChannelHandlerContext) {
        self.counts.connected()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.request += String(buffer: self.unwrapInboundIn(data))
        guard let end = self.request.range(of: "\r\n\r\n") else { return }
        let head = self.request[..<end.lowerBound].lowercased()
        let bodyLength = head.components(separatedBy: "\r\n").first { $0.hasPrefix("content-length:") }
            .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
        guard self.request.utf8.count >= self.request.distance(from: self.request.startIndex, to: end.upperBound) + bodyLength else { return }
        self.request = ""
        if self.answered > 0 {
            guard self.onReuse == .hangUp else { return }
            self.counts.hungUp()
            context.close(promise: nil)
            return
        }
        self.answered += 1
        context.writeAndFlush(NIOAny(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")), promise: nil)
    }
}
