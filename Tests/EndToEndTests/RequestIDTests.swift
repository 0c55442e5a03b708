import Foundation
import NIOHTTP1
import Relay
import RelayAPI
import RelayModel
import Testing
import TunnelCore

/// One call followed by its ID: the caller's `x-request-id` (or the relay's own) is on the answer,
/// on the error a person reads, and on the audit records the call made.
@Suite struct RequestIDTests {
    @Test func theCallersRequestIDIsOnTheAnswerTheErrorAndTheAuditRecord() async throws {
        let stack = try await TestStack.start(approve: false)
        let base = try WebSocketURL(parsing: "https://127.0.0.1:\(stack.relayPort)", acceptHTTPS: true)
        let ops = try APIClient(base: base, caFile: TestCerts.trusted + "/ca.pem", bearer: stack.opsToken, group: TestStack.group)
        let _: TokenCreated = try await RequestID.$current.withValue("support-case-4711") {
            try await ops.post(APIPath.tokens, CreateTokenRequest(name: "carol", role: .expert, ttlSeconds: nil))
        }
        let records = try await stack.control.store.audit(since: nil, afterID: 0, limit: 1000)
        let created = try #require(records.first { $0.action == "token.create" && $0.subject == "carol" })
        #expect(created.requestID == "support-case-4711")

        // A refusal: the ID the client sent comes back in the error, for the engineer to quote.
        let expert = try APIClient(base: base, caFile: TestCerts.trusted + "/ca.pem", bearer: stack.expertToken, group: TestStack.group)
        do {
            let _: [TokenView] = try await expert.get(APIPath.tokens)
            Issue.record("an expert listed tokens")
        } catch let error as APIError {
            let id = try #require(error.requestID)
            #expect(id.count == 32, "APIClient makes one per call")
            let denied = try await stack.control.store.audit(since: nil, afterID: 0, limit: 1000).filter { $0.requestID == id }
            #expect(denied.count == 1 && denied.first?.outcome == .denied, "the refusal is audited under the same ID")
        }

        // An ID that is not safe to log is replaced by the relay's own; a good one is echoed.
        for (offered, kept) in [("bad id; with spaces", false), ("my-own-id-0001", true)] {
            let answer = try await runCurl([
                "-s", "-i", "--max-time", "30", "--cacert", TestCerts.trusted + "/ca.pem", "-H", "x-request-id: \(offered)",
                "https://127.0.0.1:\(stack.relayPort)/v1/whoami",
            ])
            let echoed = try #require(answer.firstMatch(of: #/(?i)x-request-id: ([^\r\n]+)/#).map { String($0.1) })
            #expect(kept ? echoed == offered : echoed.wholeMatch(of: #/[0-9a-f]{32}/#) != nil, "\(echoed)")
        }
        await stack.stop()
    }
}
