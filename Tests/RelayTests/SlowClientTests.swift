import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import Relay

/// Nothing a client holds open before authenticating is unbounded: counts and paces, on an
/// embedded event loop whose clock the test moves.
@Suite struct SlowClientTests {
    static let logger: Logger = {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return logger
    }()

    @Test func connectionsAreCappedInTotalAndPerAddress() {
        var limits = ConnectionLimits()
        limits.maxTotal = 5
        limits.maxPerAddress = 3
        var counts = ConnectionCounts(limits: limits)
        for _ in 0..<3 { #expect(counts.admit("10.0.0.1") == nil) }
        #expect(counts.admit("10.0.0.1") == .perAddress(3))
        #expect(counts.admit("10.0.0.2") == nil && counts.admit("10.0.0.2") == nil)
        #expect(counts.admit("10.0.0.3") == .total(5))
        counts.release("10.0.0.1")
        #expect(counts.admit("10.0.0.3") == nil, "a closed connection makes room")
        counts.release("10.0.0.9")  // never admitted: nothing to release
        #expect(counts.total == 5 && counts.perAddress == ["10.0.0.1": 2, "10.0.0.2": 2, "10.0.0.3": 1])
    }

    @Test func aBodyMustKeepUpWithTheMinimumRateAfterTheGrace() {
        let pace = RequestPace(grace: .seconds(10), minBodyBytesPerSecond: 1024)
        let head = NIODeadline.uptimeNanoseconds(1_000_000_000)
        #expect(pace.deadline(headAt: head, bodyBytes: 0) == head + .seconds(10))
        #expect(pace.deadline(headAt: head, bodyBytes: 10 * 1024) == head + .seconds(20))
        #expect(pace.deadline(headAt: head, bodyBytes: 512) == head + .milliseconds(10_500))
        // No overflow, whatever the count.
        #expect(pace.deadline(headAt: head, bodyBytes: Int.max) > head + .seconds(1_000_000))
    }

    func guarded() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(
            SlowRequestGuard(pace: RequestPace(grace: .seconds(10), minBodyBytesPerSecond: 1024), logger: Self.logger))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    static func head(_ length: Int) -> HTTPServerRequestPart {
        .head(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/register", headers: ["content-length": "\(length)"]))
    }

    @Test func aLargeContentLengthThenNothingIsClosedAtTheGrace() throws {
        let channel = try self.guarded()
        try channel.writeInbound(Self.head(1_000_000))
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(9_999))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        #expect(!channel.isActive, "closed when the body did not start within the grace")
    }

    @Test func aTrickleIsClosedASteadyBodyIsNot() throws {
        let trickle = try self.guarded()
        try trickle.writeInbound(Self.head(100_000))
        for _ in 0..<12 {
            try trickle.writeInbound(HTTPServerRequestPart.body(ByteBuffer(repeating: 1, count: 100)))
            trickle.embeddedEventLoop.advanceTime(by: .seconds(1))
        }
        #expect(!trickle.isActive, "100 B/s is slower than 1 KiB/s")

        let steady = try self.guarded()
        try steady.writeInbound(Self.head(60 * 2048))
        for _ in 0..<60 {
            try steady.writeInbound(HTTPServerRequestPart.body(ByteBuffer(repeating: 1, count: 2048)))
            steady.embeddedEventLoop.advanceTime(by: .seconds(1))
        }
        try steady.writeInbound(HTTPServerRequestPart.end(nil))
        steady.embeddedEventLoop.advanceTime(by: .seconds(3600))
        #expect(steady.isActive, "2 KiB/s keeps up; after its end the request is no longer timed")
        #expect(try steady.readInbound(as: HTTPServerRequestPart.self) != nil, "the guard only watches: parts go on")
    }
}
