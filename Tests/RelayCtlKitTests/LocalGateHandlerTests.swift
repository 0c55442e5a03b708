import NIOCore
import NIOEmbedded
import NIOHTTP1
@testable import RelayCtlKit
import Testing
import TunnelCore

/// What the local port's gate does on one connection: a sign-in's redirect keeps the connection
/// for the browser's next request; a refusal drops the request's body and closes.
struct LocalGateHandlerTests {
    static func channel(_ access: LocalAccess) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel(handler: LocalGateHandler(access: access))
        channel.localAddress = try SocketAddress(ipAddress: "127.0.0.1", port: 8000)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 50000)).wait()
        return channel
    }

    static func head(_ uri: String, _ headers: [(String, String)] = []) -> HTTPServerRequestPart {
        .head(HTTPRequestHead(version: .http1_1, method: .GET, uri: uri, headers: HTTPHeaders([("host", "ui.demo.localhost:8000")] + headers)))
    }

    @Test func aSignInRedirectsThenTheSameConnectionCarriesTheNextRequest() throws {
        let access = try LocalAccess(cluster: "demo", components: ["ui"])
        let channel = try Self.channel(access)
        let link = access.signInLink(for: "ui", port: 8000)
        try channel.writeInbound(Self.head("/" + link.split(separator: "/", maxSplits: 3)[2]))
        try channel.writeInbound(HTTPServerRequestPart.end(nil))
        guard case .head(let redirect) = try channel.readOutbound(as: HTTPServerResponsePart.self) else {
            Issue.record("no answer to the sign-in")
            return
        }
        #expect(redirect.status == .seeOther && redirect.headers.first(name: "location") == "/")
        let cookie = String(try #require(redirect.headers.first(name: "set-cookie")).split(separator: ";")[0])
        #expect(try channel.readInbound(as: HTTPServerRequestPart.self) == nil, "the sign-in request went nowhere")
        #expect(channel.isActive, "kept for the browser's next request")

        try channel.writeInbound(Self.head("/", [("cookie", cookie)]))
        guard case .head(let carried) = try channel.readInbound(as: HTTPServerRequestPart.self) else {
            Issue.record("the signed-in request was not carried")
            return
        }
        #expect(carried.headers["host"] == ["ui"] && carried.headers["cookie"].isEmpty)
        _ = try channel.finish()
    }

    @Test func aRefusalDropsTheBodyAndClosesTheConnection() throws {
        let channel = try Self.channel(try LocalAccess(cluster: "demo", components: ["ui"]))
        try channel.writeInbound(Self.head("/upload"))
        try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: "secret payload")))
        try channel.writeInbound(HTTPServerRequestPart.end(nil))
        #expect(try channel.readInbound(as: HTTPServerRequestPart.self) == nil, "nothing of it went on")
        guard case .head(let refused) = try channel.readOutbound(as: HTTPServerResponsePart.self) else {
            Issue.record("no refusal")
            return
        }
        #expect(refused.status == .unauthorized && refused.headers.first(name: "connection") == "close")
        #expect(!channel.isActive, "closed after the refusal")
    }
}
