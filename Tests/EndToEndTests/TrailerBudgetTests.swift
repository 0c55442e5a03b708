import CustomerAudit
import Foundation
import NIOCore
import NIOHTTP1
import RelayModel
import TestSupport
import Testing
import TunnelCore

/// Trailers are headers that come after a body, and HTTP/2 carries them in one frame like a head:
/// one larger than the next link's frame would fail that whole link (NIOHTTP2 cannot split a
/// header block, so it closes the connection). Heads were held to the budget; trailers are too,
/// so a component's or an engineer's oversized trailers fail that one request.
@Suite(.serialized) struct TrailerBudgetTests {
    /// About 21 KiB once encoded: past one 16 KiB frame.
    static var bigTrailers: HTTPHeaders {
        HTTPHeaders((0..<40).map { ("x-filler-\($0)", String(repeating: "b", count: 680)) })
    }

    @Test func aComponentsOversizedTrailersCutThatResponseAloneNeverTheTunnel() async throws {
        let trailing = try await TestComponentServer.start { TrailerComponent(trailers: Self.bigTrailers) }
        let stack = try await TestStack.start(extraComponents: ["trailing": trailing.url])
        let tunnel = try #require(stack.relay.registry.tunnels(cluster: "demo").first)
        let ui = try await stack.openSession()
        let session = try await stack.openSession(component: "trailing")
        // Small trailers go through as they came.
        let small = try await TestHTTPConnection.request(port: session.localAddress!.port!, .GET, "/small")
        #expect(small.status == .ok && small.trailers?.first(name: "x-checksum") == "abc", "\(small.status) \(String(describing: small.trailers))")
        // Oversized ones: that response is cut (the engineer's client sees it end early), nothing else.
        do {
            let answer = try await TestHTTPConnection.request(port: session.localAddress!.port!, .GET, "/big")
            #expect(answer.status != .ok, "a cut response does not look complete: \(answer.status)")
        } catch {
            // The connection closed before the response's end: what an engineer's client sees of a cut.
        }
        #expect(stack.relay.registry.tunnels(cluster: "demo").map(\.id) == [tunnel.id], "the tunnel stays")
        #expect(try await TestHTTPConnection.request(port: ui.localAddress!.port!, .GET, "/api/status").status == .ok)
        #expect(try await TestHTTPConnection.request(port: session.localAddress!.port!, .GET, "/small").status == .ok)
        // The customer's audit says what happened to it.
        stack.privacy.audit.sync()
        let records = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 500)
        #expect(records.contains { $0.event == "request" && $0.path == "/big" && $0.reason?.contains("trailers are larger") == true },
            "\(records.filter { $0.path == "/big" })")
        try await session.close()
        try await ui.close()
        await stack.stop()
        try await trailing.close()
    }

    @Test func anEngineersOversizedTrailersFailThatRequestAloneWith431() async throws {
        let stack = try await TestStack.start()
        let tunnel = try #require(stack.relay.registry.tunnels(cluster: "demo").first)
        let session = try await stack.openSession()
        let port = session.localAddress!.port!
        let connection = try await TestHTTPConnection.connect(port: port)
        let refused = try await connection.request(.POST, "/upload", body: Array("hello".utf8), chunked: true, trailers: Self.bigTrailers)
        #expect(refused.status == .requestHeaderFieldsTooLarge && refused.headers.first(name: WireHeader.error) == "request_headers_too_large",
            "\(refused.status) \(refused.text)")
        #expect(refused.text.contains("trailers"), "\(refused.text)")
        // The engineer's session goes on, and so does the tunnel. Trailers get the whole frame (about
        // 13.5 KiB here): nothing is added to them on the way, unlike a head.
        let fitting = HTTPHeaders((0..<18).map { ("x-fit-\($0)", String(repeating: "b", count: 1000)) })
        let passed = try await connection.request(.POST, "/upload", body: Array("hello".utf8), chunked: true, trailers: fitting)
        #expect(passed.status == .ok, "\(passed.status) \(passed.text)")
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/api/status").status == .ok)
        #expect(stack.relay.registry.tunnels(cluster: "demo").map(\.id) == [tunnel.id])
        await connection.close()
        try await session.close()
        await stack.stop()
    }
}

/// Answers with a chunked body and trailers: small ones on `/small`, `trailers` otherwise.
final class TrailerComponent: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private let trailers: HTTPHeaders
    private var request = ""
    init(trailers: HTTPHeaders) { self.trailers = trailers }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.request += String(buffer: self.unwrapInboundIn(data))
        guard let end = self.request.range(of: "\r\n\r\n") else { return }
        let small = self.request.hasPrefix("GET /small")
        self.request = String(self.request[end.upperBound...])
        var text = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n2\r\nok\r\n0\r\n"
        if small {
            text += "x-checksum: abc\r\n"
        } else {
            for (name, value) in self.trailers { text += "\(name): \(value)\r\n" }
        }
        context.writeAndFlush(NIOAny(ByteBuffer(string: text + "\r\n")), promise: nil)
    }
}
