import NIOCore
import NIOWebSocket
import Testing

@testable import TunnelCore

@Suite struct WebSocketMaskingTests {
    @Test func matchesNIOsUnmaskForEveryLengthAndKey() {
        var generator = SystemRandomNumberGenerator()
        for length in 0..<70 {
            let key = WebSocketMaskingKey.random(using: &generator)
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            var ours = ByteBuffer(bytes: bytes)
            ours.xorWebSocketMask(key)
            var theirs = ByteBuffer(bytes: bytes)
            theirs.webSocketUnmask(key)
            #expect(ours == theirs, "length \(length)")
            ours.xorWebSocketMask(key)
            #expect(Array(ours.readableBytesView) == bytes, "masking twice is the identity")
            // The one-pass copy, from a slice of a larger buffer (as a decoded frame's payload is).
            let framed = ByteBuffer(bytes: [7, 7, 7] + bytes + [7])
            let payload = framed.getSlice(at: 3, length: length)!
            #expect(payload.xorWebSocketMaskedCopy(key, allocator: ByteBufferAllocator()) == theirs, "copy, length \(length)")
            #expect(Array(payload.readableBytesView) == bytes, "the source is left as it was")
        }
    }

    @Test func worksOnASliceThatDoesNotStartAtZero() {
        let key: WebSocketMaskingKey = [1, 2, 3, 4]
        var buffer = ByteBuffer(bytes: [9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        buffer.moveReaderIndex(forwardBy: 3)
        buffer.xorWebSocketMask(key)
        #expect(Array(buffer.readableBytesView) == [1, 2, 3, 4, 1, 2, 3, 4, 1, 2])
    }
}
