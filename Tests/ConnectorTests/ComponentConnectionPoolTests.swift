import NIOCore
import NIOEmbedded
import Testing

@testable import Connector

/// Idle component connections: reused on their own loop, bounded per component and loop, closed
/// after the idle timeout, and forgotten when they close while idle.
@Suite struct ComponentConnectionPoolTests {
    func connection(_ loop: EmbeddedEventLoop) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel(loop: loop)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    @Test func aReleasedConnectionIsReusedOnItsLoopAndComponentOnly() throws {
        let loop = EmbeddedEventLoop()
        let pool = ComponentConnectionPool(maxIdlePerKey: 4, idleTimeout: .seconds(2))
        let channel = try self.connection(loop)
        pool.release(channel, component: "ui")
        #expect(pool.take(component: "api", loop: loop) == nil)
        #expect(pool.take(component: "ui", loop: EmbeddedEventLoop()) == nil)
        #expect(pool.take(component: "ui", loop: loop) === channel)
        #expect(pool.take(component: "ui", loop: loop) == nil, "taken once")
        loop.advanceTime(by: .seconds(3))
        #expect(channel.isActive, "a connection in use is not closed by its idle timeout")
    }

    @Test func beyondTheBoundAReleasedConnectionIsClosed() throws {
        let loop = EmbeddedEventLoop()
        let pool = ComponentConnectionPool(maxIdlePerKey: 2, idleTimeout: .seconds(2))
        let channels = try (0..<3).map { _ in try self.connection(loop) }
        for channel in channels { pool.release(channel, component: "ui") }
        #expect(channels.map(\.isActive) == [true, true, false])
    }

    @Test func anIdleConnectionClosesAfterTheTimeoutAndIsForgotten() throws {
        let loop = EmbeddedEventLoop()
        let pool = ComponentConnectionPool(maxIdlePerKey: 4, idleTimeout: .seconds(2))
        let channel = try self.connection(loop)
        pool.release(channel, component: "ui")
        loop.advanceTime(by: .seconds(1))
        #expect(channel.isActive)
        loop.advanceTime(by: .seconds(1))
        #expect(!channel.isActive, "closed at the idle timeout")
        #expect(pool.take(component: "ui", loop: loop) == nil)
    }

    @Test func aConnectionTheComponentClosesWhileIdleIsForgotten() throws {
        let loop = EmbeddedEventLoop()
        let pool = ComponentConnectionPool(maxIdlePerKey: 1, idleTimeout: .seconds(2))
        let first = try self.connection(loop)
        pool.release(first, component: "ui")
        try first.close().wait()
        // Its place is free again: the next release is kept, not closed as over the bound.
        let second = try self.connection(loop)
        pool.release(second, component: "ui")
        #expect(second.isActive)
        #expect(pool.take(component: "ui", loop: loop) === second)
    }

    @Test func bytesFromAnIdleConnectionCloseIt() throws {
        let loop = EmbeddedEventLoop()
        let pool = ComponentConnectionPool(maxIdlePerKey: 4, idleTimeout: .seconds(2))
        let channel = try self.connection(loop)
        pool.release(channel, component: "ui")
        try channel.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\n"))
        #expect(!channel.isActive)
        #expect(pool.take(component: "ui", loop: loop) == nil)
    }
}
