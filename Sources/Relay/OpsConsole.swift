import Foundation
import NIOConcurrencyHelpers
import NIOHTTP1
import RelayAPI
import RelayModel
import RelayStore
import TunnelCore

/// The operators' pages under `/ops/` on the relay's TLS listener: a sign-in form that takes an ops
/// token, and the status page (`StatusPage`). A browser keeps only a random session cookie
/// (HttpOnly, Secure, SameSite=Strict, path /ops); the token stays in this node's memory for 8
/// hours and is checked again on every page, so a revoked token signs its browsers out. Scripts
/// may send `Authorization: Bearer` instead.
final class OpsConsole: Sendable {
    static let cookie = "relay_ops"
    static let lifetime: TimeInterval = 8 * 3600
    static let maxSessions = 1000

    private let control: MissionControl
    private let views: ClusterViews
    private let sessions = NIOLockedValueBox<[String: (token: String, expires: Date)]>([:])

    init(control: MissionControl, registry: TunnelRegistry) {
        self.control = control
        self.views = ClusterViews(control: control, registry: registry)
    }

    /// - Parameter fetchSite: the browser's `Sec-Fetch-Site`: a form posted from another site is refused.
    func handle(_ request: APIRequest, cookies: String?, fetchSite: String? = nil) async -> APIResponse {
        if request.method == .POST, let site = fetchSite, site != "same-origin", site != "none" {
            return Self.page(.forbidden, StatusPage.signIn(problem: "a form from another site may not sign in or out here"))
        }
        do {
            switch (request.method, request.path) {
            case (.GET, "/ops"), (.GET, "/ops/"):
                return Self.redirect("/ops/status")
            case (.GET, "/ops/sign-in"):
                return Self.page(.ok, StatusPage.signIn(problem: nil))
            case (.POST, "/ops/sign-in"):
                // A browser signing in again leaves its earlier session behind: end it.
                if let id = Self.sessionID(cookies) { self.sessions.withLockedValue { _ = $0.removeValue(forKey: id) } }
                return try await self.signIn(request)
            case (.POST, "/ops/sign-out"):
                if let id = Self.sessionID(cookies) { self.sessions.withLockedValue { _ = $0.removeValue(forKey: id) } }
                var answer = Self.redirect("/ops/sign-in")
                answer.headers.append(("set-cookie", "\(Self.cookie)=; Path=/ops; HttpOnly; Secure; SameSite=Strict; Max-Age=0"))
                return answer
            case (.GET, "/ops/status"):
                guard let token = self.token(request, cookies: cookies) else { return Self.redirect("/ops/sign-in") }
                let caller = try await self.control.authenticateUser(bearer: token, action: "ops status page", source: request.source)
                guard caller.role == .ops else { throw MissionControl.opsOnly }
                return Self.page(.ok, StatusPage.render(try await self.views.status()))
            default:
                return Self.page(.notFound, StatusPage.signIn(problem: "no such page; the status page is /ops/status"))
            }
        } catch let error as RelayError where error.code == .unauthorized || error.code == .opsOnly {
            // A revoked or expired token: sign in again.
            if let id = Self.sessionID(cookies) { self.sessions.withLockedValue { _ = $0.removeValue(forKey: id) } }
            return Self.page(error.code.status, StatusPage.signIn(problem: error.message))
        } catch {
            let refusal = (error as? RelayError) ?? (error as? StoreUnavailable).map { .storeUnavailable($0) }
                ?? RelayError(.internalError, "the relay failed to answer; try again")
            return Self.page(refusal.code.status, StatusPage.signIn(problem: refusal.message))
        }
    }

    private func signIn(_ request: APIRequest) async throws -> APIResponse {
        let token = Self.formValue("token", in: request.body) ?? ""
        let caller = try await self.control.authenticateUser(bearer: token, action: "ops status page sign-in", source: request.source)
        guard caller.role == .ops else {
            self.control.metrics.authFailed(.role)
            await self.control.deny(caller: caller, "ops status page sign-in", source: request.source, reason: "ops_only: not an ops token")
            throw MissionControl.opsOnly
        }
        let id = SecureRandom.hex(32)
        let now = self.control.now
        self.sessions.withLockedValue { sessions in
            sessions = sessions.filter { $0.value.expires > now }
            if sessions.count >= Self.maxSessions, let oldest = sessions.min(by: { $0.value.expires < $1.value.expires }) {
                sessions[oldest.key] = nil
            }
            sessions[id] = (token, now.addingTimeInterval(Self.lifetime))
        }
        await self.control.audit(actor: "ops:\(caller.name)", "ops.sign-in", subject: "status page")
        var answer = Self.redirect("/ops/status")
        answer.headers.append(("set-cookie", "\(Self.cookie)=\(id); Path=/ops; HttpOnly; Secure; SameSite=Strict; Max-Age=\(Int(Self.lifetime))"))
        return answer
    }

    private func token(_ request: APIRequest, cookies: String?) -> String? {
        if let bearer = request.bearer { return bearer }
        guard let id = Self.sessionID(cookies) else { return nil }
        let now = self.control.now
        return self.sessions.withLockedValue { sessions in
            guard let session = sessions[id], session.expires > now else { return nil }
            return session.token
        }
    }

    static func sessionID(_ cookies: String?) -> String? {
        for pair in (cookies ?? "").split(separator: ";") {
            let parts = pair.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if parts.count == 2, parts[0] == Self.cookie, !parts[1].isEmpty { return parts[1] }
        }
        return nil
    }

    /// One field of an `application/x-www-form-urlencoded` body.
    static func formValue(_ name: String, in body: Data) -> String? {
        for pair in String(decoding: body, as: UTF8.self).split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.first == name else { continue }
            return (parts.count == 2 ? parts[1] : "").replacingOccurrences(of: "+", with: " ").removingPercentEncoding
        }
        return nil
    }

    static func page(_ status: HTTPResponseStatus, _ html: String) -> APIResponse {
        var answer = APIResponse(status: status, body: Data(html.utf8), errorCode: nil)
        answer.contentType = "text/html; charset=utf-8"
        // No script runs here at all; nothing may frame the page or learn where it was.
        answer.headers = [
            ("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
            ("x-frame-options", "DENY"), ("referrer-policy", "no-referrer"), ("x-content-type-options", "nosniff"),
        ]
        return answer
    }

    static func redirect(_ location: String) -> APIResponse {
        var answer = Self.page(.seeOther, "")
        answer.headers.append(("location", location))
        return answer
    }
}
