import Foundation
import PrivacyPolicy
import RelayModel
import Testing

/// A websocket arrives as an extended CONNECT (`:protocol websocket`, passed on as
/// `x-relay-connect-protocol`): decided like any request, with a rule of its own for viewers.
@Suite struct WebSocketPolicyTests {
    static let now = Date(timeIntervalSince1970: 1_800_000_000)

    static func rules(_ mode: PrivacyMode = .all, viewerPaths: [String] = [], caseInsensitive: Bool = true) -> PrivacyRules {
        PrivacyRules(
            mode: mode,
            components: [
                ComponentRules(
                    name: "ui", authority: "127.0.0.1:8080", caseInsensitivePaths: caseInsensitive, deniedPathPrefixes: ["/ws/admin"],
                    viewerWebSocketPaths: viewerPaths)
            ])
    }

    func decide(
        role: AccessRole = .admin, method: String = "CONNECT", protocol name: String? = "websocket", target: String = "/ws/live",
        rules: PrivacyRules = Self.rules()
    ) -> Result<StreamPermit, StreamDenial> {
        var headers: [StreamFacts.Header] = [
            .init("x-relay-component", "ui"), .init("x-relay-expert", "alice"), .init("x-relay-session", "s1"),
            .init("x-relay-role", role.rawValue), .init("x-relay-access-request", "7"),
            .init("x-relay-access-expires", String(Int64(Self.now.timeIntervalSince1970) + 60)), .init("sec-websocket-version", "13"),
        ]
        if let name { headers.append(.init("x-relay-connect-protocol", name)) }
        return StreamPolicy.decide(StreamFacts(method: method, target: target, headers: headers), rules: rules, approvals: [:], now: Self.now)
    }

    func code(_ result: Result<StreamPermit, StreamDenial>) -> String {
        switch result {
        case .success(let permit): permit.webSocket ? "websocket" : "allow"
        case .failure(let denial): denial.code
        }
    }

    @Test func usersAndAdminsOpenWebSocketsWhichReachTheComponentAsAnUpgradeGET() throws {
        for role in [AccessRole.user, .admin] {
            let permit = try self.decide(role: role).get()
            #expect(permit.webSocket && permit.method == "GET" && permit.target.forwarded == "/ws/live")
            #expect(!permit.headers.contains { $0.name.hasPrefix("x-relay-") }, "the marker never reaches the component")
            #expect(permit.headers.contains { $0.name == "sec-websocket-version" })
        }
    }

    @Test func aPlainConnectAndOtherProtocolsAreStillRefused() {
        #expect(self.code(self.decide(protocol: nil)) == "method_not_allowed")
        #expect(self.code(self.decide(protocol: "connect-udp")) == "unsupported_protocol")
        // The marker on another method changes nothing: that request is decided as itself.
        #expect(self.code(self.decide(method: "GET")) == "allow")
        #expect(self.code(self.decide(method: "TRACE")) == "method_not_allowed")
    }

    @Test func viewersGetWebSocketsOnlyUnderTheListedPaths() {
        #expect(self.code(self.decide(role: .viewer)) == "role_forbids_websocket", "none are listed by default")
        let listed = Self.rules(viewerPaths: ["/ws/live"])
        #expect(self.code(self.decide(role: .viewer, rules: listed)) == "websocket")
        #expect(self.code(self.decide(role: .viewer, target: "/ws/live/cpu?x=1", rules: listed)) == "websocket")
        #expect(self.code(self.decide(role: .viewer, target: "/WS/LIVE", rules: listed)) == "websocket", "paths compared as the component reads them")
        #expect(self.code(self.decide(role: .viewer, target: "/WS/LIVE", rules: Self.rules(viewerPaths: ["/ws/live"], caseInsensitive: false))) == "role_forbids_websocket")
        #expect(self.code(self.decide(role: .viewer, target: "/ws/echo", rules: listed)) == "role_forbids_websocket")
        // An allowance covers whole path segments, unlike a denied prefix.
        #expect(self.code(self.decide(role: .viewer, target: "/ws/live-shell", rules: listed)) == "role_forbids_websocket")
        #expect(self.code(self.decide(role: .viewer, target: "/ws/liveadmin", rules: listed)) == "role_forbids_websocket")
        // An allowance holds only if every reading of the path is under it: here a Java server's
        // reading (`;x` cut) is, the path as decoded is not.
        let folder = Self.rules(viewerPaths: ["/ws/live/"])
        #expect(self.code(self.decide(role: .viewer, target: "/ws/live/cpu", rules: folder)) == "websocket")
        #expect(self.code(self.decide(role: .viewer, target: "/ws/live;x/", rules: folder)) == "role_forbids_websocket")
        #expect(self.code(self.decide(role: .admin, target: "/ws/echo", rules: listed)) == "websocket", "the list limits viewers only")
    }

    @Test func readOnlyLowersEverySessionToTheViewerRule() {
        #expect(self.code(self.decide(role: .admin, rules: Self.rules(.readOnly))) == "role_forbids_websocket")
        let denial = self.decide(role: .admin, rules: Self.rules(.readOnly))
        if case .failure(let refusal) = denial { #expect(refusal.reason.hasPrefix("the customer's privacy mode readOnly")) }
        #expect(self.code(self.decide(role: .admin, rules: Self.rules(.readOnly, viewerPaths: ["/ws/"]))) == "websocket")
    }

    @Test func deniedPathsAndTheKillSwitchApplyAsToAnyRequest() {
        #expect(self.code(self.decide(target: "/ws/admin/shell")) == "denied_path")
        #expect(self.code(self.decide(rules: Self.rules(.disabled))) == "remote_access_disabled")
    }
}
