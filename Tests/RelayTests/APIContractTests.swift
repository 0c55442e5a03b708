import Foundation
import NIOHTTP1
import Relay
import RelayAPI
import RelayModel
import Testing
import TunnelCore

/// One typed API contract: the endpoint table (`RelayEndpoints`) is what the router answers and
/// what the clients call; who may call each endpoint is enforced from the table; every error code is
/// one of `APIErrorCode`, with its status, and docs/API.md lists them all.
@Suite struct APIContractTests {
    static let docs = try! String(
        contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/API.md"), encoding: .utf8)

    @Test func theRouterAnswersExactlyTheEndpointTable() throws {
        let fixture = try Fixture()
        let router = RelayAPIRouter(control: fixture.control, registry: TunnelRegistry())
        #expect(router.endpoints.map(\.label) == RelayEndpoints.all.map(\.label))
        #expect(Set(RelayEndpoints.all.map(\.label)).count == RelayEndpoints.all.count, "no endpoint twice")
        // Who may call what, written out: a table edit that opens an ops endpoint to experts fails here.
        let opsOnly = Set(RelayEndpoints.all.filter { $0.access == .ops }.map(\.label))
        #expect(opsOnly == [
            "POST /v1/clusters", "POST /v1/clusters/{id}/enroll", "POST /v1/sessions/{id}/kill", "GET /v1/tokens", "POST /v1/tokens",
            "POST /v1/tokens/{name}/revoke", "GET /v1/audit", "GET /v1/status",
        ])
        #expect(Set(RelayEndpoints.all.filter { $0.access == .enrollmentToken || $0.access == .connectorCredential }.map(\.label))
            == ["POST /v1/register", "POST /v1/heartbeat"])
        for endpoint in RelayEndpoints.all {
            let documented = "`\(endpoint.method.rawValue) \(endpoint.template)"
            let listed = Self.docs.contains(documented)
            #expect(listed, "docs/API.md does not list \(endpoint.label)")
        }
    }

    @Test func accessIsEnforcedFromTheTable() async throws {
        let fixture = try Fixture()
        let router = RelayAPIRouter(control: fixture.control, registry: TunnelRegistry())
        let (ops, _) = try await fixture.token("root", .ops)
        let (expert, _) = try await fixture.token("alice", .expert)
        for endpoint in RelayEndpoints.all where endpoint.access == .anyToken || endpoint.access == .ops {
            let path = endpoint.template.path(endpoint.template.description.contains("{") ? ["x"] : [])
            let anonymous = await router.handle(APIRequest(method: endpoint.method, uri: path, bearer: nil, body: Data()))
            #expect(anonymous.errorCode == APIErrorCode.unauthorized.rawValue && anonymous.status == .unauthorized, "\(endpoint.label)")
            let asExpert = await router.handle(APIRequest(method: endpoint.method, uri: path, bearer: expert, body: Data()))
            if endpoint.access == .ops {
                #expect(asExpert.errorCode == APIErrorCode.opsOnly.rawValue && asExpert.status == .forbidden, "\(endpoint.label)")
            } else {
                #expect(asExpert.errorCode != APIErrorCode.opsOnly.rawValue && asExpert.errorCode != APIErrorCode.unauthorized.rawValue, "\(endpoint.label)")
            }
        }
        let status = await router.handle(APIRequest(method: .GET, uri: RelayEndpoints.status.template.path([]), bearer: ops, body: Data()))
        #expect(status.status == .ok)
        let decoded = try APIJSON.decoder().decode(RelayStatus.self, from: status.body)
        #expect(decoded.node == "relay-test")
        // Unknown paths: 404 before any authentication; a known path with another method: 404 after it.
        let unknown = await router.handle(APIRequest(method: .GET, uri: "/v1/nope", bearer: nil, body: Data()))
        #expect(unknown.status == .notFound && unknown.errorCode == "not_found")
        let wrongMethod = await router.handle(APIRequest(method: .DELETE, uri: "/v1/clusters", bearer: ops, body: Data()))
        #expect(wrongMethod.status == .notFound)
    }

    @Test func errorCodesHaveOneStatusEachAndAreDocumented() throws {
        for code in APIErrorCode.allCases {
            #expect(code.status.code >= 400, "\(code)")
            let explained = Self.docs.contains("| `\(code.rawValue)` | \(code.status.code) |")
            #expect(explained, "docs/API.md's error table does not give \(code.rawValue) with \(code.status.code)")
        }
        let body = try APIJSON.decoder().decode(APIErrorBody.self, from: Data(#"{"error":"ops_only","message":"m"}"#.utf8))
        #expect(APIErrorCode(rawValue: body.error) == .opsOnly)
    }

    /// Refusals of requests inside a session: every code in docs/PROTOCOL.md's table, with its status.
    @Test func streamErrorCodesAreDocumentedWithTheirStatus() throws {
        let protocolDocs = try String(
            contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/PROTOCOL.md"), encoding: .utf8)
        let rows = protocolDocs.split(separator: "\n").filter { $0.hasPrefix("| ") }
        for code in StreamErrorCode.allCases {
            let listed = rows.contains { $0.hasPrefix("| \(code.status) |") && $0.contains("`\(code.rawValue)`") }
            #expect(listed, "docs/PROTOCOL.md lists no \(code.status) row with \(code.rawValue)")
            let refusal = ProxyRefusal(stream: code, "m")
            #expect(refusal.status.code == code.status && refusal.code == code.rawValue)
        }
    }

    @Test func pathParametersArePercentEncodedAndMatchedBack() throws {
        let template = RelayEndpoints.revokeToken.template
        let path = template.path(["a/b c?d"])
        #expect(path == "/v1/tokens/a%2Fb%20c%3Fd/revoke")
        #expect(template.match(path) == ["name": "a/b c?d"])
        #expect(RelayEndpoints.cluster.template.match("/v1/clusters/x/enroll") == nil)
        #expect(RelayEndpoints.requests.template.path([], query: [("cluster", "a&b"), ("state", nil)]) == "/v1/requests?cluster=a%26b")
    }
}
