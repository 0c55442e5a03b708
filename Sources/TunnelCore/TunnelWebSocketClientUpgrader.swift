import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// The client side of the websocket handshake (RFC 6455 4.1): NIO's `NIOWebSocketClientUpgrader`
/// but installing `MaskingFrameEncoder` instead of NIO's slower encoder. Frame decoding and protocol
/// error handling are NIO's.
final class TunnelWebSocketClientUpgrader: NIOHTTPClientProtocolUpgrader {
    let supportedProtocol = "websocket"
    let requiredUpgradeHeaders: [String] = []

    private let requestKey: String
    private let maxFrameSize: Int
    private let upgradePipelineHandler: @Sendable (Channel, HTTPHeaders) -> EventLoopFuture<Void>

    /// - Parameter upgradePipelineHandler: gets the channel and the `101` response's headers.
    init(maxFrameSize: Int, upgradePipelineHandler: @escaping @Sendable (Channel, HTTPHeaders) -> EventLoopFuture<Void>) {
        self.requestKey = WebSocketHandshake.newKey()
        self.maxFrameSize = maxFrameSize
        self.upgradePipelineHandler = upgradePipelineHandler
    }

    func addCustom(upgradeRequestHeaders: inout HTTPHeaders) {
        upgradeRequestHeaders.add(name: "sec-websocket-key", value: self.requestKey)
        upgradeRequestHeaders.add(name: "sec-websocket-version", value: "13")
    }

    func shouldAllowUpgrade(upgradeResponse: HTTPResponseHead) -> Bool {
        let accept = upgradeResponse.headers["sec-websocket-accept"]
        guard accept.count == 1 else { return false }
        return accept[0] == WebSocketHandshake.acceptValue(for: self.requestKey)
    }


    func upgrade(context: ChannelHandlerContext, upgradeResponse: HTTPResponseHead) -> EventLoopFuture<Void> {
        let channel = context.channel
        return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(MaskingFrameEncoder())
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: self.maxFrameSize)))
            try channel.pipeline.syncOperations.addHandler(WebSocketProtocolErrorHandler(isServer: false))
        }.flatMap {
            self.upgradePipelineHandler(channel, upgradeResponse.headers)
        }
    }
}

/// The two values of RFC 6455's opening handshake.
public enum WebSocketHandshake {
    /// A client's `Sec-WebSocket-Key`: 16 random bytes, base64.
    public static func newKey() -> String {
        var generator = SystemRandomNumberGenerator()
        return Data((0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }).base64EncodedString()
    }

    /// The server's `Sec-WebSocket-Accept` for `key` (RFC 6455 4.2.2): base64(SHA-1(key + GUID)).
    public static func acceptValue(for key: String) -> String {
        let digest = Insecure.SHA1.hash(data: Data((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8))
        return Data(digest).base64EncodedString()
    }
}
