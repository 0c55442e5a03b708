import CustomerAudit
import DemoComponentKit
import Foundation
import NIOPosix
import NIOHTTP1
import Relay
import RelayAPI
import RelayCtlKit
import RelayModel
import TestSupport
import Testing
import TunnelCore

/// The engineer's local port as relayctl opens it: each component on its own host name, a browser
/// signed in by a one-time link, a script by a token file, other sites' pages refused.
@Suite(.serialized) struct LocalPortTests {
    static let relayctl = TestProcess.binary("relayctl")

    /// `relayctl session open` left running, with the links and port it printed.
    struct OpenedSession {
        let process: RunningProcess
        /// Component name -> the sign-in link printed for it.
        let links: [String: String]
        let port: Int

        static func start(_ stack: TestStack, _ arguments: [String]) async throws -> OpenedSession {
            let process = try RunningProcess(Self.relayctlPath, ["session", "open", "--cluster", "demo"] + arguments, environment: SessionEndPushTests.relayctlEnvironment(stack))
            try await stack.waitUntil("relayctl's links") { process.stdout.contains("press Enter here for new links") || !process.isRunning }
            var links: [String: String] = [:]
            for line in process.stdout.split(separator: "\n") where line.hasSuffix(" in your browser") {
                let parts = line.split(separator: " ")
                links[String(parts[0].dropLast())] = String(parts[2])
            }
            let port = links.values.first.flatMap { URLComponents(string: $0)?.port } ?? 0
            return OpenedSession(process: process, links: links, port: port)
        }

        static var relayctlPath: String { LocalPortTests.relayctl }

        /// The path and query of a link, and its host with the port, as a browser would send them.
        func request(_ link: String) -> (host: String, uri: String) {
            let url = URLComponents(string: link)!
            return ("\(url.host!):\(url.port!)", url.percentEncodedPath + (url.percentEncodedQuery.map { "?\($0)" } ?? ""))
        }

        /// Follows the component's link as a browser does; returns the cookie it was given.
        func signIn(_ component: String) async throws -> String {
            let (host, uri) = self.request(try #require(self.links[component]))
            let answer = try await TestHTTPConnection.request(port: self.port, .GET, uri, headers: [("host", host), ("sec-fetch-site", "none")])
            #expect(answer.status == .seeOther && answer.headers.first(name: "location") == "/")
            let cookie = try #require(answer.headers.first(name: "set-cookie"))
            #expect(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "\(cookie)")
            return String(cookie.split(separator: ";")[0])
        }
    }

    @Test func eachComponentIsOnItsOwnHostNameAndABrowserSignsInToEachOnce() async throws {
        let api = try await DemoComponent.start(name: "api", group: TestStack.group)
        let stack = try await TestStack.start(extraComponents: ["api": api.url])
        try await stack.waitUntil("both components reported") {
            let detail: ClusterDetail = try await stack.api().get("\(APIPath.clusters)/demo")
            return detail.components == ["api", "ui"]
        }
        // No --component: every component the cluster offers.
        let session = try await OpenedSession.start(stack, [])
        defer { session.process.terminate() }
        #expect(session.process.stdout.contains("session open: cluster demo, components api, ui, role admin"), "\(session.process.stdout)")
        #expect(session.links.keys.sorted() == ["api", "ui"])
        #expect(session.links["ui"]?.hasPrefix("http://ui.demo.localhost:\(session.port)/?relayctl-token=") == true, "\(session.links)")
        try await stack.waitUntil("one relay session per component") { Set(stack.relay.sessions.all.map(\.record.component)) == ["api", "ui"] }

        let uiHost = "ui.demo.localhost:\(session.port)"
        // Not signed in: 401 saying how to get in; nothing reaches the component.
        let before = try await TestHTTPConnection.request(port: session.port, .GET, "/", headers: [("host", uiHost)])
        #expect(before.status == .unauthorized && before.text.contains("open the link relayctl printed"), "\(before.text)")
        let uiCookie = try await session.signIn("ui")
        let page = try await TestHTTPConnection.request(port: session.port, .GET, "/", headers: [("host", uiHost), ("cookie", uiCookie)])
        #expect(page.status == .ok && page.text.contains("Cluster component \"ui\""))
        // The link was used: it signs nobody else in.
        let (host, uri) = session.request(session.links["ui"]!)
        let again = try await TestHTTPConnection.request(port: session.port, .GET, uri, headers: [("host", host)])
        #expect(again.status == .unauthorized && again.headers.first(name: WireHeader.error) == "sign_in_link_used")

        // The api host is another site for the browser: its own link, its own cookie.
        let apiHost = "api.demo.localhost:\(session.port)"
        let apiCookie = try await session.signIn("api")
        let status = try await TestHTTPConnection.request(port: session.port, .GET, "/api/status", headers: [("host", apiHost), ("cookie", apiCookie)])
        #expect(status.status == .ok && status.text.contains("\"component\":\"api\""), "\(status.text)")
        // The ui component's page may not drive the api component (same site for the browser,
        // which would attach api's cookie to a form or an image of ui's page).
        let fromUI = try await TestHTTPConnection.request(
            port: session.port, .POST, "/upload", headers: [("host", apiHost), ("cookie", apiCookie), ("origin", "http://\(uiHost)"), ("sec-fetch-site", "same-site")],
            body: [1])
        #expect(fromUI.status == .forbidden && fromUI.headers.first(name: WireHeader.error) == "cross_site_request")
        // And ui's cookie does not open the api host.
        let uiCookieOnAPI = try await TestHTTPConnection.request(port: session.port, .GET, "/api/status", headers: [("host", apiHost), ("cookie", uiCookie)])
        #expect(uiCookieOnAPI.status == .unauthorized)
        // What the component sees: the browser's other cookies, not relayctl's.
        let seen = try await TestHTTPConnection.request(
            port: session.port, .GET, "/headers", headers: [("host", apiHost), ("cookie", "theme=dark; \(apiCookie)")])
        #expect(seen.status == .ok && seen.text.contains("\"cookie\":\"theme=dark\""), "\(seen.text)")
        #expect(!seen.text.contains(String(apiCookie.split(separator: "=")[1])))

        // Several components: the plain address names them instead of picking one.
        let plain = try await TestHTTPConnection.request(port: session.port, .GET, "/", headers: [("host", "127.0.0.1:\(session.port)"), ("cookie", uiCookie)])
        #expect(plain.status == .notFound && plain.text.contains("each on its own host name"), "\(plain.text)")
        // A name that is not ours (a DNS-rebinding page's) reaches nothing.
        let rebound = try await TestHTTPConnection.request(port: session.port, .GET, "/", headers: [("host", "evil.example:\(session.port)"), ("cookie", uiCookie)])
        #expect(rebound.status == .misdirectedRequest)

        // Another site's page, even with the browser's cookie attached.
        for headers in [[("origin", "https://evil.example")], [("sec-fetch-site", "cross-site")]] {
            let posted = try await TestHTTPConnection.request(
                port: session.port, .POST, "/upload", headers: [("host", uiHost), ("cookie", uiCookie)] + headers, body: [1, 2, 3])
            #expect(posted.status == .forbidden && posted.headers.first(name: WireHeader.error) == "cross_site_request", "\(headers)")
        }
        // The connector audited what passed, per component, and nothing of what relayctl refused.
        let entries = try AuditVerifier.tail(directory: stack.connectorConfig.audit.directory, count: 500)
        let requests = entries.filter { $0.event == "request" }
        #expect(requests.contains { $0.component == "api" && $0.path == "/api/status" })
        #expect(!requests.contains { $0.path == "/upload" })
        session.process.terminate()
        #expect(await session.process.exitStatus() == 0)
        await stack.stop()
        try? await api.close()
    }

    /// An operator's kill of one component's session leaves the others (relayctl says which
    /// ended); relayctl exits 8 once the last one is ended.
    @Test func endingOneComponentsSessionLeavesTheOthersAndTheLastEndsRelayctl() async throws {
        let api = try await DemoComponent.start(name: "api", group: TestStack.group)
        let stack = try await TestStack.start(extraComponents: ["api": api.url])
        let file = TestStack.temporaryDirectory("local-token") + "/token"
        let session = try await OpenedSession.start(stack, ["--component", "ui", "--component", "api", "--local-token-file", file])
        defer { session.process.terminate() }
        try await stack.waitUntil("one relay session per component") { stack.relay.sessions.all.count == 2 }
        let token = try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        func kill(_ component: String) async throws {
            let id = try #require(stack.relay.sessions.all.first { $0.record.component == component }?.record.id)
            let _: SessionRecord = try await stack.api().post("\(APIPath.sessions)/\(id)/kill", [String: String]())
        }
        try await kill("api")
        try await stack.waitUntil("relayctl to say so") { session.process.stderr.contains("ended the session of component api") }
        #expect(session.process.stderr.contains("session killed by ops:root") && session.process.isRunning, "\(session.process.stderr)")
        let ui = try await TestHTTPConnection.request(
            port: session.port, .GET, "/api/status", headers: [("host", "ui.demo.localhost:\(session.port)"), ("x-relayctl-token", token)])
        #expect(ui.status == .ok, "the ui component goes on")
        let ended = try await TestHTTPConnection.request(
            port: session.port, .GET, "/api/status", headers: [("host", "api.demo.localhost:\(session.port)"), ("x-relayctl-token", token)])
        #expect(ended.status == .forbidden && ended.headers.first(name: WireHeader.error) == "session_ended", "\(ended.text)")
        try await kill("ui")
        #expect(await session.process.exitStatus(seconds: 60) == RelayCtlExit.sessionEnded, "\(session.process.stderr)")
        await stack.stop()
        try? await api.close()
    }

    @Test func aScriptUsesTheTokenFileOnThePlainAddressAndTheFileIsGoneAfterwards() async throws {
        let stack = try await TestStack.start()
        let file = TestStack.temporaryDirectory("local-token") + "/token"
        let session = try await OpenedSession.start(stack, ["--component", "ui", "--local-token-file", file])
        defer { session.process.terminate() }
        #expect(session.process.stdout.contains("scripts: http://127.0.0.1:\(session.port)/ with header X-Relayctl-Token"), "\(session.process.stdout)")
        let mode = try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let token = try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!session.process.stdout.contains(token) && !session.process.stderr.contains(token), "the token is only in the file")
        let answer = try await TestHTTPConnection.request(port: session.port, .GET, "/headers", headers: [("host", "127.0.0.1:\(session.port)"), ("x-relayctl-token", token)])
        #expect(answer.status == .ok && !answer.text.contains(token), "the component never sees the token")
        let wrong = try await TestHTTPConnection.request(
            port: session.port, .GET, "/", headers: [("host", "127.0.0.1:\(session.port)"), ("x-relayctl-token", String(token.reversed()))])
        #expect(wrong.status == .unauthorized && wrong.text.contains("--local-token-file"))
        // The port is held on ::1 too (browsers resolve *.localhost to either): nobody else can take it there.
        if let probe = try? await ServerBootstrap(group: TestStack.group).bind(host: "::1", port: 0).get() {
            try await probe.close()
            let v6 = try await TestHTTPConnection.connect(host: "::1", port: session.port)
            let answer = try await v6.request(.GET, "/api/status", headers: [("host", "ui.demo.localhost:\(session.port)"), ("x-relayctl-token", token)])
            #expect(answer.status == .ok)
            await v6.close()
        }
        // A second session may not take over (then remove) the first one's token file.
        let (second, _, secondError) = try await TestProcess.run(
            Self.relayctl, ["session", "open", "--cluster", "demo", "--component", "ui", "--local-token-file", file],
            environment: SessionEndPushTests.relayctlEnvironment(stack))
        #expect(second == RelayCtlExit.conflict && secondError.contains("exists"), "\(secondError)")
        #expect(try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) == token)
        session.process.terminate()
        #expect(await session.process.exitStatus() == 0)
        #expect(!FileManager.default.fileExists(atPath: file), "removed at the end")
        await stack.stop()
    }
}
