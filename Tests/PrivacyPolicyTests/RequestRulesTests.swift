import Foundation
import PrivacyPolicy
import RelayModel
import Testing

@Suite struct RequestTargetNormalizerTests {
    @Test(arguments: [
        ("/", "/"),
        ("/a/b/", "/a/b/"),
        ("//a///b", "/a/b"),
        ("/a/./b/../c", "/a/c"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/%2E%2e/", "/"),
        ("/%7euser/%41", "/~user/A"),
        ("/file%20name", "/file%20name"),
        ("/x%3bq", "/x%3Bq"),
        ("/a/b/..", "/a/"),
        ("/p?q=/../x&y=%2f", "/p?q=/../x&y=%2f"),
    ])
    func normalForm(input: String, expected: String) throws {
        let target = try RequestTargetNormalizer.normalize(input).get()
        #expect(target.forwarded == expected)
    }

    @Test(arguments: [
        ("http://169.254.169.254/latest", TargetRejection.absoluteForm),
        ("HTTPS://example/", .absoluteForm),
        ("*", .notOriginForm),
        ("example.com:443", .notOriginForm),
        ("/..%2fsecrets", .encodedSlash),
        ("/a%5c..%5csecrets", .encodedSlash),
        ("/a\\..\\secrets", .backslash),
        ("/%252e%252e/secrets", .encodedPercent),
        ("/a%00b", .controlCharacter),
        ("/a%zz", .badEscape),
        ("/a%2", .badEscape),
        ("/a#frag", .fragment),
        ("/x/..;/admin/keys", .dotSegmentParameter),
        ("/x/%2e%2e;/admin", .dotSegmentParameter),
        ("/x/..%3B/admin", .dotSegmentParameter),
        ("/;x/admin", .dotSegmentParameter),
        ("/.;/admin", .dotSegmentParameter),
        ("/a/;/b", .dotSegmentParameter),
        ("/a/%3B/b", .dotSegmentParameter),
        ("/a b", .invalidCharacter),
        ("/caf\u{e9}", .invalidCharacter),
    ])
    func refused(input: String, rejection: TargetRejection) {
        #expect(throws: rejection) { try RequestTargetNormalizer.normalize(input).get() }
    }

    @Test func theParameterFreePathIsWhatJavaServersRoute() throws {
        let target = try RequestTargetNormalizer.normalize("/Admin;jsessionid=1/%6Beys;v=2/").get()
        #expect(target.forwarded == "/Admin;jsessionid=1/keys;v=2/")
        #expect(target.parameterFreePath == "/Admin/keys/")
    }

    @Test func overlongTargetsAreRefused() {
        let long = "/" + String(repeating: "a", count: RequestTargetNormalizer.maximumLength)
        #expect(throws: TargetRejection.tooLong(RequestTargetNormalizer.maximumLength)) { try RequestTargetNormalizer.normalize(long).get() }
    }
}

@Suite struct StreamPolicyHeaderTests {
    static let now = Date(timeIntervalSince1970: 1_800_000_000)
    static let rules = PrivacyRules(mode: .all, components: [ComponentRules(name: "ui", authority: "127.0.0.1:8080")])

    func decide(method: String = "POST", target: String = "/x", _ extra: [StreamFacts.Header], dropping: String? = nil) -> String {
        var headers: [StreamFacts.Header] = [
            .init("x-relay-component", "ui"), .init("x-relay-expert", "alice"), .init("x-relay-session", "s1"),
            .init("x-relay-role", "admin"), .init("x-relay-access-request", "7"),
            .init("x-relay-access-expires", String(Int64(Self.now.timeIntervalSince1970) + 60)),
        ]
        headers.removeAll { $0.name == dropping }
        let result = StreamPolicy.decide(
            StreamFacts(method: method, target: target, headers: headers + extra), rules: Self.rules, approvals: [:], now: Self.now)
        switch result {
        case .success: return "allow"
        case .failure(let denial): return denial.code
        }
    }

    @Test func hostMustNameTheComponent() {
        #expect(decide([]) == "allow")
        #expect(decide([.init("Host", "ui")]) == "allow")
        #expect(decide([.init("Host", "127.0.0.1:8080")]) == "allow")
        for host in ["127.1", "[::ffff:127.0.0.1]", "0.0.0.0", "169.254.169.254", "127.0.0.1", "ui.evil", "localhost:8080"] {
            #expect(decide([.init("Host", host)]) == "bad_host", "\(host)")
        }
        #expect(decide([.init("Host", "ui"), .init("Host", "ui")]) == "bad_host")
    }

    @Test func smugglingShapesAreRefused() {
        #expect(decide([.init("Content-Length", "5")]) == "allow")
        #expect(decide([.init("Content-Length", "5"), .init("Content-Length", "5")]) == "allow")
        #expect(decide([.init("Transfer-Encoding", "chunked")]) == "allow")
        #expect(decide([.init("Content-Length", "5"), .init("Content-Length", "6")]) == "bad_framing")
        #expect(decide([.init("Content-Length", "5, 6")]) == "bad_framing")
        #expect(decide([.init("Content-Length", "-1")]) == "bad_framing")
        #expect(decide([.init("Content-Length", "5"), .init("Transfer-Encoding", "chunked")]) == "bad_framing")
        #expect(decide([.init("Transfer-Encoding", "gzip, chunked")]) == "bad_framing")
        #expect(decide([.init("Transfer-Encoding", "chunked"), .init("Transfer-Encoding", "chunked")]) == "bad_framing")
    }

    @Test func methodOverridesAreRefused() {
        #expect(decide(method: "GET", [.init("X-HTTP-Method-Override", "DELETE")]) == "method_override")
        #expect(decide(method: "POST", [.init("X-HTTP-Method", "PUT")]) == "method_override")
        #expect(decide(method: "POST", [.init("X-Method-Override", "PUT")]) == "method_override")
        #expect(decide(method: "GET", target: "/x?_method=DELETE", []) == "method_override")
        #expect(decide(method: "GET", target: "/x?a=1&X-HTTP-Method-Override=PUT", []) == "method_override")
        #expect(decide(method: "GET", target: "/x?%5Fmethod=PUT", []) == "method_override")
        #expect(decide(method: "GET", target: "/x?method=1", []) == "allow")
    }

    @Test func methodsAreUpperCaseTokens() {
        #expect(decide(method: "GET", []) == "allow")
        #expect(decide(method: "M-SEARCH", []) == "role_forbids_method", "a token, but not one the role allows")
        for method in ["get", "Get", "GE T", "", "GET\r\n", String(repeating: "A", count: 33)] {
            #expect(decide(method: method, []) == "bad_method", "\(method)")
        }
    }

    @Test func routingAndIdentityHeadersAreStrippedUnlessTheComponentPassesThem() throws {
        let identity: [StreamFacts.Header] = [
            .init("x-relay-component", "ui"), .init("x-relay-expert", "alice"), .init("x-relay-session", "s1"),
            .init("x-relay-role", "admin"), .init("x-relay-access-request", "7"),
            .init("x-relay-access-expires", String(Int64(Self.now.timeIntervalSince1970) + 60)),
        ]
        let sent: [StreamFacts.Header] = [
            .init("Accept", "*/*"), .init("X-Original-URL", "/admin/keys"), .init("X-Rewrite-URL", "/admin"),
            .init("X-Forwarded-For", "10.0.0.1"), .init("X-Forwarded-Host", "admin.internal"), .init("X-Forwarded-User", "root"),
            .init("Forwarded", "for=10.0.0.1"), .init("X-Real-IP", "10.0.0.1"), .init("X-Remote-User", "root"),
            .init("X-WEBAUTH-USER", "admin"), .init("Cookie", "a=b"),
        ]
        let facts = StreamFacts(method: "GET", target: "/", headers: identity + sent)
        let permit = try StreamPolicy.decide(facts, rules: Self.rules, approvals: [:], now: Self.now).get()
        #expect(permit.headers.map(\.name) == ["accept", "cookie"])
        #expect(permit.strippedHeaders == [
            "x-original-url", "x-rewrite-url", "x-forwarded-for", "x-forwarded-host", "x-forwarded-user", "forwarded", "x-real-ip",
            "x-remote-user", "x-webauth-user",
        ])
        // A component that relies on one of them (its own SSO header, say) lists it.
        let passing = PrivacyRules(
            mode: .all, components: [ComponentRules(name: "ui", authority: "127.0.0.1:8080", passedHeaders: ["X-WEBAUTH-USER"])])
        let passed = try StreamPolicy.decide(facts, rules: passing, approvals: [:], now: Self.now).get()
        #expect(passed.headers.map(\.name) == ["accept", "x-webauth-user", "cookie"])
    }

    @Test func everyIdentityHeaderIsRequired() {
        for name in ["x-relay-expert", "x-relay-session", "x-relay-role", "x-relay-access-request", "x-relay-access-expires"] {
            #expect(decide([], dropping: name) == "missing_identity", "\(name)")
        }
        #expect(decide([], dropping: "x-relay-component") == "unknown_component")
    }
}

@Suite struct SessionLimitTests {
    @Test func maximumLengthAndIdleTimeout() {
        let start = Date(timeIntervalSince1970: 1_800_000_000)
        let rules = PrivacyRules(mode: .all, components: [], maxSessionMilliseconds: 3_600_000, idleTimeoutMilliseconds: 300_000)
        #expect(SessionLimits.endReason(startedAt: start, lastActivity: start, rules: rules, now: start.addingTimeInterval(299)) == nil)
        #expect(
            SessionLimits.endReason(startedAt: start, lastActivity: start, rules: rules, now: start.addingTimeInterval(300))
                == "the session was idle for the customer's idle timeout (5m)")
        #expect(
            SessionLimits.endReason(
                startedAt: start, lastActivity: start.addingTimeInterval(3599), rules: rules, now: start.addingTimeInterval(3600))
                == "the session reached the customer's maximum session length (1h)")
        let unlimited = PrivacyRules(mode: .all, components: [])
        #expect(SessionLimits.endReason(startedAt: start, lastActivity: start, rules: unlimited, now: start.addingTimeInterval(1e7)) == nil)
    }

    @Test func prefixesAreNormalisedLikePaths() {
        #expect(PrivacyRules.normalizePrefix("/api//v1/./certs/") == "/api/v1/certs/")
        #expect(PrivacyRules.normalizePrefix("/api/%63erts") == "/api/certs")
        #expect(PrivacyRules.normalizePrefix("api") == nil)
        #expect(PrivacyRules.normalizePrefix("/a?b") == nil)
    }
}
