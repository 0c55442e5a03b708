import NIOCore
import NIOWebSocket

/// Encodes websocket frames (RFC 6455 5.2) like NIO's `WebSocketFrameEncoder`, but masks payloads
/// eight bytes at a time. The connector is a websocket client, so every byte of every download is
/// masked; NIO's byte-at-a-time masking took a third of the connector's CPU.
public final class MaskingFrameEncoder: ChannelOutboundHandler {
    public typealias OutboundIn = WebSocketFrame
    public typealias OutboundOut = ByteBuffer

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = self.unwrapOutboundIn(data)
        var payload = frame.data
        let length = payload.readableBytes
        var header = (UInt64(0), UInt64(0))  // at most 14 bytes
        let headerLength = withUnsafeMutableBytes(of: &header) { Self.writeHeader(frame, length: length, into: $0) }
        if let key = frame.maskKey { payload.xorWebSocketMask(key) }
        // The byte-stream handler leaves room in front of each message: header and payload then go
        // out as one buffer, one TLS record (two buffers are two records).
        if payload.readerIndex >= headerLength {
            payload.moveReaderIndex(to: payload.readerIndex - headerLength)
            _ = withUnsafeBytes(of: &header) { payload.setBytes(UnsafeRawBufferPointer(rebasing: $0[..<headerLength]), at: payload.readerIndex) }
            context.write(self.wrapOutboundOut(payload), promise: promise)
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: headerLength)
        _ = withUnsafeBytes(of: &header) { buffer.writeBytes(UnsafeRawBufferPointer(rebasing: $0[..<headerLength])) }
        context.write(self.wrapOutboundOut(buffer), promise: nil)
        context.write(self.wrapOutboundOut(payload), promise: promise)
    }

    /// RFC 6455 5.2's frame header; returns its length.
    private static func writeHeader(_ frame: WebSocketFrame, length: Int, into out: UnsafeMutableRawBufferPointer) -> Int {
        var first = UInt8(webSocketOpcode: frame.opcode)
        if frame.fin { first |= 0x80 }
        if frame.rsv1 { first |= 0x40 }
        if frame.rsv2 { first |= 0x20 }
        if frame.rsv3 { first |= 0x10 }
        out[0] = first
        let maskBit: UInt8 = frame.maskKey == nil ? 0 : 0x80
        var used: Int
        switch length {
        case 0...125:
            out[1] = maskBit | UInt8(length)
            used = 2
        case 126...Int(UInt16.max):
            out[1] = maskBit | 126
            out.storeBytes(of: UInt16(length).bigEndian, toByteOffset: 2, as: UInt16.self)
            used = 4
        default:
            out[1] = maskBit | 127
            out.storeBytes(of: UInt64(length).bigEndian, toByteOffset: 2, as: UInt64.self)
            used = 10
        }
        if let key = frame.maskKey {
            for byte in key {
                out[used] = byte
                used += 1
            }
        }
        return used
    }
}
