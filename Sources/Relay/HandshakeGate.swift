import ConfigKit
import NIOHTTP1
import RelayModel
import RelayStore
import TunnelCore

/// What an upgrade request is allowed to become, decided before the upgrade: a connector's tunnel,
/// an expert's session, or a refusal whose message is safe to show.
public enum HandshakeDecision: Sendable {
    case tunnel(cluster: String, node: String)
    case session(SessionPlan)
    case refuse(ProxyRefusal)
}

/// An authorized session, before it starts.
public struct SessionPlan: Sendable {
    public var expert: TokenRecord
    public var grant: SessionGrant
    public var cluster: String
    public var component: String
    public var node: String?
    /// The privacy mode the cluster's connectors last reported.
    public var customerMode: PrivacyMode?
}

/// Authenticates and authorizes `/v1/tunnel` and `/v1/session` upgrades against the store.
/// Credential failures all get `MissionControl.unauthorized`; authenticated callers who may not
/// proceed get a 403 that says why and what to do next. Every refusal is audited.
struct HandshakeGate: Sendable {
    let control: MissionControl
    let registry: TunnelRegistry

    func decide(_ head: HTTPRequestHead, source: String?) async -> HandshakeDecision {
        do {
            if let refusal = Self.checkProtocol(head) { return .refuse(ProxyRefusal(refusal)) }
            switch head.path {
            case WirePath.tunnel: return try await self.decideTunnel(head, source: source)
            case WirePath.session: return try await self.decideSession(head, source: source)
            default: return .refuse(ProxyRefusal(.notFound, "no such endpoint"))
            }
        } catch let refusal as RelayError {
            return .refuse(ProxyRefusal(refusal))
        } catch let error as StoreUnavailable {
            return .refuse(ProxyRefusal(.storeUnavailable(error)))
        } catch {
            self.control.logger.error("handshake failed", metadata: ["error": "\(error)"])
            return .refuse(ProxyRefusal(.internalError, "the relay could not decide; try again"))
        }
    }

    private func decideTunnel(_ head: HTTPRequestHead, source: String?) async throws -> HandshakeDecision {
        let cluster = head.headers.first(name: WireHeader.cluster)
        let node = head.headers.first(name: WireHeader.node)
        let credential = try await self.control.authenticateNode(
            bearer: head.bearer, cluster: cluster, node: node, action: "tunnel.open", source: source)
        // A tunnel exists only while the cluster's flag is set.
        guard try await self.control.flag(cluster: credential.clusterID) else {
            await self.control.audit(
                actor: "node:\(credential.clusterID)/\(credential.nodeID)", "tunnel.open", cluster: credential.clusterID,
                subject: credential.nodeID, denied: "no approved access request")
            throw RelayError(.noAccessRequest, "no approved access request for this cluster; the connector dials only while its heartbeat answer asks it to")
        }
        return .tunnel(cluster: credential.clusterID, node: credential.nodeID)
    }

    private func decideSession(_ head: HTTPRequestHead, source: String?) async throws -> HandshakeDecision {
        let token = try await self.control.authenticateUser(bearer: head.bearer, action: "session.open", source: source)
        guard let cluster = head.headers.first(name: WireHeader.cluster), Identifier.isValid(cluster),
            let component = head.headers.first(name: WireHeader.component), Identifier.isValid(component)
        else {
            throw RelayError(.badRequest, "\(WireHeader.cluster) and \(WireHeader.component) must be \(Identifier.rule)")
        }
        let node = head.headers.first(name: WireHeader.node)
        if let node, !Identifier.isValid(node) {
            throw RelayError(.badRequest, "\(WireHeader.node) must be \(Identifier.rule)")
        }
        var role: AccessRole?
        if let text = head.headers.first(name: WireHeader.role) {
            guard let parsed = AccessRole(rawValue: text) else {
                throw RelayError(.badRequest, "\(WireHeader.role) must be viewer, user or admin")
            }
            role = parsed
        }
        let grant = try await self.control.authorizeSession(caller: token, cluster: cluster, role: role)
        // A component no node of the cluster offers: refused now, not on every request later.
        let reported = try await self.control.store.nodes(clusterID: cluster).compactMap(\.privacySettings)
        let offered = Set(reported.flatMap(\.components))
        if !offered.isEmpty, !offered.contains(component) {
            await self.control.deny(caller: token, "session.open", source: source, reason: "unknown component \(component) of cluster \(cluster)")
            throw RelayError(.unknownComponent, "cluster \"\(cluster)\" offers no component \"\(component)\"; it offers \(offered.sorted().joined(separator: ", ")) (relayctl clusters show \(cluster))")
        }
        // Authorized, but the connector has not dialed this relay node yet: relayctl waits and retries.
        guard self.registry.pick(cluster: cluster, node: node) != nil else {
            let target = node.map { "node \"\($0)\" of cluster \"\(cluster)\"" } ?? "cluster \"\(cluster)\""
            let why = self.registry.absence(cluster: cluster, node: node).map { "; \($0)" } ?? ""
            throw RelayError(.noTunnel, "request \(grant.request.id) is approved, but \(target) has no connector connected to this relay yet\(why); it dials at its next heartbeat")
        }
        let modes = Set(reported.map(\.mode))
        return .session(
            SessionPlan(expert: token, grant: grant, cluster: cluster, component: component, node: node, customerMode: modes.count == 1 ? modes.first : nil))
    }

    private static func checkProtocol(_ head: HTTPRequestHead) -> RelayError? {
        let offered = head.headers[canonicalForm: "sec-websocket-protocol"].map { $0.trimmingSpaces }
        guard offered.contains(WireProtocolVersion.current) else {
            return RelayError(.unsupportedProtocol, "this relay speaks \(WireProtocolVersion.current); upgrade the connector or relayctl")
        }
        return nil
    }
}

extension HTTPRequestHead {
    /// The URI without its query string.
    var path: String { self.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? self.uri }

    /// The `Authorization: Bearer` value, if any.
    var bearer: String? {
        guard let value = self.headers.first(name: "authorization") else { return nil }
        let parts = value.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        return String(parts[1])
    }
}

extension Substring {
    fileprivate var trimmingSpaces: String {
        String(self.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
