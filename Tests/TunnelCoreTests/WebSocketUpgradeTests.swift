import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOWebSocket
import Testing

@testable import TunnelCore

/// The client side of the upgrade, on an EmbeddedChannel: what the relay sends is what arrives.
@Suite struct WebSocketUpgradeTests {
    final class Capture: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        var bytes = ByteBuffer()
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = self.unwrapInboundIn(data)
            self.bytes.writeBuffer(&buffer)
        }
    }

    func start() throws -> (EmbeddedChannel, EventLoopPromise<(Channel, Capture)>, String) {
        let channel = EmbeddedChannel()
        let url = try WebSocketURL(parsing: "wss://127.0.0.1:8443/v1/tunnel")
        let promise = channel.eventLoop.makePromise(of: (Channel, Capture).self)
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: url.path, headers: ["host": "127.0.0.1:8443"])
        try WebSocketDialer.configureUpgrade(channel: channel, head: head, url: url, limits: TunnelLimits(), promise: promise) { channel in
            let capture = Capture()
            try channel.pipeline.syncOperations.addHandlers([WebSocketByteStreamHandler(role: .client), capture])
            return capture
        }
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 8443)).wait()
        var request = ByteBuffer()
        while var part = try channel.readOutbound(as: ByteBuffer.self) { request.writeBuffer(&part) }
        let text = String(buffer: request)
        let key = text.split(separator: "\r\n").first { $0.lowercased().hasPrefix("sec-websocket-key:") }!
            .split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces)
        return (channel, promise, key)
    }

    /// RFC 6455 4.2.2 accept value, computed by NIO's server upgrader.
    func accept(for key: String) throws -> String {
        let server = EmbeddedChannel()
        let upgrader = NIOWebSocketServerUpgrader(
            shouldUpgrade: { channel, _ in channel.eventLoop.makeSucceededFuture([:]) },
            upgradePipelineHandler: { channel, _ in channel.eventLoop.makeSucceededVoidFuture() })
        var headers = HTTPHeaders()
        headers.add(name: "sec-websocket-key", value: key)
        headers.add(name: "sec-websocket-version", value: "13")
        headers.add(name: "upgrade", value: "websocket")
        headers.add(name: "connection", value: "upgrade")
        let response = try upgrader.buildUpgradeResponse(
            channel: server, upgradeRequest: HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: headers),
            initialResponseHeaders: [:]
        ).wait()
        return response.first(name: "sec-websocket-accept")!
    }

    @Test func tunnelBytesInTheSameReadAsThe101AreKept() throws {
        let (channel, promise, key) = try self.start()
        var wire = ByteBuffer(string:
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
            + "sec-websocket-accept: \(try self.accept(for: key))\r\nsec-websocket-protocol: relay-tunnel.v1\r\n\r\n")
        // The relay's HTTP/2 preface, in a websocket frame, right behind the 101.
        let encoder = EmbeddedChannel(handler: WebSocketFrameEncoder())
        try encoder.writeOutbound(WebSocketFrame(fin: true, opcode: .binary, data: ByteBuffer(string: "PRI * HTTP/2.0\r\n")))
        while var part = try encoder.readOutbound(as: ByteBuffer.self) { wire.writeBuffer(&part) }
        try channel.writeInbound(wire)
        channel.embeddedEventLoop.run()
        let (_, capture) = try promise.futureResult.wait()
        #expect(String(buffer: capture.bytes) == "PRI * HTTP/2.0\r\n")
    }

    @Test func refusalFailsTheDialWithTheRelaysStatusAndMessage() throws {
        let (channel, promise, _) = try self.start()
        let body = "{\"error\":\"unauthorized\",\"message\":\"invalid credentials; check the \\\"configured\\\" secret or token\"}\n"
        try channel.writeInbound(ByteBuffer(string:
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: \(body.utf8.count)\r\n\r\n\(body)"))
        channel.embeddedEventLoop.run()
        #expect {
            try promise.futureResult.wait()
        } throws: { error in
            guard let error = error as? DialError else { return false }
            return error.kind == .rejected(status: 401) && error.message.hasSuffix("401 invalid credentials; check the \"configured\" secret or token")
        }
        #expect(!channel.isActive)
    }
}
