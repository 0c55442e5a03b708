import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import RelayModel
import TunnelCore

/// Who may use the engineer's local port, and which component a request is for. Pure policy over
/// the request head and a few secrets; `LocalGateHandler` carries out what it decides.
///
/// Each component has its own host name (`ui.demo.localhost`: browsers resolve `*.localhost` to
/// loopback and keep cookies per host, so one cluster UI's cookies never reach another's). A
/// browser signs in with the one-time link relayctl prints, which sets an HttpOnly,
/// SameSite=Strict cookie for that host; a script sends the `--local-token-file` token in a
/// header. Any other local user, and any web page the engineer visits (another component's
/// included), gets nothing through.
public final class LocalAccess: Sendable {
    public static let tokenHeader = "x-relayctl-token"
    public static let signInParameter = "relayctl-token"

    /// How much the port checks before a request goes on.
    public enum Checks: Sendable {
        /// relayctl's: the component's cookie or the script token, and only the port's own names.
        case engineer
        /// In-process, where the connector's own checks are what is tested: no sign-in, and a Host
        /// that is not one of the port's names goes on unchanged for the connector to judge.
        /// Other sites' pages are still refused.
        case conduit
    }

    public let cluster: String
    /// Component names, in the order the engineer named them.
    public let components: [String]
    public let checks: Checks
    var requiresSignIn: Bool { self.checks == .engineer }
    private let hostNames: [String: String]
    /// One cookie value per component: a cookie taken from one host opens no other.
    private let cookieSecrets: [String: String]
    private let scriptToken: String?
    /// Sign-in tokens not used yet: the component each is for and until when it works. One per
    /// component at a time (a new link replaces the last).
    private let links = NIOLockedValueBox<[String: (component: String, until: NIODeadline)]>([:])
    private let linkLifetime: TimeAmount
    private let now: @Sendable () -> NIODeadline

    /// - Parameter linkLifetime: how long a printed sign-in link works if nobody uses it.
    /// - Throws: `LocalAccessError` when two names would share a host name, or the script token is empty.
    public init(
        cluster: String, components: [String], checks: Checks = .engineer, scriptToken: String? = nil,
        linkLifetime: TimeAmount = .minutes(15), now: @escaping @Sendable () -> NIODeadline = { .now() }
    ) throws {
        if scriptToken?.isEmpty == true { throw LocalAccessError("the script token is empty") }
        self.cluster = cluster
        self.components = components
        self.checks = checks
        self.scriptToken = scriptToken
        self.linkLifetime = linkLifetime
        self.now = now
        var hosts: [String: String] = [:]
        for component in components {
            let host = "\(Self.label(component)).\(Self.label(cluster)).localhost"
            if let other = hosts.first(where: { $0.value == host })?.key {
                throw LocalAccessError("components \"\(other)\" and \"\(component)\" would share the host name \(host); open them in two sessions")
            }
            hosts[component] = host
        }
        self.hostNames = hosts
        self.cookieSecrets = Dictionary(uniqueKeysWithValues: components.map { ($0, SecureRandom.hex(32)) })
    }

    /// A name as one host-name label: lowercase, with `.` and `_` (allowed in our identifiers,
    /// not in a label) as `-`.
    static func label(_ name: String) -> String {
        String(name.lowercased().map { $0 == "." || $0 == "_" ? "-" : $0 })
    }

    public func hostName(of component: String) -> String { self.hostNames[component] ?? component }

    /// The component's address on the port, e.g. `http://ui.demo.localhost:8000/`.
    public func url(of component: String, port: Int) -> String { "http://\(self.hostName(of: component)):\(port)/" }

    /// A new one-time link that signs one browser in to the component's host; the component's
    /// earlier link, if unused, stops working.
    public func signInLink(for component: String, port: Int) -> String {
        guard self.requiresSignIn else { return self.url(of: component, port: port) }
        let token = SecureRandom.hex(16)
        let until = self.now() + self.linkLifetime
        self.links.withLockedValue { links in
            links = links.filter { $0.value.component != component }
            links[token] = (component, until)
        }
        return "\(self.url(of: component, port: port))?\(Self.signInParameter)=\(token)"
    }

    /// The cookie that holds a signed-in browser, named for the port: browsers keep cookies per
    /// host but not per port, so two sessions on two ports must not overwrite each other's.
    static func cookieName(port: Int) -> String { "relayctl-\(port)" }

    public enum Decision: Equatable {
        /// Carry it to the component, with `Host` naming it and relayctl's own cookie and header removed.
        case forward(component: String, head: HTTPRequestHead)
        /// A sign-in link: send the browser to the same address without the token, setting the
        /// cookie (nil: the browser had it already, a link opened twice).
        case signIn(location: String, setCookie: String?)
        case refuse(ProxyRefusal)
    }

    public func decide(_ head: HTTPRequestHead, port: Int) -> Decision {
        let scriptSignedIn = self.scriptToken.map { token in head.headers[Self.tokenHeader].contains { Self.same($0, token) } } ?? false
        let component: String
        let origin: String
        switch self.route(head, port: port, listNames: scriptSignedIn || !self.requiresSignIn) {
        case .success(let routed):
            (component, origin) = routed
        case .failure(let refusal):
            guard self.checks == .conduit, refusal.code == "unknown_host", self.components.count == 1 else { return .refuse(refusal) }
            if let refusal = Self.crossSite(head, origin: nil) { return .refuse(refusal) }
            return .forward(component: self.components[0], head: head)
        }
        if let refusal = Self.crossSite(head, origin: origin) { return .refuse(refusal) }
        var head = head
        let cookieName = Self.cookieName(port: port)
        if self.requiresSignIn {
            let cookieSignedIn = self.cookieSecrets[component].map { secret in
                Self.cookies(head.headers).contains { $0.name == cookieName && Self.same($0.value, secret) }
            } ?? false
            let (path, query) = Self.split(head.uri)
            if let token = query.first(where: { $0.name == Self.signInParameter })?.value {
                let rest = query.filter { $0.name != Self.signInParameter }.map(\.text).joined(separator: "&")
                // Only a path of ours: `//host` would send the browser elsewhere.
                let clean = "/" + path.drop { $0 == "/" }
                let location = rest.isEmpty ? clean : "\(clean)?\(rest)"
                if cookieSignedIn { return .signIn(location: location, setCookie: nil) }
                guard head.method == .GET || head.method == .HEAD, self.spend(token, for: component), let secret = self.cookieSecrets[component] else {
                    return .refuse(
                        ProxyRefusal(stream: .signInLinkUsed, "this sign-in link was used already, has expired or is not for this host; each link signs in one browser once. Press Enter in the terminal running relayctl for new links"))
                }
                return .signIn(location: location, setCookie: "\(cookieName)=\(secret); Path=/; HttpOnly; SameSite=Strict")
            }
            guard cookieSignedIn || scriptSignedIn else {
                let scripts = self.scriptToken == nil ? "" : ", or send the token from --local-token-file in header X-Relayctl-Token"
                return .refuse(
                    ProxyRefusal(stream: .localSignInRequired, "this port carries a relayctl session and needs signing in: open the link relayctl printed for this host (press Enter in its terminal for a new one)\(scripts)"))
            }
        }
        head.headers.remove(name: Self.tokenHeader)
        Self.removeCookie(named: cookieName, from: &head.headers)
        head.headers.replaceOrAdd(name: "host", value: component)
        return .forward(component: component, head: head)
    }

    /// Uses up a sign-in token for `component`, if it still works.
    private func spend(_ token: String, for component: String) -> Bool {
        let now = self.now()
        return self.links.withLockedValue { links in
            links = links.filter { $0.value.until > now }
            guard links[token]?.component == component else { return false }
            links[token] = nil
            return true
        }
    }

    // MARK: routing

    /// The component a request's Host names, and the origin a page of that host has.
    /// - Parameter listNames: whether refusals may name the components (only to a signed-in
    ///   caller: a DNS-rebinding page could read them otherwise).
    private func route(_ head: HTTPRequestHead, port: Int, listNames: Bool) -> Result<(String, String), ProxyRefusal> {
        let hosts = head.headers["host"]
        guard hosts.count == 1 else {
            return .failure(ProxyRefusal(stream: .badHost, "a request needs exactly one Host header"))
        }
        // With this port or none (as curl and HTTP/1.0 tools may send); another port is another listener's.
        let host = hosts[0].lowercased()
        let name = String(host.hasSuffix(":\(port)") ? host.dropLast(":\(port)".count) : Substring(host))
        let origin = "http://\(name):\(port)"
        let names = listNames ? ": \(self.components.map { self.url(of: $0, port: port) }.joined(separator: ", "))" : " (the links relayctl printed)"
        if Self.loopbackNames.contains(name) {
            if self.components.count == 1 { return .success((self.components[0], origin)) }
            return .failure(
                ProxyRefusal(stream: .chooseComponent, "this port carries several components, each on its own host name\(names)"))
        }
        if let component = self.hostNames.first(where: { $0.value == name })?.key { return .success((component, origin)) }
        // The component's own name, as the connector takes it (a script's `Host: ui`).
        if let component = self.components.first(where: { $0.lowercased() == name }) { return .success((component, origin)) }
        // Any other name (a DNS rebinding page's, another session's) is not ours to carry.
        return .failure(
            ProxyRefusal(stream: .unknownHost, "this port serves a relayctl session under its own host names\(names), not \(visibleText(hosts[0]))"))
    }

    static let loopbackNames: Set<String> = ["127.0.0.1", "localhost", "[::1]"]

    /// A request another page made (another site's, or another component's: a form, an image, a
    /// fetch, a websocket) is refused, signed in or not: the browser would attach the engineer's
    /// cookie to some of them. Only the host's own pages (`origin`), the address bar and tools
    /// without these headers get through.
    static func crossSite(_ head: HTTPRequestHead, origin own: String?) -> ProxyRefusal? {
        if let origin = head.headers.first(name: "origin"), origin.lowercased() != own {
            return ProxyRefusal(stream: .crossSiteRequest, "a page from \(visibleText(origin)) may not use this host; open it from the link relayctl printed")
        }
        switch head.headers.first(name: "sec-fetch-site")?.lowercased() {
        case nil, "same-origin", "none":
            return nil
        default:
            return ProxyRefusal(stream: .crossSiteRequest, "another page may not use this host; open it from the link relayctl printed")
        }
    }
}

public struct LocalAccessError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
