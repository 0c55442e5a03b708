import Foundation
import PrivacyPolicy
import RelayModel
import Testing

/// Every cell of mode x role x component x method x path x customer approval x relay expiry,
/// decided by `StreamPolicy` and compared with the rules of issue 4 written out again here.
@Suite struct StreamPolicyTruthTableTests {
    static let now = Date(timeIntervalSince1970: 1_800_000_000)

    static let rules = { (mode: PrivacyMode) in
        PrivacyRules(
            mode: mode,
            components: [
                ComponentRules(name: "ui", authority: "127.0.0.1:8080", caseInsensitivePaths: false),
                ComponentRules(name: "api", authority: "127.0.0.1:9000", caseInsensitivePaths: true, deniedPathPrefixes: ["/admin/keys/"]),
            ],
            deniedPathPrefixes: ["/secrets"])
    }

    enum Approval: CaseIterable { case none, approvedAdmin, approvedViewer, rejected, expired, otherExpert, revoked }

    /// path -> (what is forwarded, components where it is denied); forwarded nil and denied nowhere:
    /// refused as a bad target everywhere.
    static let paths: [(target: String, forwarded: String?, deniedOn: Set<String>)] = [
        ("/", "/", []),
        ("/dashboard?tab=1", "/dashboard?tab=1", []),
        ("/secrets/db-password", nil, ["ui", "api"]),
        ("/Secrets/db-password", "/Secrets/db-password", ["api"]),  // case matters on ui only
        ("/public/%2e%2e/secrets", nil, ["ui", "api"]),
        ("//secrets", nil, ["ui", "api"]),
        ("/admin/keys", "/admin/keys", ["api"]),
        ("/ADMIN/KEYS/1", "/ADMIN/KEYS/1", ["api"]),
        ("/..%2fsecrets", nil, []),  // encoded slash: refused as a target everywhere
        ("/secrets;jsessionid=1/x", nil, ["ui", "api"]),
        // How Tomcat, Jetty and Spring read paths: ";params" cut from each segment, then dot segments.
        ("/x/..;/secrets/key", nil, []),
        ("/x/%2e%2e;/secrets", nil, []),
        ("/x/%2E%2E%3Bjsessionid/secrets", nil, []),
        ("/;x/secrets", nil, []),
        ("/.;/secrets", nil, []),
        ("/x;a=1/y;b=2", "/x;a=1/y;b=2", []),
        ("/SECRETS/db", "/SECRETS/db", ["api"]),
        ("/Admin;v=1/Keys/", "/Admin;v=1/Keys/", ["api"]),
    ]
    static let methods = ["GET", "HEAD", "POST", "DELETE", "CONNECT", "TRACE", "get", "Post"]

    func facts(component: String, role: AccessRole, method: String, target: String, expiresIn: TimeInterval) -> StreamFacts {
        StreamFacts(
            method: method, target: target,
            headers: [
                .init("x-relay-component", component), .init("x-relay-expert", "alice"), .init("x-relay-session", "s1"),
                .init("x-relay-role", role.rawValue), .init("x-relay-access-request", "7"),
                .init("x-relay-access-expires", String(Int64(Self.now.timeIntervalSince1970 + expiresIn))),
                .init("x-relay-request-id", "r1"),
            ])
    }

    func approvals(_ approval: Approval) -> [Int64: CustomerApproval] {
        let make = { (verdict: CustomerApproval.Verdict, role: AccessRole, expert: String, expires: TimeInterval) -> [Int64: CustomerApproval] in
            [Int64(7): CustomerApproval(
                requestID: 7, verdict: verdict, expert: expert, role: role, reason: "r", by: "carol",
                decidedAt: Self.now.addingTimeInterval(-60), expiresAt: Self.now.addingTimeInterval(expires))]
        }
        switch approval {
        case .none: return [:]
        case .approvedAdmin: return make(.approved, .admin, "alice", 600)
        case .approvedViewer: return make(.approved, .viewer, "alice", 600)
        case .rejected: return make(.rejected, .admin, "alice", 600)
        case .expired: return make(.approved, .admin, "alice", -1)
        case .otherExpert: return make(.approved, .admin, "mallory", 600)
        case .revoked: return make(.revoked, .admin, "alice", 600)
        }
    }

    /// The rules, restated: returns the refusal code, or "allow" with the effective role.
    func expected(
        mode: PrivacyMode, role: AccessRole, component: String, method: String, path: (target: String, forwarded: String?, deniedOn: Set<String>),
        approval: Approval, relayExpired: Bool
    ) -> (code: String, role: AccessRole?) {
        if mode == .disabled { return ("remote_access_disabled", nil) }
        if component != "ui" && component != "api" { return ("unknown_component", nil) }
        if relayExpired { return ("access_expired", nil) }
        if approval == .revoked { return ("revoked_by_customer", nil) }
        var effective = role
        if mode == .readOnly { effective = .viewer }
        if mode == .approvedOnly {
            switch approval {
            case .none, .otherExpert: return ("not_approved", nil)
            case .revoked: return ("revoked_by_customer", nil)
            case .rejected: return ("rejected_by_customer", nil)
            case .expired: return ("approval_expired", nil)
            case .approvedViewer: effective = .viewer
            case .approvedAdmin: break
            }
        }
        if method != method.uppercased() { return ("bad_method", nil) }
        if method == "CONNECT" || method == "TRACE" { return ("method_not_allowed", nil) }
        if effective == .viewer && method != "GET" && method != "HEAD" { return ("role_forbids_method", nil) }
        if path.forwarded == nil && path.deniedOn.isEmpty { return ("bad_target", nil) }
        if path.deniedOn.contains(component) { return ("denied_path", nil) }
        return ("allow", effective)
    }

    @Test func everyCellMatchesTheRules() {
        var cells = 0
        var allowed = 0
        for mode in PrivacyMode.allCases {
            let rules = Self.rules(mode)
            for role in AccessRole.allCases {
                for component in ["ui", "api", "db"] {
                    for method in Self.methods {
                        for path in Self.paths {
                            for approval in Approval.allCases {
                                for relayExpired in [false, true] {
                                    cells += 1
                                    let facts = self.facts(
                                        component: component, role: role, method: method, target: path.target, expiresIn: relayExpired ? 0 : 600)
                                    let got = StreamPolicy.decide(facts, rules: rules, approvals: self.approvals(approval), now: Self.now)
                                    let want = self.expected(
                                        mode: mode, role: role, component: component, method: method, path: path, approval: approval,
                                        relayExpired: relayExpired)
                                    let cell = "\(mode) \(role) \(component) \(method) \(path.target) \(approval) expired=\(relayExpired)"
                                    switch got {
                                    case .success(let permit):
                                        allowed += 1
                                        #expect(want.code == "allow", "\(cell): allowed, expected \(want.code)")
                                        #expect(permit.role == want.role, "\(cell)")
                                        #expect(permit.target.forwarded == path.forwarded, "\(cell)")
                                        #expect(permit.method == method, "\(cell): the method decided is the one forwarded")
                                    case .failure(let denial):
                                        #expect(denial.code == want.code, "\(cell): \(denial)")
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        #expect(cells == 4 * 3 * 3 * 8 * 18 * 7 * 2)
        #expect(allowed > 0)
    }
}
