import NIOConcurrencyHelpers
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
/// header. Any other local user, and any web page the engineer visits, gets nothing through.
public final class LocalAccess: Sendable {
    public static let tokenHeader = "x-relayctl-token"
    public static let signInParameter = "relayctl-token"

    public let cluster: String
    /// Component names, in the order the engineer named them.
    public let components: [String]
    /// How much the port checks before a request goes on.
    public enum Checks: Sendable {
        /// relayctl's: the cookie or the script token, and only the port's own names.
        case engineer
        /// In-process, where the connector's own checks are what is tested: no sign-in, and a Host
        /// that is not one of the port's names goes on unchanged for the connector to judge.
        /// Other sites' pages are still refused.
        case conduit
    }
    public let checks: Checks
    var requiresSignIn: Bool { self.checks == .engineer }
    private let hostNames: [String: String]
    private let cookieSecret = SecureRandom.hex(32)
    private let scriptToken: String?
    /// One-time sign-in tokens not used yet, and the component each is for.
    private let links = NIOLockedValueBox<[String: String]>([:])

    /// - Throws: `LocalAccessError` when two names would share a host name.
    public init(cluster: String, components: [String], checks: Checks = .engineer, scriptToken: String? = nil) throws {
        self.cluster = cluster
        self.components = components
        self.checks = checks
        self.scriptToken = scriptToken
        var hosts: [String: String] = [:]
        for component in components {
            let host = "\(Self.label(component)).\(Self.label(cluster)).localhost"
            if let other = hosts.first(where: { $0.value == host })?.key {
                throw LocalAccessError("components \"\(other)\" and \"\(component)\" would share the host name \(host); open them in two sessions")
            }
            hosts[component] = host
        }
        self.hostNames = hosts
    }

    /// A name as one host-name label: lowercase, with `.` and `_` (allowed in our identifiers,
    /// not in a label) as `-`.
    static func label(_ name: String) -> String {
        String(name.lowercased().map { $0 == "." || $0 == "_" ? "-" : $0 })
    }

    public func hostName(of component: String) -> String { self.hostNames[component] ?? component }

    /// The component's address on the port, e.g. `http://ui.demo.localhost:8000/`.
    public func url(of component: String, port: Int) -> String { "http://\(self.hostName(of: component)):\(port)/" }

    /// A new one-time link that signs one browser in to the component's host.
    public func signInLink(for component: String, port: Int) -> String {
        guard self.requiresSignIn else { return self.url(of: component, port: port) }
        let token = SecureRandom.hex(16)
        self.links.withLockedValue { $0[token] = component }
        return "\(self.url(of: component, port: port))?\(Self.signInParameter)=\(token)"
    }

    /// The cookie that holds a signed-in browser, named for the port: browsers keep cookies per
    /// host but not per port, so two sessions on two ports must not overwrite each other's.
    static func cookieName(port: Int) -> String { "relayctl-\(port)" }

    public enum Decision: Equatable {
        /// Carry it to the component, with `Host` naming it and relayctl's own cookie and header removed.
        case forward(component: String, head: HTTPRequestHead)
        /// A one-time link was used: set the cookie and send the browser to the same address without the token.
        case signIn(location: String, setCookie: String)
        case refuse(ProxyRefusal)
    }

    public func decide(_ head: HTTPRequestHead, port: Int) -> Decision {
        let component: String
        switch self.route(head, port: port) {
        case .success(let name): component = name
        case .failure(let refusal):
            guard self.checks == .conduit, refusal.code == "unknown_host", self.components.count == 1 else { return .refuse(refusal) }
            if let refusal = self.crossSite(head, port: port) { return .refuse(refusal) }
            return .forward(component: self.components[0], head: head)
        }
        if let refusal = self.crossSite(head, port: port) { return .refuse(refusal) }
        var head = head
        let cookieName = Self.cookieName(port: port)
        if self.requiresSignIn {
            let (path, query) = Self.split(head.uri)
            if let token = query.first(where: { $0.name == Self.signInParameter })?.value {
                guard head.method == .GET || head.method == .HEAD, self.links.withLockedValue({ $0[token] == component ? $0.removeValue(forKey: token) : nil }) != nil
                else {
                    return .refuse(
                        ProxyRefusal(
                            .unauthorized, code: "sign_in_link_used",
                            message: "this sign-in link was used already or is not for \(self.hostName(of: component)); each link signs in one browser once. Press Enter in the terminal running relayctl for new links"))
                }
                let rest = query.filter { $0.name != Self.signInParameter }.map(\.text).joined(separator: "&")
                return .signIn(
                    location: rest.isEmpty ? path : "\(path)?\(rest)",
                    setCookie: "\(cookieName)=\(self.cookieSecret); Path=/; HttpOnly; SameSite=Strict")
            }
            let presented = head.headers[canonicalForm: "cookie"].flatMap { Self.cookies(in: String($0)) }.filter { $0.name == cookieName }.map(\.value)
                + head.headers[Self.tokenHeader]
            let secrets = [self.cookieSecret, self.scriptToken].compactMap { $0 }
            guard presented.contains(where: { value in secrets.contains { Self.same(value, $0) } }) else {
                let scripts = self.scriptToken == nil ? "" : ", or send the token from --local-token-file in header X-Relayctl-Token"
                return .refuse(
                    ProxyRefusal(
                        .unauthorized, code: "local_sign_in_required",
                        message: "this port carries a relayctl session and needs signing in: open the link relayctl printed (press Enter in its terminal for a new one)\(scripts)"))
            }
        }
        head.headers.remove(name: Self.tokenHeader)
        Self.removeCookie(named: cookieName, from: &head.headers)
        head.headers.replaceOrAdd(name: "host", value: component)
        return .forward(component: component, head: head)
    }

    // MARK: routing

    private func route(_ head: HTTPRequestHead, port: Int) -> Result<String, ProxyRefusal> {
        let hosts = head.headers["host"]
        guard hosts.count == 1 else {
            return .failure(ProxyRefusal(.badRequest, code: "bad_host", message: "a request needs exactly one Host header"))
        }
        // With this port or none (as curl and HTTP/1.0 tools may send); another port is another listener's.
        let host = hosts[0].lowercased()
        let name = host.hasSuffix(":\(port)") ? host.dropLast(":\(port)".count) : Substring(host)
        if Self.loopbackNames.contains(String(name)) {
            if self.components.count == 1 { return .success(self.components[0]) }
            return .failure(
                ProxyRefusal(
                    .notFound, code: "choose_component",
                    message: "this port carries several components; open each by its own name: \(self.components.map { self.url(of: $0, port: port) }.joined(separator: ", "))"))
        }
        if let component = self.hostNames.first(where: { $0.value == name })?.key { return .success(component) }
        // The component's own name, as the connector takes it (a script's `Host: ui`).
        if let component = self.components.first(where: { $0.lowercased() == name }) { return .success(component) }
        // Any other name (a DNS rebinding page's, another session's) is not ours to carry.
        return .failure(
            ProxyRefusal(
                .misdirectedRequest, code: "unknown_host",
                message: "this port serves \(self.components.map { self.url(of: $0, port: port) }.joined(separator: ", ")), not \(visibleText(hosts[0]))"))
    }

    static let loopbackNames: Set<String> = ["127.0.0.1", "localhost", "[::1]"]

    /// Whether an `Origin` is a page this port serves (under any of its names).
    func isOwn(origin: String, port: Int) -> Bool {
        let origin = origin.lowercased()
        guard origin.hasPrefix("http://"), origin.hasSuffix(":\(port)") else { return false }
        let host = origin.dropFirst("http://".count).dropLast(":\(port)".count)
        return Self.loopbackNames.contains(String(host)) || self.hostNames.values.contains(String(host))
    }

    /// A request another site's page made (a form, an image, a fetch, a websocket) is refused,
    /// signed in or not: the browser would attach the engineer's cookie to some of them.
    private func crossSite(_ head: HTTPRequestHead, port: Int) -> ProxyRefusal? {
        let origin = head.headers.first(name: "origin")
        if let origin, !self.isOwn(origin: origin, port: port) {
            return ProxyRefusal(
                .forbidden, code: "cross_site_request",
                message: "a page from \(visibleText(origin)) may not use this session; open the component from the link relayctl printed")
        }
        // `same-site` also covers other ports of localhost (another local web server's pages):
        // allowed only with an Origin of ours, checked above.
        switch head.headers.first(name: "sec-fetch-site")?.lowercased() {
        case "cross-site", "same-site" where origin == nil:
            return ProxyRefusal(
                .forbidden, code: "cross_site_request",
                message: "another site's page may not use this session; open the component from the link relayctl printed")
        default:
            return nil
        }
    }

    // MARK: parsing

    struct QueryItem: Equatable {
        var text: Substring
        var name: Substring { self.text.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).first ?? "" }
        var value: String { String(self.text.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).dropFirst().first ?? "") }
    }

    static func split(_ uri: String) -> (path: String, query: [QueryItem]) {
        guard let mark = uri.firstIndex(of: "?") else { return (uri, []) }
        let query = uri[uri.index(after: mark)...].split(separator: "&").map { QueryItem(text: $0) }
        return (String(uri[..<mark]), query)
    }

    static func cookies(in header: String) -> [(name: String, value: String)] {
        header.split(separator: ";").compactMap { pair in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else { return nil }
            return (parts[0].trimmedSpaces, parts[1].trimmedSpaces)
        }
    }

    /// The component never sees relayctl's cookie: its value would let the component (or anything
    /// it logs to) drive the engineer's port.
    static func removeCookie(named name: String, from headers: inout HTTPHeaders) {
        let values = headers[canonicalForm: "cookie"].map(String.init)
        guard values.contains(where: { $0.contains(name) }) else { return }
        headers.remove(name: "cookie")
        let kept = values.flatMap { $0.split(separator: ";") }.filter { pair in
            pair.split(separator: "=", maxSplits: 1).first.map { $0.trimmedSpaces != name } ?? true
        }.map { $0.trimmedSpaces }
        if !kept.isEmpty { headers.add(name: "cookie", value: kept.joined(separator: "; ")) }
    }

    /// Equal, in time that does not depend on where they differ.
    static func same(_ a: String, _ b: String) -> Bool {
        let a = Array(a.utf8), b = Array(b.utf8)
        guard a.count == b.count else { return false }
        return zip(a, b).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }
}

public struct LocalAccessError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

extension Substring {
    fileprivate var trimmedSpaces: String {
        String(self.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
