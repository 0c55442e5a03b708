import Foundation
import Relay
import RelayAPI
import RelayModel
import Testing
import TunnelCore

/// The operators' status page: ops only, signed in with a token the browser never keeps, every
/// value escaped, and what an operator looks for on it (nodes, clusters, sessions, requests).
@Suite struct StatusPageTests {
    @Test func anOperatorSignsInAndSeesClustersSessionsAndRequests() async throws {
        let stack = try await TestStack.start()
        let base = "https://127.0.0.1:\(stack.relayPort)"
        let curl = ["-s", "-i", "--max-time", "30", "--cacert", TestCerts.trusted + "/ca.pem"]
        _ = try await stack.openSession()
        // A pending request whose reason is markup: shown as text.
        let ops = try await stack.control.authenticateUser(bearer: stack.opsToken, action: "test")
        _ = try await stack.control.addCluster(CreateClusterRequest(id: "quiet", description: "no connector"), by: ops)
        _ = try await stack.control.createRequest(
            CreateAccessRequest(clusterID: "quiet", expert: "alice", reason: "<script>alert(1)</script>", role: .viewer, durationSeconds: 600), by: ops)
        try await stack.waitUntil("the session to be stored") { try await stack.control.store.sessions(live: true).count == 1 }

        let anonymous = try await runCurl(curl + ["\(base)/ops/status"])
        #expect(anonymous.hasPrefix("HTTP/1.1 303") && anonymous.contains("location: /ops/sign-in"), "\(anonymous.prefix(200))")
        let expert = try await runCurl(curl + ["--data-urlencode", "token=\(stack.expertToken)", "\(base)/ops/sign-in"])
        #expect(expert.hasPrefix("HTTP/1.1 403") && !expert.lowercased().contains("set-cookie: relay_ops="), "an expert token does not sign in")

        let signedIn = try await runCurl(curl + ["--data-urlencode", "token=\(stack.opsToken)", "\(base)/ops/sign-in"])
        #expect(signedIn.hasPrefix("HTTP/1.1 303") && signedIn.contains("location: /ops/status"))
        let cookie = try #require(signedIn.firstMatch(of: #/set-cookie: relay_ops=([0-9a-f]{64}); Path=\/ops; HttpOnly; Secure; SameSite=Strict/#).map { String($0.1) })
        let echoed = signedIn.contains(stack.opsToken)  // a Bool: a failure must not print the token
        #expect(!echoed, "the token is not sent back")

        let page = try await runCurl(curl + ["-b", "relay_ops=\(cookie)", "\(base)/ops/status"])
        #expect(page.hasPrefix("HTTP/1.1 200") && page.contains("content-type: text/html; charset=utf-8"))
        #expect(page.contains("content-security-policy: default-src 'none'"))
        #expect(page.contains("<meta http-equiv=\"refresh\" content=\"10\">"), "it refreshes itself")
        #expect(!page.contains("<script"), "no script, and the reason's markup escaped")
        #expect(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"))
        for shown in ["<b>demo</b>", "<b>quiet</b>", "node-1", "<b>alice</b>", "relay-1", "Pending requests <span class=\"count\">1</span>",
                      "Active sessions <span class=\"count\">1</span>", "Active requests <span class=\"count\">1</span>"] {
            #expect(page.contains(shown), "the page shows \(shown)")
        }
        let records = try await stack.control.store.audit(since: nil, afterID: 0, limit: 1000)
        #expect(records.contains { $0.action == "ops.sign-in" && $0.actor == "ops:root" })

        // A forged cookie, a form from another site, an expert's bearer: no page.
        let forged = try await runCurl(curl + ["-b", "relay_ops=" + String(repeating: "0", count: 64), "\(base)/ops/status"])
        #expect(forged.hasPrefix("HTTP/1.1 303") && forged.contains("location: /ops/sign-in"))
        let crossSite = try await runCurl(curl + ["-H", "sec-fetch-site: cross-site", "--data-urlencode", "token=\(stack.opsToken)", "\(base)/ops/sign-in"])
        #expect(crossSite.hasPrefix("HTTP/1.1 403") && !crossSite.lowercased().contains("set-cookie: relay_ops="))
        let expertBearer = try await runCurl(curl + ["-H", "authorization: Bearer \(stack.expertToken)", "\(base)/ops/status"])
        #expect(expertBearer.hasPrefix("HTTP/1.1 403"))
        // Signing out ends the session on the relay, not only in the browser.
        let second = try await runCurl(curl + ["--data-urlencode", "token=\(stack.opsToken)", "\(base)/ops/sign-in"])
        let other = try #require(second.firstMatch(of: #/set-cookie: relay_ops=([0-9a-f]{64})/#).map { String($0.1) })
        let out = try await runCurl(curl + ["-X", "POST", "-b", "relay_ops=\(other)", "\(base)/ops/sign-out"])
        #expect(out.hasPrefix("HTTP/1.1 303") && out.contains("Max-Age=0"))
        let afterSignOut = try await runCurl(curl + ["-b", "relay_ops=\(other)", "\(base)/ops/status"])
        #expect(afterSignOut.hasPrefix("HTTP/1.1 303"), "the session is gone")

        // The token revoked: its browsers are signed out.
        _ = try await stack.control.revokeToken(name: "root", by: try await stack.control.authenticateUser(bearer: stack.opsToken, action: "test"))
        let after = try await runCurl(curl + ["-b", "relay_ops=\(cookie)", "\(base)/ops/status"])
        #expect(after.hasPrefix("HTTP/1.1 401") && after.contains("Sign in with an ops token"))
        await stack.stop()
    }
}
