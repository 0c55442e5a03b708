import NIOCore
import NIOEmbedded
import NIOWebSocket
import Testing

@testable import TunnelCore

/// Our encoder's bytes, read back by NIO's decoder, are the frames we wrote.
@Suite struct MaskingFrameEncoderTests {
    /// `room`: bytes free in front of the payload (the byte-stream handler leaves 14); with room
    /// for the header, the frame leaves as one buffer (one TLS record), and without, as two.
    @Test(arguments: [0, 1, 125, 126, 127, 65_535, 65_536, 200_000], [0, 14])
    func framesRoundTripThroughNIOsDecoder(length: Int, room: Int) throws {
        for maskKey in [nil, WebSocketMaskingKey.random()] {
            let payload = ByteBuffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7) })
            var data = ByteBuffer(repeating: 0xEE, count: room)
            data.writeImmutableBuffer(payload)
            data.moveReaderIndex(forwardBy: room)
            let frame = WebSocketFrame(fin: length % 2 == 0, opcode: .binary, maskKey: maskKey, data: data)
            let encoder = EmbeddedChannel(handler: MaskingFrameEncoder())
            try encoder.writeOutbound(frame)
            var wire = ByteBuffer()
            var buffers = 0
            while var part = try encoder.readOutbound(as: ByteBuffer.self) {
                wire.writeBuffer(&part)
                buffers += 1
            }
            #expect(buffers == (room == 0 ? 2 : 1))
            let decoder = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 20)))
            try decoder.writeInbound(wire)
            let decoded = try #require(try decoder.readInbound(as: WebSocketFrame.self))
            #expect(decoded.fin == frame.fin)
            #expect(decoded.opcode == .binary)
            #expect(decoded.maskKey == maskKey)
            #expect(decoded.unmaskedData == payload)
            #expect(wire.readableBytes == length + 2 + (length > 65_535 ? 8 : length > 125 ? 2 : 0) + (maskKey == nil ? 0 : 4))
        }
    }

    @Test func controlFramesKeepTheirOpcode() throws {
        let encoder = EmbeddedChannel(handler: MaskingFrameEncoder())
        for opcode in [WebSocketOpcode.ping, .pong, .connectionClose, .continuation] {
            try encoder.writeOutbound(WebSocketFrame(fin: true, opcode: opcode, maskKey: .random(), data: ByteBuffer(string: "x")))
        }
        var wire = ByteBuffer()
        while var part = try encoder.readOutbound(as: ByteBuffer.self) { wire.writeBuffer(&part) }
        let decoder = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder()))
        try decoder.writeInbound(wire)
        var opcodes: [WebSocketOpcode] = []
        while let frame = try decoder.readInbound(as: WebSocketFrame.self) { opcodes.append(frame.opcode) }
        #expect(opcodes == [.ping, .pong, .connectionClose, .continuation])
    }

    @Test func acceptValueMatchesTheRFCExample() {
        // RFC 6455 section 1.3.
        #expect(WebSocketHandshake.acceptValue(for: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }
}
