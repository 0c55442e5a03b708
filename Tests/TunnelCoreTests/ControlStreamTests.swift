import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import Testing

@testable import TunnelCore

/// The control stream's framing on one stream channel (an EmbeddedChannel stands in for it): the
/// connector's side answers a control head and passes anything else on; lines in, events out; a
/// bad line resets the stream alone.
@Suite struct ControlStreamTests {
    final class Received: Sendable {
        let events = NIOLockedValueBox<[ControlEvent]>([])
        let opened = NIOLockedValueBox(0)
    }

    /// What reaches the handlers after the control handler (an expert request's codec).
    final class PassedOn: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTP2Frame.FramePayload
        var payloads: [HTTP2Frame.FramePayload] = []
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { self.payloads.append(self.unwrapInboundIn(data)) }
    }

    func answerer(_ received: Received, accept: Bool = true) throws -> (EmbeddedChannel, PassedOn) {
        let channel = EmbeddedChannel()
        let passed = PassedOn()
        let handler = ControlStreamHandler(
            role: .answerer(onOpen: { _ in
                received.opened.withLockedValue { $0 += 1 }
                return accept
            }), loop: channel.eventLoop
        ) { event in received.events.withLockedValue { $0.append(event) } }
        try channel.pipeline.syncOperations.addHandlers([handler, passed])
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return (channel, passed)
    }

    static let controlHead: HTTP2Frame.FramePayload = .headers(
        .init(headers: [":method": "POST", ":path": "/", ":scheme": "https", ":authority": "relay", "x-relay-control": "v1"], endStream: false))

    static func data(_ text: String, end: Bool = false) -> HTTP2Frame.FramePayload {
        .data(.init(data: .byteBuffer(ByteBuffer(string: text)), endStream: end))
    }

    @Test func aControlHeadIsAnsweredAndLinesBecomeEventsWhateverTheFrameBoundaries() throws {
        let received = Received()
        let (channel, passed) = try self.answerer(received)
        try channel.writeInbound(Self.controlHead)
        guard case .headers(let answer) = try channel.readOutbound(as: HTTP2Frame.FramePayload.self) else {
            Issue.record("no answer head")
            return
        }
        #expect(answer.headers.first(name: ":status") == "200" && !answer.endStream)
        try channel.writeInbound(Self.data(#"{"event":"session.ended","session":"s1","reason":"closed by the exp"#))
        try channel.writeInbound(Self.data("ert\"}\n{\"event\":\"something.new\",\"reason\":\"later\"}\n"))
        #expect(received.events.withLockedValue { $0 }.map(\.event) == ["session.ended", "something.new"])
        #expect(received.events.withLockedValue { $0 }.first?.reason == "closed by the expert")
        #expect(passed.payloads.isEmpty, "nothing of the control stream reaches the request handlers")
        #expect(channel.isActive)

        // Events the connector sends go out as one JSON line each.
        let handler = try channel.pipeline.syncOperations.handler(type: ControlStreamHandler.self)
        handler.send([ControlEvent(event: ControlEvent.grantEnded, accessRequest: 7, expert: "alice", reason: "idle")])
        guard case .data(let data) = try channel.readOutbound(as: HTTP2Frame.FramePayload.self), case .byteBuffer(let bytes) = data.data else {
            Issue.record("no event written")
            return
        }
        #expect(String(buffer: bytes) == #"{"accessRequest":7,"event":"grant.ended","expert":"alice","reason":"idle"}"# + "\n")
    }

    @Test func anExpertRequestPassesOnUntouched() throws {
        let received = Received()
        let (channel, passed) = try self.answerer(received)
        let head: HTTP2Frame.FramePayload = .headers(.init(headers: [":method": "GET", ":path": "/", ":scheme": "https", ":authority": "ui"]))
        try channel.writeInbound(head)
        try channel.writeInbound(Self.data("{\"event\":\"session.ended\",\"reason\":\"x\"}\n"))
        #expect(passed.payloads.count == 2)
        #expect(received.events.withLockedValue { $0 }.isEmpty && received.opened.withLockedValue { $0 } == 0)
        #expect(try channel.readOutbound(as: HTTP2Frame.FramePayload.self) == nil)
    }

    @Test(arguments: ["not json\n", String(repeating: "x", count: ControlStreamHandler.maxLineBytes + 1)])
    func aBadLineResetsTheStreamAlone(_ text: String) throws {
        let received = Received()
        let (channel, _) = try self.answerer(received)
        try channel.writeInbound(Self.controlHead)
        _ = try channel.readOutbound(as: HTTP2Frame.FramePayload.self)
        try channel.writeInbound(Self.data(text))
        #expect(!channel.isActive, "the stream is closed")
        #expect(received.events.withLockedValue { $0 }.isEmpty)
    }

    @Test func aRefusedControlStreamIsClosed() throws {
        let received = Received()
        let (channel, _) = try self.answerer(received, accept: false)
        try channel.writeInbound(Self.controlHead)
        #expect(!channel.isActive)
    }

    @Test func aFloodOfEventsResetsTheStreamAndAClosedStreamSendsNothing() throws {
        let received = Received()
        let (channel, _) = try self.answerer(received)
        try channel.writeInbound(Self.controlHead)
        _ = try channel.readOutbound(as: HTTP2Frame.FramePayload.self)
        let line = #"{"event":"session.ended","session":"s","reason":"r"}"# + "\n"
        try channel.writeInbound(Self.data(String(repeating: line, count: ControlStreamHandler.maxEventsPerSecond + 1)))
        #expect(!channel.isActive, "more than the budget in a second closes the stream")
        #expect(received.events.withLockedValue { $0 }.count == ControlStreamHandler.maxEventsPerSecond)
        let handler = try? channel.pipeline.syncOperations.handler(type: ControlStreamHandler.self)
        handler?.send([ControlEvent(event: ControlEvent.accessOff, reason: "x")])
        #expect(try channel.readOutbound(as: HTTP2Frame.FramePayload.self) == nil)
    }
}
