import NIOCore
import NIOEmbedded
import NIOHTTP2
import Testing

@testable import TunnelCore

/// A websocket waits for the peer's first SETTINGS; what it is told when they say yes, no, never
/// come (the connection closed) or are not sent.
struct PeerSettingsTests {
    static func settings(_ values: [HTTP2Setting]) -> HTTP2Frame { HTTP2Frame(streamID: .rootStream, payload: .settings(.settings(values))) }

    @Test func eachAnswerReachesTheWaitersAndLaterCallersAlike() throws {
        let loop = EmbeddedEventLoop()
        let cases: [(String, (PeerSettings) -> Void, PeerSettings.Answer)] = [
            ("announced", { $0.observe(Self.settings([HTTP2Setting(parameter: .enableConnectProtocol, value: 1)])) }, .supported),
            ("not announced", { $0.observe(Self.settings([HTTP2Setting(parameter: .maxConcurrentStreams, value: 100)])) }, .unsupported),
            ("closed first", { $0.learned(.closed) }, .closed),
        ]
        for (name, event, expected) in cases {
            let peer = PeerSettings()
            let waiting = peer.extendedConnect(on: loop)
            event(peer)
            #expect(try waiting.wait() == expected, "\(name): a waiter")
            #expect(try peer.extendedConnect(on: loop).wait() == expected, "\(name): a later caller")
            // Only the first SETTINGS counts (a later one may not turn it off or on).
            peer.observe(Self.settings([]))
            #expect(try peer.extendedConnect(on: loop).wait() == expected, "\(name): after another SETTINGS")
        }
        #expect(PeerSettings.refusal(.supported, peer: "the relay") == nil)
        #expect(PeerSettings.refusal(.unsupported, peer: "the relay")?.code == "websocket_unsupported")
        #expect(PeerSettings.refusal(.closed, peer: "the relay")?.message.contains("closed before") == true, "not blamed on an old version")
    }

    @Test func aPeerThatSendsNoSettingsIsNotWaitedForForever() throws {
        let loop = EmbeddedEventLoop()
        let peer = PeerSettings()
        let waiting = peer.extendedConnect(on: loop, wait: .seconds(10))
        var answer: PeerSettings.Answer?
        waiting.whenSuccess { answer = $0 }
        loop.advanceTime(by: .seconds(9))
        #expect(answer == nil)
        loop.advanceTime(by: .seconds(1))
        #expect(answer == .silent)
        // SETTINGS arriving afterwards still count for the next websocket.
        peer.observe(Self.settings([HTTP2Setting(parameter: .enableConnectProtocol, value: 1)]))
        #expect(try peer.extendedConnect(on: loop).wait() == .supported)
    }
}
