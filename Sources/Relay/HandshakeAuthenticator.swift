import ConfigKit
import NIOHTTP1
import TunnelCore

/// Who is asking to upgrade, decided from the request head alone (no I/O): a connector opening a
/// tunnel, an expert opening a session, or a refusal that says why in terms safe to show.
public enum HandshakeDecision: Equatable, Sendable {
    case tunnel(cluster: String, node: String)
    case session(expert: String, cluster: String, component: String, node: String?)
    case refuse(ProxyRefusal)
}

public struct HandshakeAuthenticator: Sendable {
    private let clusters: [String: Secret]
    private let experts: [(name: String, token: Secret)]

    public init(config: RelayConfig) {
        self.clusters = Dictionary(uniqueKeysWithValues: config.clusters.map { ($0.id, $0.secret) })
        self.experts = config.experts.map { ($0.name, $0.token) }
    }

    /// One shape for every credential failure, so a caller learns nothing about which part was wrong.
    static let badCredentials = ProxyRefusal(
        .unauthorized, code: "unauthorized", message: "invalid credentials; check the configured secret or token")

    public func decide(_ head: HTTPRequestHead) -> HandshakeDecision {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        switch path {
        case WirePath.tunnel: return self.decideTunnel(head)
        case WirePath.session: return self.decideSession(head)
        default: return .refuse(ProxyRefusal(.notFound, code: "not_found", message: "no such endpoint"))
        }
    }

    private func decideTunnel(_ head: HTTPRequestHead) -> HandshakeDecision {
        if let refusal = Self.checkProtocol(head) { return .refuse(refusal) }
        guard let cluster = head.headers.first(name: WireHeader.cluster), Identifier.isValid(cluster),
            let node = head.headers.first(name: WireHeader.node), Identifier.isValid(node)
        else {
            return .refuse(
                ProxyRefusal(
                    .badRequest, code: "bad_request",
                    message: "\(WireHeader.cluster) and \(WireHeader.node) must be \(Identifier.rule)"))
        }
        guard let presented = Self.bearer(head), let secret = self.clusters[cluster], secret.matches(presented) else {
            return .refuse(Self.badCredentials)
        }
        return .tunnel(cluster: cluster, node: node)
    }

    private func decideSession(_ head: HTTPRequestHead) -> HandshakeDecision {
        if let refusal = Self.checkProtocol(head) { return .refuse(refusal) }
        guard let presented = Self.bearer(head) else { return .refuse(Self.badCredentials) }
        // Check every token, so timing does not reveal how many experts there are before the match.
        var expert: String?
        for candidate in self.experts where candidate.token.matches(presented) { expert = candidate.name }
        guard let expert else { return .refuse(Self.badCredentials) }
        guard let cluster = head.headers.first(name: WireHeader.cluster), Identifier.isValid(cluster),
            let component = head.headers.first(name: WireHeader.component), Identifier.isValid(component)
        else {
            return .refuse(
                ProxyRefusal(
                    .badRequest, code: "bad_request",
                    message: "\(WireHeader.cluster) and \(WireHeader.component) must be \(Identifier.rule)"))
        }
        let node = head.headers.first(name: WireHeader.node)
        if let node, !Identifier.isValid(node) {
            return .refuse(ProxyRefusal(.badRequest, code: "bad_request", message: "\(WireHeader.node) must be \(Identifier.rule)"))
        }
        guard self.clusters[cluster] != nil else {
            return .refuse(ProxyRefusal(.notFound, code: "unknown_cluster", message: "cluster \"\(cluster)\" is not known to this relay"))
        }
        return .session(expert: expert, cluster: cluster, component: component, node: node)
    }

    private static func checkProtocol(_ head: HTTPRequestHead) -> ProxyRefusal? {
        let offered = head.headers[canonicalForm: "sec-websocket-protocol"].map { $0.trimmingSpaces }
        guard offered.contains(WireProtocolVersion.current) else {
            return ProxyRefusal(
                .badRequest, code: "unsupported_protocol",
                message: "this relay speaks \(WireProtocolVersion.current); upgrade the connector or relayctl")
        }
        return nil
    }

    static func bearer(_ head: HTTPRequestHead) -> String? {
        guard let value = head.headers.first(name: "authorization") else { return nil }
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
