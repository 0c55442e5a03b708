import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// The demo component's websockets: `/ws/echo` sends every message back as it came (text or
/// binary, up to 32 MiB), `/ws/live` pushes `{"tick":N}` twice a second, as a cluster UI's live view
/// does, `/ws/flood` sends 128 binary messages of 256 KiB at once, whatever the reader's pace (a
/// test of the path's backpressure). All answer pings and close when asked.
enum DemoWebSocket {
    static let paths: Set<String> = ["/ws/echo", "/ws/live", "/ws/flood"]
    static let floodMessages = 128
    static let floodMessageSize = 256 << 10
    static let maxMessageSize = 32 << 20

    static func upgrader(counters: NIOLockedValueBox<DemoComponent.Counters>) -> NIOWebSocketServerUpgrader {
        NIOWebSocketServerUpgrader(
            maxFrameSize: Self.maxMessageSize,
            shouldUpgrade: { channel, head in
                let path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "")
                // Anything else is an ordinary request (404 from the demo handler).
                var headers = HTTPHeaders()
                if let offered = head.headers.first(name: "sec-websocket-protocol")?.split(separator: ",").first {
                    headers.add(name: "sec-websocket-protocol", value: offered.trimmingCharacters(in: .whitespaces))
                }
                return channel.eventLoop.makeSucceededFuture(Self.paths.contains(path) ? headers : nil)
            },
            upgradePipelineHandler: { channel, head in
                counters.withLockedValue { $0.webSocketsOpened += 1 }
                channel.closeFuture.whenComplete { _ in counters.withLockedValue { $0.webSocketsClosed += 1 } }
                return channel.eventLoop.makeCompletedFuture {
                    // The HTTP handler came after NIO's, which removes only its own.
                    let http = try channel.pipeline.syncOperations.handler(type: DemoHandler.self)
                    channel.pipeline.syncOperations.removeHandler(http, promise: nil)
                    try channel.pipeline.syncOperations.addHandler(
                        NIOWebSocketFrameAggregator(
                            minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: 1 << 16, maxAccumulatedFrameSize: Self.maxMessageSize))
                    try channel.pipeline.syncOperations.addHandler(
                        DemoWebSocketHandler(live: head.uri.hasPrefix("/ws/live"), flood: head.uri.hasPrefix("/ws/flood"), counters: counters))
                }
            })
    }
}

private final class DemoWebSocketHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame
    private let live: Bool
    private let flood: Bool
    private let counters: NIOLockedValueBox<DemoComponent.Counters>
    private var ticker: RepeatedTask?
    private var tick = 0
    private var closing = false

    init(live: Bool, flood: Bool, counters: NIOLockedValueBox<DemoComponent.Counters>) {
        self.live = live
        self.flood = flood
        self.counters = counters
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if self.flood {
            let counters = self.counters
            for index in 0..<DemoWebSocket.floodMessages {
                var data = context.channel.allocator.buffer(capacity: DemoWebSocket.floodMessageSize)
                data.writeRepeatingByte(UInt8(truncatingIfNeeded: index), count: DemoWebSocket.floodMessageSize)
                context.write(self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: .binary, data: data))).whenSuccess {
                    counters.withLockedValue { $0.webSocketBytesSent += DemoWebSocket.floodMessageSize }
                }
            }
            context.flush()
        }
        guard self.live else { return }
        self.ticker = context.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(500)) { [weak self] _ in
            guard let self, !self.closing else { return }
            self.tick += 1
            var text = context.channel.allocator.buffer(capacity: 32)
            text.writeString("{\"tick\":\(self.tick)}")
            context.writeAndFlush(self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: text)), promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) { self.ticker?.cancel() }

    func channelInactive(context: ChannelHandlerContext) {
        self.ticker?.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = self.unwrapInboundIn(data)
        switch frame.opcode {
        case .text, .binary:
            // Echoed whatever the reader's pace: how far the path lets writes through shows its backpressure.
            let size = frame.length
            let counters = self.counters
            context.writeAndFlush(self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: frame.opcode, data: frame.unmaskedData))).whenSuccess {
                counters.withLockedValue { $0.webSocketBytesSent += size }
            }
        case .ping:
            context.writeAndFlush(self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .connectionClose:
            // Answer the close with the same code, then end the connection.
            self.closing = true
            self.ticker?.cancel()
            let reply = WebSocketFrame(fin: true, opcode: .connectionClose, data: frame.unmaskedData)
            context.writeAndFlush(self.wrapOutboundOut(reply)).whenComplete { _ in context.close(promise: nil) }
        default:
            break
        }
    }
}
