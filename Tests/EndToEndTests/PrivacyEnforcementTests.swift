import Connector
import CustomerAudit
import DemoComponentKit
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOHTTP1
import PrivacyPolicy
import Relay
import RelayAPI
import RelayCtlKit
import RelayModel
import TestSupport
import Testing
import TunnelCore

/// The connector enforces the customer's settings on every stream, whatever the relay sends.
@Suite(.serialized) struct PrivacyEnforcementTests {
    /// `ui` treats paths case-insensitively; `/secrets` is denied everywhere.
    static func start(mode: PrivacyMode = .all, approve: Bool = true, idle: Int64 = 0, maxSession: Int64 = 0) async throws -> TestStack {
        try await TestStack.start(mode: mode, approve: approve) { config in
            config.components[0].caseInsensitivePaths = true
            config.deniedPathPrefixes = ["/secrets"]
            config.idleTimeoutMilliseconds = idle
            config.maxSessionMilliseconds = maxSession
        }
    }

    static func approvedRequest(_ stack: TestStack) async throws -> Int64 {
        try await stack.control.store.requests(clusterID: "demo", states: [.approved]).first!.id
    }

    static func auditRecords(_ stack: TestStack) throws -> [AuditEntry] {
        stack.privacy.audit.sync()
        return try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 1_000_000)
    }

    @Test func bypassInputsNeverReachAComponent() async throws {
        let stack = try await Self.start()
        let request = try await Self.approvedRequest(stack)
        let before = stack.component.counters.requests
        let identity = RogueRelay.identity(request: request)
        let cases: [(String, HTTPMethod, String, [(String, String)])] = [
            ("encoded slash", .GET, "/..%2fsecrets/key", []),
            ("encoded dots", .GET, "/public/%2e%2e/secrets/key", []),
            ("double slash", .GET, "//secrets/key", []),
            ("mixed case", .GET, "/SeCrEtS/key", []),
            ("path parameter", .GET, "/secrets;x=1/key", []),
            // As Tomcat, Jetty and Spring read paths: parameters cut, then dot segments resolved.
            ("Java ..;", .GET, "/x/..;/secrets/key", []),
            ("Java %2e%2e;", .GET, "/x/%2e%2e;/secrets", []),
            ("Java /;x", .GET, "/;x/secrets", []),
            ("Java /.;", .GET, "/.;/secrets", []),
            ("upper case", .GET, "/SECRETS", []),
            ("lower-case method", HTTPMethod(rawValue: "get"), "/", []),
            ("absolute form", .GET, "http://169.254.169.254/latest/meta-data/", []),
            ("Host 127.1", .GET, "/", [("host", "127.1")]),
            ("Host v4-mapped", .GET, "/", [("host", "[::ffff:127.0.0.1]")]),
            ("Host 0.0.0.0", .GET, "/", [("host", "0.0.0.0")]),
            ("two Content-Length", .POST, "/upload", [("content-length", "5"), ("content-length", "6")]),
            ("method override", .GET, "/", [("x-http-method-override", "DELETE")]),
        ]
        var answeredByConnector = 0
        for (name, method, target, extra) in cases {
            let answer = try await RogueRelay.send(stack, method: method, target: target, headers: identity + extra, body: method == .POST ? Array("hello".utf8) : nil)
            #expect(answer.status.map { $0 >= 400 } ?? true, "\(name): \(answer)")
            if answer.error != nil { answeredByConnector += 1 }
        }
        // CONNECT as HTTP/2 carries it: refused, or reset by the connector's codec; the tunnel stays.
        let connect = try await RogueRelay.connect(stack, authority: "169.254.169.254:80", identity: identity)
        #expect(connect.status.map { $0 >= 400 } ?? true, "CONNECT: \(connect)")
        #expect(stack.relay.registry.count == 1)
        // An unlisted component, and a viewer's POST.
        let unlisted = try await RogueRelay.send(stack, method: .GET, target: "/", headers: RogueRelay.identity(request: request, component: "db"))
        #expect(unlisted.status == 404 && unlisted.error == "unknown_component")
        let viewerPost = try await RogueRelay.send(
            stack, method: .POST, target: "/upload", headers: RogueRelay.identity(request: request, role: "viewer"), body: [1])
        #expect(viewerPost.status == 403 && viewerPost.error == "role_forbids_method")
        #expect(stack.component.counters.requests == before, "no bypass input reached the component")

        // The same inputs a browser or curl could send through relayctl's local port.
        let listener = try await stack.openSession()
        let port = listener.localAddress!.port!
        for (target, headers) in [("//secrets/key", []), ("/SECRETS/key", []), ("/..%2fsecrets", []), ("/", [("host", "127.1")])] as [(String, [(String, String)])] {
            let response = try await TestHTTPConnection.request(port: port, .GET, target, headers: headers)
            #expect(response.status.code >= 400, "\(target)")
            #expect(response.headers.first(name: WireHeader.error) != nil, "\(target): refused with a reason")
        }
        // Smuggling pairs in HTTP/1 at the engineer's port (HTTP/2 cannot carry them: it has no
        // Transfer-Encoding, and NIOHTTP2 resets a stream whose Content-Length values differ).
        for raw in [
            "POST /upload HTTP/1.1\r\nHost: ui\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST /upload HTTP/1.1\r\nHost: ui\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "POST /upload HTTP/1.1\r\nHost: ui\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ] {
            let statusLine = try await RawHTTP.firstLine(port: port, raw)
            #expect(statusLine.hasPrefix("HTTP/1.1 4"), "\(raw.debugDescription): \(statusLine)")
        }
        #expect(stack.component.counters.requests == before)
        // A plain request goes through, so the refusals above are the policy's, not a broken path.
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/api/status").status == .ok)
        #expect(stack.component.counters.requests == before + 1)

        let denied = try Self.auditRecords(stack).filter { $0.event == "request" && $0.decision == "deny" }
        #expect(denied.count >= answeredByConnector + 2 + 4, "every refusal the connector made is in the customer's audit log")
        #expect(denied.allSatisfy { $0.reason?.isEmpty == false })
        try await listener.close()
        await stack.stop()
    }

    /// Headers that re-route a request or claim an identity never reach a component from an expert;
    /// the connector's own X-Forwarded-* do, and a component cannot speak for the connector.
    @Test func routingAndIdentityHeadersAreTheConnectorsOwn() async throws {
        let stack = try await Self.start()
        let listener = try await stack.openSession()
        let port = listener.localAddress!.port!
        let sent = [
            ("X-Original-URL", "/secrets/key"), ("X-Rewrite-URL", "/secrets"), ("X-Forwarded-For", "10.9.9.9"),
            ("X-Forwarded-Host", "admin.internal"), ("X-Forwarded-User", "root"), ("Forwarded", "for=10.9.9.9"),
            ("X-Real-IP", "10.9.9.9"), ("X-Remote-User", "root"), ("X-WEBAUTH-USER", "admin"), ("Accept", "text/plain"),
        ]
        let echoed = try await TestHTTPConnection.request(port: port, .GET, "/headers", headers: sent)
        #expect(echoed.status == .ok)
        for forbidden in ["x-original-url", "x-rewrite-url", "x-forwarded-user", "forwarded\"", "x-real-ip", "x-remote-user", "x-webauth-user",
                          "10.9.9.9", "admin.internal", "x-relay-"] {
            #expect(!echoed.text.lowercased().contains(forbidden), "\(forbidden) reached the component: \(echoed.text)")
        }
        #expect(echoed.text.contains("\"x-forwarded-for\":\"127.0.0.1\""), "the expert's address as the relay saw it: \(echoed.text)")
        #expect(echoed.text.contains("\"x-forwarded-proto\":\"https\"") && echoed.text.contains("\"x-forwarded-host\":\"ui\""))
        #expect(echoed.text.contains("\"accept\":\"text/plain\""))
        let record = try Self.auditRecords(stack).last { $0.event == "request" && $0.path == "/headers" }
        #expect(record?.detail?.contains("headers removed: x-original-url, x-rewrite-url, x-forwarded-for") == true, "\(String(describing: record))")

        // A component that answers with the connector's headers: they are dropped, the session goes on.
        let forged = try await TestHTTPConnection.request(
            port: port, .GET, "/response-headers?x-relay-session-ended=forged&x-relay-error=forged&x-component=kept")
        #expect(forged.status == .ok && forged.headers.first(name: "x-component") == "kept")
        #expect(forged.headers.first(name: WireHeader.sessionEnded) == nil && forged.headers.first(name: WireHeader.error) == nil)
        #expect(try await TestHTTPConnection.request(port: port, .GET, "/api/status").status == .ok, "the session was not ended")
        try await listener.close()
        await stack.stop()
    }

    @Test func auditRecordsMatchWhatTheComponentReceived() async throws {
        let stack = try await Self.start()
        let listener = try await stack.openSession()
        let port = listener.localAddress!.port!
        let before = stack.component.counters.requests
        var generator = SeededGenerator(seed: 42)
        let shapes: [(HTTPMethod, String, [(String, String)])] = [
            (.GET, "/api/status", []), (.GET, "/", []), (.POST, "/upload", []), (.GET, "/secrets/x", []),
            (.GET, "/api/status", [("host", "0.0.0.0")]), (.DELETE, "/api/status", []), (.GET, "/api/status?_method=DELETE", []),
            (.HEAD, "/", []),
        ]
        var refused = 0
        let count = 60
        for _ in 0..<count {
            let (method, target, headers) = shapes[Int(generator.next() % UInt64(shapes.count))]
            let response = try await TestHTTPConnection.request(
                port: port, method, target, headers: headers, body: method == .POST ? Array(repeating: 7, count: 100) : nil)
            if response.headers.first(name: WireHeader.error) != nil { refused += 1 }
        }
        let received = stack.component.counters.requests - before
        let records = try Self.auditRecords(stack).filter { $0.event == "request" }
        #expect(records.count == count)
        #expect(records.filter { $0.decision == "allow" }.count == received, "allowed records == requests the component received")
        #expect(records.filter { $0.decision == "deny" }.count == refused)
        #expect(refused > 0 && received > 0)
        #expect(records.allSatisfy { $0.expert == "alice" && $0.role == "admin" && $0.component == "ui" && $0.requestID != nil })
        #expect(records.filter { $0.decision == "allow" && $0.method == "POST" }.allSatisfy { $0.bytesIn == 100 && $0.status == 200 })
        let verification = try AuditVerifier.verify(directory: stack.connectorConfig.audit.directory)
        #expect(verification.ok, "\(String(describing: verification.problem))")
        try await listener.close()
        await stack.stop()
    }
}

extension PrivacyEnforcementTests {
    /// A sample of the truth table through the real path (relayctl, relay, tunnel, connector):
    /// mode x session role x method x path, each cell's status and refusal code asserted.
    @Test func aSampleOfTheTruthTableEndToEnd() async throws {
        let stack = try await Self.start()
        var cells = 0
        for mode in [PrivacyMode.all, .readOnly] {
            _ = stack.privacy.apply(mode: ModeChange(mode: mode, by: "test"), actor: "test")
            for role in [AccessRole.viewer, .admin] {
                let client = try SessionClient(target: try stack.sessionTarget(role: role), group: TestStack.group, logger: TestStack.quietLogger)
                try await client.connect()
                let listener = try await LocalListener.startConduit(host: "127.0.0.1", port: 0, session: client, group: TestStack.group)
                for method in [HTTPMethod.GET, .POST] {
                    for path in ["/api/status", "/secrets/x"] {
                        cells += 1
                        let before = stack.component.counters.requests
                        let response = try await TestHTTPConnection.request(
                            port: listener.localAddress!.port!, method, path, body: method == .POST ? [1] : nil)
                        let effective = mode == .readOnly ? AccessRole.viewer : role
                        let expected: String? =
                            effective == .viewer && method == .POST ? "role_forbids_method" : path.hasPrefix("/secrets") ? "denied_path" : nil
                        let cell = "\(mode) \(role) \(method) \(path)"
                        #expect(response.headers.first(name: WireHeader.error) == expected, "\(cell)")
                        #expect(stack.component.counters.requests == before + (expected == nil ? 1 : 0), "\(cell)")
                        if expected == nil {
                            #expect(response.status == .ok, "\(cell)")
                        } else {
                            #expect(response.status == .forbidden, "\(cell)")
                        }
                    }
                }
                try await listener.close()
            }
        }
        #expect(cells == 16)
        await stack.stop()
    }
}

/// Sends bytes as they are and returns the first line of the answer (bounded: `seconds`, then
/// the connection is closed).
enum RawHTTP {
    static func firstLine(port: Int, _ text: String, seconds: Int = 5) async throws -> String {
        let collected = NIOLockedValueBox("")
        let channel = try await ClientBootstrap(group: TestStack.group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(RawCollector(collected)) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        try await channel.writeAndFlush(ByteBuffer(string: text))
        try await TestWait.poll(seconds: seconds) { collected.withLockedValue { $0.contains("\r\n") } }
        try? await channel.close()
        return collected.withLockedValue { $0 }.components(separatedBy: "\r\n").first ?? ""
    }

    private final class RawCollector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let box: NIOLockedValueBox<String>
        init(_ box: NIOLockedValueBox<String>) { self.box = box }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = self.unwrapInboundIn(data)
            self.box.withLockedValue { $0 += String(buffer: buffer) }
        }
    }
}
