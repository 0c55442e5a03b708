import NIOCore
import NIOEmbedded
import NIOWebSocket
import Testing

@testable import TunnelCore

/// The websocket <-> byte-stream adapter, on an EmbeddedChannel with NIO's real frame codec in front.
@Suite struct WebSocketByteStreamHandlerTests {
    /// A server-side tunnel end: raw bytes in, frames decoded by NIO's decoder, bytes out of the adapter.
    func makeChannel(maxFrameSize: Int = 1 << 16, outbound: Int = 1 << 16, role: WebSocketByteStreamHandler.Role = .server,
                     keepalive: TimeAmount? = nil, keepaliveTimeout: TimeAmount? = nil) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandlers([
            ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: maxFrameSize)),
            WebSocketFrameEncoder(),
            WebSocketProtocolErrorHandler(isServer: role == .server),
            WebSocketByteStreamHandler(role: role, maxOutboundFrameSize: outbound, keepaliveInterval: keepalive, keepaliveTimeout: keepaliveTimeout),
        ])
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    /// Encodes frames as a client would put them on the wire (masked).
    func wire(_ frames: [WebSocketFrame]) throws -> ByteBuffer {
        let encoder = EmbeddedChannel(handler: WebSocketFrameEncoder())
        for frame in frames { try encoder.writeOutbound(frame) }
        var out = ByteBuffer()
        while var part = try encoder.readOutbound(as: ByteBuffer.self) { out.writeBuffer(&part) }
        return out
    }

    func frame(_ opcode: WebSocketOpcode, _ text: String, fin: Bool = true) -> WebSocketFrame {
        WebSocketFrame(fin: fin, opcode: opcode, maskKey: .random(), data: ByteBuffer(string: text))
    }

    func inboundBytes(_ channel: EmbeddedChannel) throws -> String {
        var out = ByteBuffer()
        while var part = try channel.readInbound(as: ByteBuffer.self) { out.writeBuffer(&part) }
        return String(buffer: out)
    }

    /// Decodes every frame the handler wrote, once the event loop's turn has ended (when flushes go out).
    func outboundFrames(_ channel: EmbeddedChannel) throws -> [WebSocketFrame] {
        channel.embeddedEventLoop.run()
        var bytes = ByteBuffer()
        while var part = try channel.readOutbound(as: ByteBuffer.self) { bytes.writeBuffer(&part) }
        let decoder = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 24)))
        try decoder.writeInbound(bytes)
        var frames: [WebSocketFrame] = []
        while let frame = try decoder.readInbound(as: WebSocketFrame.self) { frames.append(frame) }
        return frames
    }

    func closeCode(_ frame: WebSocketFrame?) -> WebSocketErrorCode? {
        var data = frame?.unmaskedData
        return data?.readWebSocketErrorCode()
    }

    @Test func pingsFromAPeerThatDoesNotReadQueueNoPongs() throws {
        let channel = try self.makeChannel()
        try channel.writeInbound(try self.wire([self.frame(.ping, "1")]))
        #expect(try self.outboundFrames(channel).map(\.opcode) == [.pong], "a ping is answered")
        // The peer stops reading: our writes back up and the channel is no longer writable.
        channel.isWritable = false
        try channel.writeInbound(try self.wire((0..<1000).map { self.frame(.ping, "\($0)") }))
        #expect(try self.outboundFrames(channel).isEmpty, "no pong is queued while the peer does not read")
        channel.isWritable = true
        try channel.writeInbound(try self.wire([self.frame(.ping, "2")]))
        #expect(try self.outboundFrames(channel).count == 1)
    }

    @Test func binaryMessagesBecomeOneByteStreamWhateverTheirBoundaries() throws {
        let channel = try self.makeChannel()
        try channel.writeInbound(try self.wire([
            self.frame(.binary, "PRI * HT"), self.frame(.binary, "TP/2.0", fin: false), self.frame(.continuation, "\r\n\r\n", fin: false),
            self.frame(.continuation, "SM\r\n\r\n"),
        ]))
        #expect(try self.inboundBytes(channel) == "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        #expect(channel.isActive)
    }

    @Test func framesSplitAcrossReadsAtEveryByteAreReassembled() throws {
        let channel = try self.makeChannel()
        let message = String(repeating: "0123456789abcdef", count: 40)  // 640 bytes: 16-bit length form
        var wire = try self.wire([self.frame(.binary, message, fin: false), self.frame(.continuation, "tail")])
        while wire.readableBytes > 0 {
            try channel.writeInbound(wire.readSlice(length: min(3, wire.readableBytes))!)
        }
        #expect(try self.inboundBytes(channel) == message + "tail")
    }

    @Test func writesBetweenFlushesGoOutAsOneBinaryMessage() throws {
        let channel = try self.makeChannel(outbound: 1024)
        channel.write(ByteBuffer(string: "frame-header"), promise: nil)
        channel.write(ByteBuffer(string: "payload"), promise: nil)
        channel.flush()
        let frames = try self.outboundFrames(channel)
        #expect(frames.count == 1)
        #expect(frames.first?.opcode == .binary)
        #expect(frames.first?.fin == true)
        #expect(frames.first.map { String(buffer: $0.unmaskedData) } == "frame-headerpayload")
    }

    /// Streams that flush in one turn of the event loop (responses read from several components)
    /// share one frame: one TLS record and one write instead of one each.
    @Test func flushesInOneTurnOfTheEventLoopShareOneFrame() throws {
        let channel = try self.makeChannel(outbound: 1024)
        channel.writeAndFlush(ByteBuffer(string: "first "), promise: nil)
        channel.writeAndFlush(ByteBuffer(string: "second"), promise: nil)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil, "nothing leaves before the turn ends")
        let frames = try self.outboundFrames(channel)
        #expect(frames.map { String(buffer: $0.unmaskedData) } == ["first second"])
        channel.writeAndFlush(ByteBuffer(string: "later"), promise: nil)
        #expect(try self.outboundFrames(channel).map { String(buffer: $0.unmaskedData) } == ["later"])
    }

    /// What a stream writes while the tunnel is reading (an answer to a frame just read) waits for
    /// the end of the read, and leaves with what the others wrote meanwhile.
    @Test func flushesDuringAReadLeaveAtItsEnd() throws {
        let channel = try self.makeChannel(outbound: 1024)
        final class Answerer: ChannelInboundHandler, @unchecked Sendable {
            typealias InboundIn = ByteBuffer
            func channelRead(context: ChannelHandlerContext, data: NIOAny) {
                context.writeAndFlush(NIOAny(ByteBuffer(string: "ack;")), promise: nil)
            }
        }
        try channel.pipeline.syncOperations.addHandler(Answerer())
        try channel.writeInbound(try self.wire([self.frame(.binary, "one", fin: false), self.frame(.continuation, "two")]))
        var bytes = ByteBuffer()
        while var part = try channel.readOutbound(as: ByteBuffer.self) { bytes.writeBuffer(&part) }
        let decoder = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder()))
        try decoder.writeInbound(bytes)
        #expect(try decoder.readInbound(as: WebSocketFrame.self).map { String(buffer: $0.unmaskedData) } == "ack;ack;")
        #expect(try decoder.readInbound(as: WebSocketFrame.self) == nil)
    }

    /// Bulk data does not wait for the end of the turn: once a frame's worth is written, it
    /// leaves, and the handler never holds more than about one frame.
    @Test func aFullFramesWorthLeavesWithoutWaitingForTheFlush() throws {
        let channel = try self.makeChannel(outbound: 1024)
        for part in ["a", "b", "c"] { channel.write(ByteBuffer(string: String(repeating: part, count: 400)), promise: nil) }
        var early = ByteBuffer()
        while var part = try channel.readOutbound(as: ByteBuffer.self) { early.writeBuffer(&part) }
        let decoder = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder()))
        try decoder.writeInbound(early)
        #expect(try decoder.readInbound(as: WebSocketFrame.self).map { String(buffer: $0.unmaskedData) }
            == String(repeating: "a", count: 400) + String(repeating: "b", count: 400), "sent before any flush")
        channel.flush()
        #expect(try self.outboundFrames(channel).map { String(buffer: $0.unmaskedData) } == [String(repeating: "c", count: 400)])
    }

    /// As HTTP/2 writes: a 9-byte frame header, then its payload. Frames end after whole writes,
    /// so never with a header whose payload is in the next frame.
    @Test func framesLeaveAfterWholeWritesNeverSplittingAHeaderFromItsPayload() throws {
        let channel = try self.makeChannel(outbound: 1024)
        for index in 0..<12 {
            channel.write(ByteBuffer(repeating: 0xF0, count: 9), promise: nil)
            channel.write(ByteBuffer(repeating: UInt8(index), count: 300), promise: nil)
        }
        channel.flush()
        let sizes = try self.outboundFrames(channel).map { $0.unmaskedData.readableBytes }
        #expect(sizes.reduce(0, +) == 12 * 309)
        #expect(sizes.allSatisfy { $0 % 309 == 0 && $0 <= 1024 }, "\(sizes)")
    }

    @Test func largeFlushIsSplitIntoFramesNoBiggerThanTheLimit() throws {
        let channel = try self.makeChannel(outbound: 1024)
        let payload = String(repeating: "x", count: 2500)
        let written = channel.writeAndFlush(ByteBuffer(string: payload))
        let frames = try self.outboundFrames(channel)
        #expect(frames.map(\.opcode) == [.binary, .continuation, .continuation])
        #expect(frames.map(\.fin) == [false, false, true])
        #expect(frames.map { $0.unmaskedData.readableBytes } == [1024, 1024, 452])
        #expect(frames.map { String(buffer: $0.unmaskedData) }.joined() == payload)
        try written.wait()
    }

    @Test func clientMasksEveryFrameAndServerNever() throws {
        let client = try self.makeChannel(role: .client)
        client.writeAndFlush(ByteBuffer(string: "hello"), promise: nil)
        #expect(try self.outboundFrames(client).allSatisfy { $0.maskKey != nil })
        let server = try self.makeChannel(role: .server)
        server.writeAndFlush(ByteBuffer(string: "hello"), promise: nil)
        #expect(try self.outboundFrames(server).allSatisfy { $0.maskKey == nil })
    }

    @Test func frameOverTheLimitClosesWith1009() throws {
        let channel = try self.makeChannel(maxFrameSize: 1024)
        #expect(throws: (any Error).self) {
            try channel.writeInbound(try self.wire([self.frame(.binary, String(repeating: "y", count: 2048))]))
        }
        let frames = try self.outboundFrames(channel)
        #expect(self.closeCode(frames.last) == .messageTooLarge)
        #expect(try self.inboundBytes(channel) == "")
        #expect(!channel.isActive)
    }

    @Test(arguments: [
        ("text frame", [(WebSocketOpcode.text, true)], WebSocketErrorCode.unacceptableData),
        ("continuation with no message", [(.continuation, true)], .protocolError),
        ("new message inside a message", [(.binary, false), (.binary, true)], .protocolError),
    ])
    func protocolViolationsCloseTheTunnelWithTheRightCode(
        _ name: String, _ frames: [(WebSocketOpcode, Bool)], _ code: WebSocketErrorCode
    ) throws {
        let channel = try self.makeChannel()
        _ = try? channel.writeInbound(try self.wire(frames.map { self.frame($0.0, "data", fin: $0.1) }))
        let written = try self.outboundFrames(channel)
        #expect(written.last?.opcode == .connectionClose, "\(name)")
        #expect(self.closeCode(written.last) == code, "\(name)")
        #expect(!channel.isActive, "\(name)")
    }

    @Test func pingIsAnsweredWithPongCarryingTheSamePayload() throws {
        let channel = try self.makeChannel()
        try channel.writeInbound(try self.wire([self.frame(.ping, "are-you-there")]))
        let frames = try self.outboundFrames(channel)
        #expect(frames.count == 1)
        #expect(frames.first?.opcode == .pong)
        #expect(frames.first.map { String(buffer: $0.unmaskedData) } == "are-you-there")
        #expect(channel.isActive)
    }

    @Test func peerCloseIsEchoedThenTheConnectionCloses() throws {
        let channel = try self.makeChannel()
        var data = ByteBuffer()
        data.write(webSocketErrorCode: .goingAway)
        try channel.writeInbound(try self.wire([WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: data)]))
        let frames = try self.outboundFrames(channel)
        #expect(frames.last?.opcode == .connectionClose)
        #expect(self.closeCode(frames.last) == .goingAway)
        #expect(!channel.isActive)
    }

    @Test func closingTheTunnelSendsANormalClosureFrameFirst() throws {
        let channel = try self.makeChannel()
        channel.write(ByteBuffer(string: "last bytes"), promise: nil)
        try channel.close().wait()
        let frames = try self.outboundFrames(channel)
        #expect(frames.map(\.opcode) == [.binary, .connectionClose])
        #expect(self.closeCode(frames.last) == .normalClosure)
    }

    /// The defaults: a ping after 10 s of silence, the peer taken for gone after 25 s.
    @Test func aSilentPeerIsPingedAfterTheIntervalAndDroppedAtTheTimeout() throws {
        let limits = TunnelLimits()
        let channel = try self.makeChannel(keepalive: limits.keepaliveInterval, keepaliveTimeout: limits.keepaliveTimeout)
        let loop = channel.embeddedEventLoop
        loop.advanceTime(by: .milliseconds(9_999))
        #expect(try self.outboundFrames(channel).isEmpty)
        loop.advanceTime(by: .milliseconds(1))
        #expect(try self.outboundFrames(channel).map(\.opcode) == [.ping])
        loop.advanceTime(by: .milliseconds(14_999))
        #expect(try self.outboundFrames(channel).isEmpty, "one ping per silence")
        #expect(channel.isActive)
        loop.advanceTime(by: .milliseconds(1))
        #expect(try self.outboundFrames(channel).isEmpty, "no close frame to a peer taken for gone: the socket just closes")
        #expect(!channel.isActive)
    }

    /// The timeout counts from the peer's last frame: a pong (any frame) starts it again.
    @Test func aFrameFromThePeerStartsTheSilenceAgain() throws {
        let channel = try self.makeChannel(keepalive: .seconds(10), keepaliveTimeout: .seconds(25))
        let loop = channel.embeddedEventLoop
        loop.advanceTime(by: .seconds(10))
        #expect(try self.outboundFrames(channel).map(\.opcode) == [.ping])
        loop.advanceTime(by: .seconds(5))
        try channel.writeInbound(try self.wire([self.frame(.pong, "ka")]))
        loop.advanceTime(by: .seconds(10))
        #expect(try self.outboundFrames(channel).map(\.opcode) == [.ping], "a new silence, a new ping")
        loop.advanceTime(by: .milliseconds(14_999))
        #expect(channel.isActive)
        loop.advanceTime(by: .milliseconds(1))
        #expect(!channel.isActive)
    }

    @Test func anyInboundTrafficKeepsTheTunnelAlive() throws {
        let channel = try self.makeChannel(keepalive: .seconds(20))
        let loop = channel.embeddedEventLoop
        for _ in 0..<5 {
            loop.advanceTime(by: .seconds(15))
            try channel.writeInbound(try self.wire([self.frame(.binary, "x")]))
        }
        _ = try self.inboundBytes(channel)
        #expect(try self.outboundFrames(channel).isEmpty)
        #expect(channel.isActive)
    }
}
