import ConfigKit
import Foundation
import RelayAPI
import RelayModel
import RelayStore
import TunnelCore

/// Access requests, sessions and tokens.
extension MissionControl {
    // MARK: access requests

    public func createRequest(_ body: CreateAccessRequest, by caller: TokenRecord) async throws -> AccessRequestRecord {
        let expert = body.expert ?? caller.name
        if caller.role == .expert && expert != caller.name {
            throw RelayError(.opsOnly, "experts ask for access for themselves only; an operator can ask on someone's behalf")
        }
        guard (1...self.settings.maxRequestSeconds).contains(body.durationSeconds) else {
            throw RelayError(.badRequest, "duration must be between 1 s and \(self.settings.maxRequestSeconds / 3600) h")
        }
        let reason = body.reason.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !reason.isEmpty, reason.count <= 500 else {
            throw RelayError(.badRequest, "a reason of 1 to 500 characters is required")
        }
        // The customer reads the reason in a terminal and approves on it: one plain line only.
        guard !hasControlCharacters(reason) else {
            throw RelayError(.badRequest, "the reason may not contain line breaks, tabs or other control characters")
        }
        guard let cluster = try await self.store.cluster(id: body.clusterID) else { throw Self.unknownCluster(body.clusterID) }
        let tokens = try await self.store.tokens()
        guard tokens.contains(where: { $0.name == expert && $0.role == .expert && $0.revokedAt == nil }) else {
            throw RelayError(.unknownExpert, "no valid expert token is named \"\(expert)\"; see relayctl tokens list")
        }
        let now = self.now
        var request = try await self.store.createRequest(
            AccessRequestRecord(
                id: 0, clusterID: cluster.id, expert: expert, reason: reason, role: body.role, durationSeconds: body.durationSeconds,
                state: .pending, createdAt: now, createdBy: Self.actor(caller), changedAt: now, changedBy: Self.actor(caller)))
        await self.audit(
            actor: Self.actor(caller), "request.create", cluster: cluster.id, subject: String(request.id),
            reason: "\(body.role.rawValue) for \(expert), \(body.durationSeconds) s: \(reason)")
        // The customer's last reported mode decides: `all` and `readOnly` approve at once; otherwise the
        // request waits for the customer (sent in the next heartbeat answer).
        if let mode = cluster.privacyMode, mode.approvesAutomatically {
            request = try await self.approve(request, by: "\(Self.automaticApproval)privacy mode \(mode.rawValue)", now: now)
        }
        return request
    }

    public func requests(for caller: TokenRecord, cluster: String?, states: Set<RequestState>?) async throws -> [AccessRequestRecord] {
        let all = try await self.store.requests(clusterID: cluster, states: states)
        return caller.role == .ops ? all : all.filter { $0.expert == caller.name }
    }

    public func revokeRequest(id: Int64, reason: String?, by caller: TokenRecord) async throws -> AccessRequestRecord {
        guard let request = try await self.store.request(id: id), caller.role == .ops || request.expert == caller.name else {
            throw RelayError(.unknownRequest, "no access request \(id) that you may see; see relayctl requests list")
        }
        guard !request.state.isFinal else {
            throw RelayError(.requestEnded, AccessPolicy.endReason(of: request, now: self.now) ?? "request \(id) has ended")
        }
        var revoked = request
        revoked.state = .revoked
        revoked.changedAt = self.now
        revoked.changedBy = Self.actor(caller)
        revoked.endReason = reason.map { String($0.prefix(500)) }
        guard try await self.store.updateRequest(revoked, expecting: request.state) else {
            throw RelayError(.requestChanged, "request \(id) changed meanwhile; list it and try again")
        }
        await self.accessChanged()
        await self.audit(actor: Self.actor(caller), "request.revoke", cluster: request.clusterID, subject: String(id), reason: reason)
        return revoked
    }

    /// Approved requests past their window become `expired` (run by every relay node's reconciler).
    /// - Parameter now: the reconciler passes the instant it decides everything else of its tick on,
    ///   so a session is never ended as expired while its request still reads approved.
    public func expireDue(now: Date? = nil) async throws -> [AccessRequestRecord] {
        let now = now ?? self.now
        var expired: [AccessRequestRecord] = []
        let pendingTTL = TimeInterval(self.settings.pendingRequestTTLSeconds)
        for request in try await self.store.requests(clusterID: nil, states: [.approved, .pending]) {
            let due = request.state == .approved ? !request.isActive(at: now) : now >= request.createdAt.addingTimeInterval(pendingTTL)
            guard due else { continue }
            var ended = request
            ended.state = .expired
            ended.changedAt = now
            ended.changedBy = "relay"
            ended.endReason = request.state == .approved ? "expired" : "the customer did not decide within \(Self.spoken(seconds: self.settings.pendingRequestTTLSeconds))"
            if try await self.store.updateRequest(ended, expecting: request.state) {
                await self.audit(
                    actor: "relay", "request.expire", cluster: request.clusterID, subject: String(request.id),
                    reason: request.state == .pending ? ended.endReason : nil)
                expired.append(ended)
            }
        }
        return expired
    }

    /// "24 h", "90 min", "45 s".
    static func spoken(seconds: Int64) -> String {
        if seconds % 3600 == 0 { return "\(seconds / 3600) h" }
        if seconds % 60 == 0 { return "\(seconds / 60) min" }
        return "\(seconds) s"
    }

    /// Whether the cluster's flag is set now.
    public func flag(cluster: String) async throws -> Bool {
        AccessPolicy.flag(requests: try await self.store.requests(clusterID: cluster, states: [.approved]), now: self.now)
    }

    // MARK: sessions

    /// Decides a session handshake; a denial is audited and thrown as a 403 that says what to do next.
    public func authorizeSession(caller: TokenRecord, cluster: String, role: AccessRole?) async throws -> SessionGrant {
        let requests = try await self.store.requests(clusterID: cluster, states: nil)
        switch AccessPolicy.authorizeSession(caller: caller, cluster: cluster, role: role, requests: requests, now: self.now) {
        case .success(let grant):
            return grant
        case .failure(let denial):
            if case .noRequest = denial, try await self.store.cluster(id: cluster) == nil {
                await self.audit(actor: Self.actor(caller), "session.open", cluster: nil, denied: "unknown cluster")
                throw Self.unknownCluster(cluster)
            }
            await self.audit(actor: Self.actor(caller), "session.open", cluster: cluster, denied: denial.description)
            throw RelayError(denial.code, denial.description)
        }
    }

    public func sessionStarted(_ session: SessionRecord) async {
        do {
            try await self.store.createSession(session)
        } catch {
            self.logger.error("session record failed", metadata: ["session": "\(session.id)", "error": "\(error)"])
        }
        await self.audit(
            actor: "expert:\(session.expert)", "session.start", cluster: session.clusterID, subject: session.id,
            reason: "component \(session.component), role \(session.role.rawValue), request \(session.requestID)")
    }

    public func sessionEnded(_ session: SessionRecord) async {
        do {
            try await self.store.updateSession(session)
        } catch {
            self.logger.error("session record failed; kept to write again", metadata: ["session": "\(session.id)", "error": "\(error)"])
            self.keepUnwritten(sessions: [session])
        }
        await self.audit(
            actor: "expert:\(session.expert)", "session.end", cluster: session.clusterID, subject: session.id,
            reason: "\(session.endReason ?? "ended"); \(session.requests) requests, \(session.bytesIn) bytes in, \(session.bytesOut) bytes out")
    }

    public func killSession(id: String, by caller: TokenRecord) async throws -> SessionRecord {
        try Self.requireOps(caller)
        guard let session = try await self.store.requestKill(sessionID: id, by: Self.actor(caller)) else {
            throw RelayError(.unknownSession, "no live session \(id); see relayctl sessions list")
        }
        await self.accessChanged()
        await self.audit(actor: Self.actor(caller), "session.kill", cluster: session.clusterID, subject: id)
        return session
    }

    // MARK: tokens

    public func createToken(_ body: CreateTokenRequest, by caller: TokenRecord?) async throws -> TokenCreated {
        if let caller { try Self.requireOps(caller) }
        guard Identifier.isValid(body.name) else {
            throw RelayError(.badRequest, "token name must be \(Identifier.rule)")
        }
        if let ttl = body.ttlSeconds, ttl < 1 {
            throw RelayError(.badRequest, "ttl must be at least 1 s")
        }
        let now = self.now
        let secret = IssuedToken.api.generate()
        let actor = caller.map(Self.actor) ?? "relay"
        let record = TokenRecord(
            name: body.name, role: body.role, tokenHash: self.hasher.hash(secret), createdAt: now, createdBy: actor,
            expiresAt: body.ttlSeconds.map { now.addingTimeInterval(TimeInterval($0)) })
        do {
            try await self.store.createToken(record)
        } catch StoreError.conflict {
            throw RelayError(.tokenExists, "a token named \"\(body.name)\" exists; pick another name or revoke it first")
        }
        await self.audit(actor: actor, "token.create", subject: body.name, reason: "role \(body.role.rawValue)")
        return TokenCreated(token: TokenView(record), secret: secret)
    }

    public func revokeToken(name: String, by caller: TokenRecord) async throws -> TokenView {
        try Self.requireOps(caller)
        guard let token = try await self.store.revokeToken(name: name, by: Self.actor(caller), at: self.now) else {
            throw RelayError(.unknownToken, "no token named \"\(name)\"; see relayctl tokens list")
        }
        await self.accessChanged()
        await self.audit(actor: Self.actor(caller), "token.revoke", subject: name)
        return TokenView(token)
    }

    /// On first start (no tokens at all), an ops token named `bootstrap` written to `path` (0600), so
    /// that the operator can create their own tokens and then revoke it.
    public func createBootstrapToken(at path: String) async throws -> Bool {
        guard try await self.store.tokens().isEmpty else { return false }
        let created: TokenCreated
        do {
            created = try await self.createToken(CreateTokenRequest(name: "bootstrap", role: .ops, ttlSeconds: nil), by: nil)
        } catch let refusal as RelayError where refusal.code == .tokenExists {
            return false  // another relay node sharing the store started first and made it
        }
        guard try PrivateFile.create(path, with: Data((created.secret + "\n").utf8)) else {
            throw TokenKeyError(path: path, problem: "exists already; move it away (the relay writes a new one only on first start)")
        }
        return true
    }
}
