import Dispatch
import NIOCore
import NIOPosix
import NIOWebSocket
import TestSupport
import Testing

@testable import TunnelCore

/// The keepalive on real sockets and real event loops, where a loop can run late: a stall of this
/// side's own loop is not the peer's silence, while a peer that stays silent is still dropped.
/// (An EmbeddedEventLoop runs every task exactly on time, so it cannot show a late tick.)
@Suite(.serialized) struct KeepaliveStallTests {
    static let interval = TimeAmount.milliseconds(100)
    static let timeout = TimeAmount.milliseconds(300)

    static func handlers(_ role: WebSocketByteStreamHandler.Role) -> [ChannelHandler] {
        [
            ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 16)), WebSocketFrameEncoder(),
            WebSocketProtocolErrorHandler(isServer: role == .server),
            WebSocketByteStreamHandler(role: role, keepaliveInterval: Self.interval, keepaliveTimeout: Self.timeout),
        ]
    }

    /// A websocket pair over loopback TCP: the server's end on `serverGroup`, the client's on `clientGroup`.
    static func pair(server serverGroup: EventLoopGroup, client clientGroup: EventLoopGroup) async throws -> (server: Channel, client: Channel, listener: Channel) {
        let accepted = serverGroup.next().makePromise(of: Channel.self)
        let listener = try await ServerBootstrap(group: serverGroup)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(Self.handlers(.server))
                    accepted.succeed(channel)
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let client = try await ClientBootstrap(group: clientGroup)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandlers(Self.handlers(.client)) }
            }
            .connect(host: "127.0.0.1", port: listener.localAddress!.port!).get()
        return (try await accepted.futureResult.get(), client, listener)
    }

    /// When the end's last frame came (read on its loop).
    static func lastInbound(_ channel: Channel) async throws -> NIODeadline {
        try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: WebSocketByteStreamHandler.self).lastInbound
        }.get()
    }

    @Test func aStallOfTheLoopBothEndsShareIsNotTakenForThePeersSilence() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let (server, client, listener) = try await Self.pair(server: group, client: group)
        #expect(try await TestWait.poll(seconds: 30) { server.isActive && client.isActive })
        // Twice the timeout with nothing run: on waking, every keepalive tick is late and no frame
        // has been read. The old code closed both ends on the first tick. The sleep is the stall
        // under test, not a wait: a loaded machine only makes it longer, which changes nothing.
        let stallEnded = try await group.next().submit { () -> NIODeadline in
            usleep(700_000)
            return .now()
        }.get()
        // The event that settles it: each end reads a frame from the other after the stall (a ping
        // or its pong), or it is closed first.
        let settled = try await TestWait.poll(seconds: 10) {
            guard server.isActive && client.isActive else { return true }
            // A handler gone from its pipeline: that end was closed meanwhile.
            guard let fromClient = try? await Self.lastInbound(server), let fromServer = try? await Self.lastInbound(client) else { return true }
            return fromClient > stallEnded && fromServer > stallEnded
        }
        #expect(settled)
        #expect(server.isActive && client.isActive, "a live peer was taken for gone after our own loop stalled")
        try? await client.close()
        try await listener.close()
        try await group.shutdownGracefully()
    }

    @Test func aPeerThatStaysSilentIsStillTakenForGone() async throws {
        let ours = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let peers = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let (server, client, listener) = try await Self.pair(server: ours, client: peers)
        // Accepted is not yet active (the initializer runs first): wait for it, or a drop proves nothing.
        #expect(try await TestWait.poll(seconds: 30) { server.isActive })
        // The peer's loop stays stalled until ours has given up on it (or a generous bound passes):
        // no stall length that a loaded machine could outlast before ours ticks.
        let release = DispatchSemaphore(value: 0)
        peers.next().execute { _ = release.wait(timeout: .now() + 60) }
        let dropped = try await TestWait.poll(seconds: 30) { !server.isActive }
        release.signal()
        #expect(dropped, "a silent peer was kept")
        try? await client.close()
        try await listener.close()
        try await ours.shutdownGracefully()
        try await peers.shutdownGracefully()
    }
}
