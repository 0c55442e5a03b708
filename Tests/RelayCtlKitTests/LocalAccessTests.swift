import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
@testable import RelayCtlKit
import Testing
import TunnelCore

/// Who gets through the engineer's local port, and to which component (`LocalAccess`, pure).
struct LocalAccessTests {
    static let port = 8000

    static func head(_ uri: String = "/", host: String = "ui.demo.localhost:8000", method: HTTPMethod = .GET, _ headers: [(String, String)] = []) -> HTTPRequestHead {
        HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: HTTPHeaders([("host", host)] + headers))
    }

    /// Signs in with a fresh link and returns the cookie the browser would send back.
    static func signIn(_ access: LocalAccess, _ component: String = "ui") throws -> String {
        let link = access.signInLink(for: component, port: Self.port)
        let prefix = "http://\(access.hostName(of: component)):\(Self.port)"
        guard case .signIn(_, let setCookie?) = access.decide(Self.head(String(link.dropFirst(prefix.count)), host: "\(access.hostName(of: component)):\(Self.port)"), port: Self.port)
        else { throw TestFailure("the link did not sign in") }
        return String(setCookie.split(separator: ";")[0])
    }

    struct TestFailure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    @Test func eachComponentHasItsOwnHostNameAndTheLoopbackNameServesASingleOne() throws {
        let script = [("x-relayctl-token", "t")]
        let access = try LocalAccess(cluster: "Demo_1", components: ["ui", "api.v2"], scriptToken: "t")
        #expect(access.url(of: "ui", port: 8000) == "http://ui.demo-1.localhost:8000/")
        #expect(access.url(of: "api.v2", port: 8000) == "http://api-v2.demo-1.localhost:8000/")
        for (host, component) in [("ui.demo-1.localhost:8000", "ui"), ("API-V2.Demo-1.localhost:8000", "api.v2"), ("api.v2", "api.v2")] {
            guard case .forward(let name, let head) = access.decide(Self.head(host: host, script), port: 8000) else {
                Issue.record("\(host) was not carried")
                continue
            }
            #expect(name == component && head.headers["host"] == [component], "the connector sees the component's name")
        }
        // Several components: the plain loopback address says which names to use.
        guard case .refuse(let refusal) = access.decide(Self.head(host: "127.0.0.1:8000", script), port: 8000) else {
            Issue.record("127.0.0.1 picked one of several components")
            return
        }
        #expect(refusal.code == "choose_component" && refusal.message.contains("http://api-v2.demo-1.localhost:8000/"))
        let single = try LocalAccess(cluster: "demo", components: ["ui"], scriptToken: "t")
        for host in ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "ui.demo.localhost:8000", "localhost", "ui"] {
            guard case .forward("ui", _) = single.decide(Self.head(host: host, script), port: 8000) else {
                Issue.record("\(host) did not reach the single component")
                continue
            }
        }
        // Any other name (a DNS-rebinding page's, another port's) is not carried.
        for host in ["evil.example:8000", "ui.demo.localhost:8001", "127.0.0.1:8001", "api.demo.localhost:8000", "evil.example"] {
            guard case .refuse(let refusal) = single.decide(Self.head(host: host, script), port: 8000) else {
                Issue.record("\(host) was carried")
                continue
            }
            #expect(refusal.status == .misdirectedRequest, "\(host)")
        }
        // In-process, as a plain conduit, a foreign Host goes on unchanged for the connector to judge.
        let conduit = try LocalAccess(cluster: "demo", components: ["ui"], checks: .conduit)
        guard case .forward("ui", let head) = conduit.decide(Self.head(host: "127.1"), port: 8000) else {
            Issue.record("the conduit refused a foreign Host itself")
            return
        }
        #expect(head.headers["host"] == ["127.1"])
        #expect(throws: LocalAccessError.self) { try LocalAccess(cluster: "demo", components: ["a.b", "a_b"]) }
    }

    @Test func aBrowserSignsInOnceWithTheLinkThenItsCookieCarriesItAndTheComponentNeverSeesIt() throws {
        let access = try LocalAccess(cluster: "demo", components: ["ui", "api"])
        // Without signing in: 401, saying how to get in.
        guard case .refuse(let refusal) = access.decide(Self.head(), port: Self.port) else {
            Issue.record("an unsigned request was carried")
            return
        }
        #expect(refusal.status == .unauthorized && refusal.message.contains("open the link relayctl printed"))

        let link = access.signInLink(for: "ui", port: Self.port)
        #expect(link.hasPrefix("http://ui.demo.localhost:8000/?relayctl-token="))
        let uri = "/" + link.split(separator: "/", maxSplits: 3)[2] + "&x=1"
        guard case .signIn(let location, let setCookie?) = access.decide(Self.head(uri), port: Self.port) else {
            Issue.record("the link did not sign in")
            return
        }
        #expect(location == "/?x=1", "the token leaves the address bar; the rest of the query stays")
        #expect(setCookie.hasPrefix("relayctl-8000=") && setCookie.contains("HttpOnly") && setCookie.contains("SameSite=Strict"))
        #expect(!setCookie.contains("Domain"), "a host-only cookie: the api host does not get it")
        // The link works once.
        guard case .refuse(let used) = access.decide(Self.head(uri), port: Self.port) else {
            Issue.record("a used link signed in again")
            return
        }
        #expect(used.code == "sign_in_link_used")
        // A link for ui does not sign in api.
        let uiLink = access.signInLink(for: "ui", port: Self.port)
        let onApi = Self.head("/" + uiLink.split(separator: "/", maxSplits: 3)[2], host: "api.demo.localhost:8000")
        guard case .refuse = access.decide(onApi, port: Self.port) else {
            Issue.record("ui's link signed in the api host")
            return
        }

        let cookie = String(setCookie.split(separator: ";")[0])
        guard case .forward("ui", let carried) = access.decide(Self.head("/", [("cookie", "theme=dark; \(cookie); lang=en")]), port: Self.port) else {
            Issue.record("the signed-in browser was refused")
            return
        }
        #expect(carried.headers["cookie"] == ["theme=dark; lang=en"], "the component's own cookies pass, relayctl's does not")
        let wrong = Self.head("/", [("cookie", "relayctl-8000=\(String(repeating: "0", count: 64))")])
        guard case .refuse = access.decide(wrong, port: Self.port) else {
            Issue.record("a forged cookie was carried")
            return
        }
        // Another session's cookie (another port) does not count here.
        guard case .refuse = access.decide(Self.head("/", [("cookie", cookie.replacingOccurrences(of: "8000", with: "8001"))]), port: Self.port) else {
            Issue.record("a cookie named for another port was carried")
            return
        }
    }

    @Test func aScriptUsesTheTokenHeaderWhichNeverReachesTheComponent() throws {
        let access = try LocalAccess(cluster: "demo", components: ["ui"], scriptToken: "s3cret-token")
        guard case .forward(_, let carried) = access.decide(Self.head("/", host: "127.0.0.1:8000", [("x-relayctl-token", "s3cret-token")]), port: Self.port) else {
            Issue.record("the script's token was refused")
            return
        }
        #expect(carried.headers[LocalAccess.tokenHeader].isEmpty)
        guard case .refuse(let refusal) = access.decide(Self.head("/", host: "127.0.0.1:8000", [("x-relayctl-token", "s3cret-tokem")]), port: Self.port) else {
            Issue.record("a wrong token was carried")
            return
        }
        #expect(refusal.message.contains("--local-token-file"))
        let noScripts = try LocalAccess(cluster: "demo", components: ["ui"])
        guard case .refuse = noScripts.decide(Self.head("/", [("x-relayctl-token", "")]), port: Self.port) else {
            Issue.record("an empty token was carried where no script token exists")
            return
        }
    }

    @Test func anotherPageIsRefusedEvenWithTheCookieAnotherComponentsIncluded() throws {
        let access = try LocalAccess(cluster: "demo", components: ["ui", "api"])
        let cookie = try Self.signIn(access)
        let refused: [[(String, String)]] = [
            [("origin", "https://evil.example")],
            [("origin", "http://localhost:3000"), ("sec-fetch-site", "same-site")],
            [("sec-fetch-site", "cross-site")],
            [("sec-fetch-site", "same-site")],  // another port of localhost, or another component (an image, a link)
            [("origin", "http://api.demo.localhost:8000"), ("sec-fetch-site", "same-site")],  // the api component's page
            [("origin", "http://127.0.0.1:8000")],  // another name of the same port is another origin
            [("origin", "null")],
        ]
        for headers in refused {
            guard case .refuse(let refusal) = access.decide(Self.head("/", method: .POST, [("cookie", cookie)] + headers), port: Self.port) else {
                Issue.record("\(headers) was carried")
                continue
            }
            #expect(refusal.status == .forbidden && refusal.code == "cross_site_request", "\(headers)")
        }
        let allowed: [[(String, String)]] = [
            [("origin", "http://ui.demo.localhost:8000"), ("sec-fetch-site", "same-origin")],  // its own page
            [("origin", "HTTP://UI.demo.localhost:8000")],
            [("sec-fetch-site", "none")],  // typed into the address bar
            [],  // curl
        ]
        for headers in allowed {
            guard case .forward = access.decide(Self.head("/", method: .POST, [("cookie", cookie)] + headers), port: Self.port) else {
                Issue.record("\(headers) was refused")
                continue
            }
        }
    }

    @Test func eachComponentsCookieOpensOnlyItsOwnHostAndEachSecretOnlyItsOwnForm() throws {
        let access = try LocalAccess(cluster: "demo", components: ["ui", "api"], scriptToken: "script-token")
        let uiCookie = try Self.signIn(access, "ui")
        guard case .refuse = access.decide(Self.head("/", host: "api.demo.localhost:8000", [("cookie", uiCookie)]), port: Self.port) else {
            Issue.record("ui's cookie opened the api host")
            return
        }
        let uiSecret = String(uiCookie.split(separator: "=")[1])
        guard case .refuse = access.decide(Self.head("/", [("x-relayctl-token", uiSecret)]), port: Self.port) else {
            Issue.record("the cookie's value worked as the script token")
            return
        }
        guard case .refuse = access.decide(Self.head("/", [("cookie", "relayctl-8000=script-token")]), port: Self.port) else {
            Issue.record("the script token worked as a cookie")
            return
        }
        #expect(throws: LocalAccessError.self) { try LocalAccess(cluster: "demo", components: ["ui"], scriptToken: "") }
    }

    @Test func cookieHeadersAreReadAndRewrittenWithoutTouchingTheComponentsOwnValues() throws {
        let access = try LocalAccess(cluster: "demo", components: ["ui"])
        let cookie = try Self.signIn(access)
        // Two Cookie headers (as some clients send), a value with a comma and an equals sign.
        let head = Self.head("/", [("cookie", "prefs=a,b=c; theme=dark"), ("Cookie", "\(cookie); lang=en")])
        guard case .forward(_, let carried) = access.decide(head, port: Self.port) else {
            Issue.record("a browser sending two Cookie headers was refused")
            return
        }
        #expect(carried.headers["cookie"] == ["prefs=a,b=c; theme=dark; lang=en"])
    }

    @Test func aLinkExpiresIsReplacedByTheNextAndOpenedTwiceJustRedirects() throws {
        let now = NIOLockedValueBox(NIODeadline.uptimeNanoseconds(1_000_000_000))
        let access = try LocalAccess(cluster: "demo", components: ["ui"], linkLifetime: .minutes(15), now: { now.withLockedValue { $0 } })
        func uri(_ link: String) -> String { "/" + link.split(separator: "/", maxSplits: 3)[2] }
        let first = access.signInLink(for: "ui", port: Self.port)
        let second = access.signInLink(for: "ui", port: Self.port)
        guard case .refuse = access.decide(Self.head(uri(first)), port: Self.port) else {
            Issue.record("a link replaced by a newer one still worked")
            return
        }
        now.withLockedValue { $0 = $0 + .minutes(15) }
        guard case .refuse(let expired) = access.decide(Self.head(uri(second)), port: Self.port) else {
            Issue.record("an expired link still worked")
            return
        }
        #expect(expired.code == "sign_in_link_used" && expired.message.contains("expired"))
        let third = access.signInLink(for: "ui", port: Self.port)
        guard case .signIn(_, let setCookie?) = access.decide(Self.head(uri(third)), port: Self.port) else {
            Issue.record("a fresh link did not sign in")
            return
        }
        // The same link again, from the browser that has the cookie (a reload): just the clean address.
        let cookie = String(setCookie.split(separator: ";")[0])
        guard case .signIn(let location, nil) = access.decide(Self.head(uri(third), [("cookie", cookie)]), port: Self.port) else {
            Issue.record("a signed-in browser reopening its link was refused")
            return
        }
        #expect(location == "/")
        // A path that would send the browser to another host stays on this one.
        let fourth = access.signInLink(for: "ui", port: Self.port)
        let token = fourth.split(separator: "=").last!
        guard case .signIn(let elsewhere, _) = access.decide(Self.head("//evil.example/?relayctl-token=\(token)"), port: Self.port) else {
            Issue.record("the link did not sign in")
            return
        }
        #expect(elsewhere == "/evil.example/")
    }

    @Test func refusalsNameTheComponentsOnlyToASignedInCaller() throws {
        let access = try LocalAccess(cluster: "secret-cluster", components: ["ui", "api"], scriptToken: "t")
        for headers in [[], [("cookie", "relayctl-8000=nothing")]] as [[(String, String)]] {
            for host in ["evil.example:8000", "127.0.0.1:8000"] {
                guard case .refuse(let refusal) = access.decide(Self.head("/", host: host, headers), port: Self.port) else {
                    Issue.record("\(host) was carried")
                    continue
                }
                #expect(!refusal.message.contains("secret-cluster"), "a DNS-rebinding page could read: \(refusal.message)")
            }
        }
        guard case .refuse(let named) = access.decide(Self.head("/", host: "127.0.0.1:8000", [("x-relayctl-token", "t")]), port: Self.port) else {
            Issue.record("127.0.0.1 picked one of several components")
            return
        }
        #expect(named.message.contains("http://ui.secret-cluster.localhost:8000/"))
    }
}
