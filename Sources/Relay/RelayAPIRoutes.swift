import Foundation
import RelayAPI
import RelayModel
import RelayStore

extension RelayAPIRouter {
    /// What answers each endpoint of `RelayEndpoints`; access (any token, ops) is checked by the
    /// router from the endpoint itself before any of these runs.
    static func table(control: MissionControl, registry: TunnelRegistry) -> [APIRoute] {
        let views = ClusterViews(control: control, registry: registry)
        return [
            APIRoute(RelayEndpoints.register) { call, body in try await control.register(body, source: call.request.source) },
            APIRoute(RelayEndpoints.heartbeat) { call, body in try await control.heartbeat(body, bearer: call.request.bearer, source: call.request.source) },
            APIRoute(RelayEndpoints.whoami) { call, _ in
                let caller = try call.token
                return WhoAmI(name: caller.name, role: caller.role)
            },
            // Any token: relayctl finds the other nodes from the one it was given.
            APIRoute(RelayEndpoints.relayNodes) { _, _ in try await control.relayNodes() },
            APIRoute(RelayEndpoints.clusters) { _, _ in try await views.all() },
            APIRoute(RelayEndpoints.createCluster) { call, body in try await control.addCluster(body, by: try call.token) },
            APIRoute(RelayEndpoints.cluster) { call, _ in
                let id = call.parameter("id")
                guard let cluster = try await control.cluster(id: id) else { throw MissionControl.unknownCluster(id) }
                return try await views.detail(cluster)
            },
            APIRoute(RelayEndpoints.enroll) { call, _ in try await control.enroll(cluster: call.parameter("id"), by: try call.token) },
            APIRoute(RelayEndpoints.requests) { call, _ in
                var states: Set<RequestState>?
                if let text = call.request.query["state"], !text.isEmpty {
                    states = Set(try text.split(separator: ",").map { name in
                        guard let state = RequestState(rawValue: String(name)) else {
                            throw RelayError(.badRequest, "state must be pending, approved, expired, revoked or rejected")
                        }
                        return state
                    })
                }
                return try await control.requests(for: try call.token, cluster: call.request.query["cluster"], states: states)
            },
            APIRoute(RelayEndpoints.createRequest) { call, body in try await control.createRequest(body, by: try call.token) },
            APIRoute(RelayEndpoints.revokeRequest) { call, body in
                guard let id = Int64(call.parameter("id")) else { throw RelayAPIRouter.notFound }
                return try await control.revokeRequest(id: id, reason: body.reason, by: try call.token)
            },
            APIRoute(RelayEndpoints.sessions) { call, _ in
                let caller = try call.token
                let all = try await control.store.sessions(live: call.request.query["all"] != "true")
                return caller.role == .ops ? all : all.filter { $0.expert == caller.name }
            },
            APIRoute(RelayEndpoints.killSession) { call, _ in try await control.killSession(id: call.parameter("id"), by: try call.token) },
            APIRoute(RelayEndpoints.tokens) { _, _ in try await control.store.tokens().map(TokenView.init) },
            APIRoute(RelayEndpoints.createToken) { call, body in try await control.createToken(body, by: try call.token) },
            APIRoute(RelayEndpoints.revokeToken) { call, _ in try await control.revokeToken(name: call.parameter("name"), by: try call.token) },
            APIRoute(RelayEndpoints.audit) { call, _ in
                var since: Date?
                if let text = call.request.query["since"], !text.isEmpty {
                    guard let date = ISO8601DateFormatter().date(from: text) else {
                        throw RelayError(.badRequest, "since must be an ISO 8601 time such as 2026-11-21T09:00:00Z")
                    }
                    since = date
                }
                let after = Int64(call.request.query["after"] ?? "") ?? 0
                let limit = min(max(Int(call.request.query["limit"] ?? "") ?? 500, 1), 5000)
                let records = try await control.store.audit(since: since, afterID: after, limit: limit)
                return AuditPage(records: records, nextAfter: records.count == limit ? records.last?.id : nil)
            },
            APIRoute(RelayEndpoints.status) { _, _ in try await views.status() },
        ]
    }
}

/// Clusters as the API and the status page show them: nodes with health and tunnels to this node,
/// active requests, and the flag a connector sees.
struct ClusterViews: Sendable {
    let control: MissionControl
    let registry: TunnelRegistry

    func all() async throws -> [ClusterDetail] {
        var details: [ClusterDetail] = []
        for cluster in try await self.control.clusters() { details.append(try await self.detail(cluster)) }
        return details
    }

    func detail(_ cluster: ClusterRecord) async throws -> ClusterDetail {
        let now = self.control.now
        let active = try await self.control.store.requests(clusterID: cluster.id, states: [.approved]).filter { $0.isActive(at: now) }
        let tunnels = self.registry.tunnels(cluster: cluster.id)
        let nodes = try await self.control.nodes(clusterID: cluster.id).map { node in
            ClusterDetail.Node(
                record: node, health: try? APIJSON.decoder().decode(NodeHealth.self, from: Data(node.healthJSON.utf8)),
                tunnelsHere: tunnels.filter { $0.node == node.nodeID }.count)
        }
        // The flag a connector sees: off while the customer turned remote access off on every node.
        let disabled = !nodes.isEmpty && nodes.allSatisfy { $0.record.privacyMode == .disabled }
        return ClusterDetail(cluster: cluster, remoteUIRequested: !active.isEmpty && !disabled, nodes: nodes, activeRequests: active)
    }

    /// `GET /v1/status` and the status page.
    func status() async throws -> RelayStatus {
        let now = self.control.now
        let open = try await self.control.store.requests(clusterID: nil, states: [.pending, .approved])
        return RelayStatus(
            node: self.control.settings.nodeName, generatedAt: now, relayNodes: try await self.control.relayNodes(), clusters: try await self.all(),
            sessions: try await self.control.store.sessions(live: true), pendingRequests: open.filter { $0.state == .pending },
            activeRequests: open.filter { $0.state == .approved && $0.isActive(at: now) })
    }
}
