import TunnelCore

/// Which relay nodes the connector dials, out of a heartbeat answer: pure, no I/O.
///
/// The answer comes from the relay, which the customer does not have to trust: a relay (or whoever
/// took it over) must not be able to send the connector's tunnels, and with them the customer's
/// components, anywhere else. So a URL is dialed only if its host is the configured relay's host or
/// one the customer listed (`relay.allowed_hosts`, `*.example.com` for any name under it), and no
/// more than `maxURLs` of them.
public struct TunnelURLPolicy: Sendable, Equatable {
    public var allowedHosts: [String]
    public var maxURLs: Int

    public static let defaultMaxURLs = 16

    public init(relayHost: String, allowedHosts: [String] = [], maxURLs: Int = Self.defaultMaxURLs) {
        self.allowedHosts = ([relayHost] + allowedHosts).map { $0.lowercased() }
        self.maxURLs = maxURLs
    }

    /// The URLs to dial (parsed, deduplicated, in the relay's order) and why the others are not.
    public func filter(_ urls: [String]) -> (kept: [String], dropped: [(url: String, why: String)]) {
        var kept: [String] = []
        var dropped: [(String, String)] = []
        for text in urls {
            guard var url = try? WebSocketURL(parsing: text) else {
                dropped.append((text, "not a wss:// URL"))
                continue
            }
            guard self.allows(host: url.host) else {
                dropped.append((text, "host \(url.host) is neither the configured relay nor in relay.allowed_hosts"))
                continue
            }
            url.host = url.host.lowercased()
            let canonical = url.description
            if kept.contains(canonical) { continue }
            guard kept.count < self.maxURLs else {
                dropped.append((text, "more than \(self.maxURLs) relay nodes"))
                continue
            }
            kept.append(canonical)
        }
        return (kept, dropped)
    }

    func allows(host: String) -> Bool {
        let host = host.lowercased()
        return self.allowedHosts.contains { pattern in
            if pattern.hasPrefix("*.") {
                let suffix = pattern.dropFirst(1)  // ".example.com"
                return host.hasSuffix(suffix) && host.count > suffix.count
            }
            return host == pattern
        }
    }
}
