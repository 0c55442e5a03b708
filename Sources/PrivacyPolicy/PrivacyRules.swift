import RelayModel

/// What the customer allows for one component (the name is all the relay ever sees).
public struct ComponentRules: Sendable, Equatable {
    public var name: String
    /// `host:port` of the component: besides its name, the only Host header accepted.
    public var authority: String
    /// Compare paths without regard to case (the component treats `/Admin` as `/admin`).
    public var caseInsensitivePaths: Bool
    /// Denied path prefixes of this component, normalised (see `PrivacyRules.normalizePrefix`).
    public var deniedPathPrefixes: [String]
    /// Headers from `PrivacyRules.strippedHeaders` this component may still receive (lower-case names).
    public var passedHeaders: Set<String>
    /// Path prefixes (normalised) under which role `viewer` may open websockets: a websocket can
    /// carry writes, so a read-only session gets none unless the customer lists where.
    public var viewerWebSocketPaths: [String]

    public init(
        name: String, authority: String, caseInsensitivePaths: Bool = true, deniedPathPrefixes: [String] = [], passedHeaders: Set<String> = [],
        viewerWebSocketPaths: [String] = []
    ) {
        self.name = name
        self.authority = authority
        self.caseInsensitivePaths = caseInsensitivePaths
        self.deniedPathPrefixes = deniedPathPrefixes
        self.passedHeaders = Set(passedHeaders.map { $0.lowercased() })
        self.viewerWebSocketPaths = viewerWebSocketPaths
    }
}

/// The customer's privacy settings in force: everything the connector decides a stream on.
/// Loaded from connector.yaml and replaced whole on reload (SIGHUP) or a customer CLI change.
public struct PrivacyRules: Sendable, Equatable {
    public var mode: PrivacyMode
    public var components: [String: ComponentRules]
    /// Denied for every component, in addition to each component's own prefixes.
    public var deniedPathPrefixes: [String]
    /// Methods each role may use. `viewer` is read-only.
    public var methods: [AccessRole: Set<String>]
    /// A session ends this long after its first request (0: no limit).
    public var maxSessionMilliseconds: Int64
    /// A session ends after this long without a request (0: no limit).
    public var idleTimeoutMilliseconds: Int64

    public static let defaultMethods: [AccessRole: Set<String>] = [
        .viewer: ["GET", "HEAD"],
        .user: ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"],
        .admin: ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"],
    ]
    /// Never forwarded whatever the role: tunnelling out of the component, and reflecting headers back.
    public static let forbiddenMethods: Set<String> = ["CONNECT", "TRACE"]
    /// Headers and query parameters that make some frameworks run another method than the one sent.
    public static let methodOverrideNames: Set<String> = ["x-http-method-override", "x-http-method", "x-method-override", "_method"]

    public init(
        mode: PrivacyMode, components: [ComponentRules], deniedPathPrefixes: [String] = [], methods: [AccessRole: Set<String>] = Self.defaultMethods,
        maxSessionMilliseconds: Int64 = 0, idleTimeoutMilliseconds: Int64 = 0
    ) {
        self.mode = mode
        self.components = Dictionary(components.map { ($0.name, $0) }) { first, _ in first }
        self.deniedPathPrefixes = deniedPathPrefixes
        self.methods = methods
        self.maxSessionMilliseconds = maxSessionMilliseconds
        self.idleTimeoutMilliseconds = idleTimeoutMilliseconds
    }

    /// Headers that make a component route elsewhere or believe who the caller is. Behind a proxy
    /// many components trust them blindly, so an expert must never set them; they are removed
    /// unless the component's `pass_headers` names them. The connector sets its own X-Forwarded-*.
    public static let strippedHeaders: Set<String> = [
        "forwarded", "x-original-url", "x-rewrite-url", "x-original-uri", "x-override-url", "x-host", "x-http-host-override",
        "x-real-ip", "x-client-ip", "x-cluster-client-ip", "true-client-ip", "cf-connecting-ip", "fastly-client-ip", "x-remote-ip",
        "x-remote-addr", "x-originating-ip", "client-ip", "remote-user", "x-remote-user", "x-webauth-user", "x-webauth-email",
        "x-webauth-groups", "x-auth-user", "x-authenticated-user", "x-auth-request-user", "x-auth-request-email",
        "x-auth-request-groups", "x-auth-request-preferred-username", "x-proxy-user", "x-user", "x-username", "x-email",
        "x-ssl-client-cert", "x-client-cert", "x-client-dn", "x-ssl-client-dn", "ssl-client-cert",
    ]
    /// Header name prefixes stripped in the same way (`x-forwarded-for`, `x-forwarded-user`, ...).
    public static let strippedHeaderPrefixes = ["x-forwarded-", "x-ms-client-principal", "x-amzn-oidc-", "x-goog-authenticated-user-"]

    /// Whether `name` (lower-case) is a routing or identity header the connector removes.
    public static func isStripped(_ name: String) -> Bool {
        self.strippedHeaders.contains(name) || self.strippedHeaderPrefixes.contains { name.hasPrefix($0) }
    }

    /// A configured prefix in the form paths are compared in: normalised like a request path, and
    /// fully decoded. Returns nil for something that is not a path.
    public static func normalizePrefix(_ text: String) -> String? {
        guard case .success(let target) = RequestTargetNormalizer.normalize(text), target.query == nil else { return nil }
        return target.decodedPath
    }

    /// The denied prefix `target` falls under, if any: as decoded, and as Java servers read it
    /// (`;parameters` cut from every segment). A prefix is a plain string prefix (`/api/key` also
    /// covers `/api/keys`); one that ends in `/` also covers the path without it.
    func deniedPrefix(for target: NormalizedTarget, component: ComponentRules) -> String? {
        let candidates = Self.candidates(target, component)
        return (self.deniedPathPrefixes + component.deniedPathPrefixes).first { prefix in
            candidates.contains { Self.path($0, isUnder: prefix, component) }
        }
    }

    /// Whether a viewer's websocket to `target` is under one of the component's
    /// `viewerWebSocketPaths`. An allowance, so every reading of the path must fall under it
    /// (a deny-list matches on any).
    func viewerMayOpenWebSocket(to target: NormalizedTarget, component: ComponentRules) -> Bool {
        let candidates = Self.candidates(target, component)
        return component.viewerWebSocketPaths.contains { prefix in
            // Whole segments only: `/ws/live` allows `/ws/live/cpu`, not `/ws/live-shell`.
            let folded = component.caseInsensitivePaths ? prefix.lowercased() : prefix
            let folder = folded.hasSuffix("/") ? folded : folded + "/"
            return candidates.allSatisfy { $0 == folded || $0 == String(folder.dropLast()) || $0.hasPrefix(folder) }
        }
    }

    /// The readings of a path a component may act on: decoded, and as Java servers read it.
    private static func candidates(_ target: NormalizedTarget, _ component: ComponentRules) -> Set<String> {
        Set([target.decodedPath, target.parameterFreePath].map { component.caseInsensitivePaths ? $0.lowercased() : $0 })
    }

    private static func path(_ candidate: String, isUnder prefix: String, _ component: ComponentRules) -> Bool {
        let folded = component.caseInsensitivePaths ? prefix.lowercased() : prefix
        return candidate.hasPrefix(folded) || (folded.hasSuffix("/") && candidate == String(folded.dropLast()))
    }
}
