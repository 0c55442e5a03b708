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
        var header = context.channel.allocator.buffer(capacity: 14)
        var first = UInt8(webSocketOpcode: frame.opcode)
        if frame.fin { first |= 0x80 }
        if frame.rsv1 { first |= 0x40 }
        if frame.rsv2 { first |= 0x20 }
        if frame.rsv3 { first |= 0x10 }
        header.writeInteger(first)
        let maskBit: UInt8 = frame.maskKey == nil ? 0 : 0x80
        switch length {
        case 0...125:
            header.writeInteger(maskBit | UInt8(length))
        case 126...Int(UInt16.max):
            header.writeInteger(maskBit | 126)
            header.writeInteger(UInt16(length))
        default:
            header.writeInteger(maskBit | 127)
            header.writeInteger(UInt64(length))
        }
        if let key = frame.maskKey {
            header.writeBytes(key)
            payload.xorWebSocketMask(key)
        }
        context.write(self.wrapOutboundOut(header), promise: nil)
        context.write(self.wrapOutboundOut(payload), promise: promise)
    }
}
