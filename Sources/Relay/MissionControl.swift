import ConfigKit
import Foundation
import Logging
import NIOConcurrencyHelpers
import RelayAPI
import RelayModel
import RelayStore
import TunnelCore

/// The relay's business rules over the store: enrollment, registration, heartbeats, access requests,
/// tokens, sessions and the audit trail. No sockets here; `RelayAPIRouter` and `RelayServer` call it.
public final class MissionControl: Sendable {
    public struct Settings: Sendable {
        public var enrollmentTTLSeconds: Int64 = 86_400
        /// A pending request not decided within this long expires.
        public var pendingRequestTTLSeconds: Int64 = 86_400
        /// Longest access request anyone may ask for.
        public var maxRequestSeconds: Int64 = 7 * 86_400
        /// Sent as the next heartbeat interval (nil: connectors use their own configuration).
        public var heartbeatIntervalSeconds: Int?
        /// This relay node's name, recorded on the sessions it carries.
        public var nodeName: String
        /// Audit records older than this are pruned (`relayctl audit export` keeps them before).
        public var auditRetentionSeconds: Int64 = 400 * 86_400
        /// While a request of the cluster waits for the customer, heartbeats come at least this
        /// often (docs/API.md), so the customer's decision reaches the engineer within seconds.
        public var approvalHeartbeatSeconds = 5
        /// Sent in heartbeat answers: connectors spread their redials over this window after a
        /// tunnel drops (`reconnect_spread`).
        public var reconnectSpreadMilliseconds: Int64 = 15_000
        /// A relay node not seen for this long is not live (`node_ttl`).
        public var nodeTTLMilliseconds: Int64 = 30_000

        public init(nodeName: String) {
            self.nodeName = nodeName
        }
    }

    public let store: any Store
    /// This node's Prometheus metrics (`/metrics` on the admin listener).
    public let metrics: RelayMetrics
    public let settings: Settings
    let hasher: TokenHasher
    let clock: @Sendable () -> Date
    let logger: Logger
    private let fixedTunnelURLs = NIOLockedValueBox<[String]>([])
    private let liveTunnelURLs = NIOLockedValueBox<[String]>([])
    private let denials = NIOLockedValueBox(DenialAggregator())
    /// Heartbeats' time and health, written behind (`flushLiveness`).
    private let liveness = NIOLockedValueBox(NodeLiveness())
    private let lastPrune = NIOLockedValueBox<Date?>(nil)
    private let reconcileObservers = NIOLockedValueBox<[@Sendable () -> Void]>([])
    private let unwritten = NIOLockedValueBox(UnwrittenRecords())

    /// The tunnel URLs sent to connectors in heartbeat answers: a fixed list when one is set (relay.yaml
    /// `tunnel_urls`), else every live relay node's, as `RelayNodePresence` last read them from the store.
    public var tunnelURLs: [String] {
        get {
            let fixed = self.fixedTunnelURLs.withLockedValue { $0 }
            return fixed.isEmpty ? self.liveTunnelURLs.withLockedValue { $0 } : fixed
        }
        set { self.fixedTunnelURLs.withLockedValue { $0 = newValue } }
    }

    /// The live relay nodes' tunnel URLs (`RelayNodePresence`).
    func setLiveTunnelURLs(_ urls: [String]) {
        self.liveTunnelURLs.withLockedValue { $0 = urls }
    }

    /// - Parameter metrics: where this node's figures go; every store call is timed into it.
    public init(
        store: any Store, hasher: TokenHasher, settings: Settings, clock: @escaping @Sendable () -> Date = { Date() }, logger: Logger,
        metrics: RelayMetrics = RelayMetrics()
    ) {
        self.metrics = metrics
        self.store = MeasuredStore(base: store, metrics: metrics)
        self.hasher = hasher
        self.settings = settings
        self.clock = clock
        self.logger = logger
    }

    public var now: Date { self.clock() }

    /// Calls `observer` whenever access changes on this node (a request approved or ended, a session
    /// killed, a token revoked, a tunnel attached), so that this node's reconciler acts at once and
    /// knows what is in force; other nodes hear of it from the store (`accessChanged`), or at their
    /// next poll of it.
    func onReconcileNeeded(_ observer: @escaping @Sendable () -> Void) {
        self.reconcileObservers.withLockedValue { $0.append(observer) }
    }

    func reconcileNow() {
        for observer in self.reconcileObservers.withLockedValue({ $0 }) { observer() }
    }

    /// Access changed here (a request decided or ended, a token revoked, a session killed): this
    /// node's reconciler acts at once, and every other node sharing the store is told to (NOTIFY).
    func accessChanged() async {
        self.reconcileNow()
        await self.store.announceAccessChange()
    }

    /// One answer for every credential problem (unknown, wrong cluster, revoked, expired, malformed),
    /// so a caller learns nothing about which part was wrong.
    public static let unauthorized = RelayError(.unauthorized, "invalid credentials; check the configured credential or token")

    // MARK: authentication

    /// The valid API token presented as `Bearer`, or a 401 (audited as `action`).
    public func authenticateUser(bearer: String?, action: String, cluster: String? = nil, source: String? = nil) async throws -> TokenRecord {
        if let bearer, IssuedToken.api.isWellFormed(bearer), let token = try await self.store.token(hash: self.hasher.hash(bearer)),
            token.isValid(at: self.now)
        {
            return token
        }
        self.metrics.authFailed(.apiToken)
        await self.denyAnonymous(action, source: source, cluster: cluster, reason: "invalid, expired or revoked token")
        throw Self.unauthorized
    }

    /// The node credential presented as `Bearer`, if it belongs to exactly this cluster and node.
    public func authenticateNode(
        bearer: String?, cluster: String?, node: String?, action: String, source: String? = nil
    ) async throws -> CredentialRecord {
        try await self.authenticateNode(bearer: bearer, cluster: cluster, node: node, action: action, source: source) {
            try await self.store.credential(hash: $0)
        }
    }

    /// As above, the credential read by `lookup` (given its hash): a heartbeat reads it with the rest.
    func authenticateNode(
        bearer: String?, cluster: String?, node: String?, action: String, source: String?,
        lookup: (String) async throws -> CredentialRecord?
    ) async throws -> CredentialRecord {
        if let bearer, IssuedToken.credential.isWellFormed(bearer),
            let credential = try await lookup(self.hasher.hash(bearer)), credential.authenticates(cluster: cluster, node: node)
        {
            return credential
        }
        self.metrics.authFailed(.connectorCredential)
        await self.denyAnonymous(
            action, source: source, cluster: cluster.flatMap { Identifier.isValid($0) ? $0 : nil },
            subject: node.flatMap { Identifier.isValid($0) ? $0 : nil }, reason: "invalid node credential")
        throw Self.unauthorized
    }

    static let opsOnly = RelayError(.opsOnly, "this needs an ops token; ask an operator")

    public static func requireOps(_ caller: TokenRecord) throws {
        guard caller.role == .ops else { throw Self.opsOnly }
    }

    static func actor(_ token: TokenRecord) -> String { "\(token.role.rawValue):\(token.name)" }

    // MARK: enrollment and registration

    public func addCluster(_ body: CreateClusterRequest, by caller: TokenRecord) async throws -> EnrollmentResponse {
        try Self.requireOps(caller)
        guard Identifier.isValid(body.id) else {
            throw RelayError(.badRequest, "cluster ID must be \(Identifier.rule)")
        }
        let now = self.now
        let (enrollment, token) = self.makeEnrollment(cluster: body.id, by: caller, now: now)
        do {
            try await self.store.createCluster(
                ClusterRecord(id: body.id, description: body.description, createdAt: now, createdBy: Self.actor(caller)), enrollment: enrollment)
        } catch StoreError.conflict {
            throw RelayError(.clusterExists, "cluster \"\(body.id)\" already exists; for another node run relayctl clusters enroll \(body.id)")
        }
        await self.audit(actor: Self.actor(caller), "cluster.add", cluster: body.id)
        return EnrollmentResponse(clusterID: body.id, enrollmentToken: token, expiresAt: enrollment.expiresAt)
    }

    /// A new one-time enrollment token for an existing cluster (another node, or a reinstalled one).
    public func enroll(cluster: String, by caller: TokenRecord) async throws -> EnrollmentResponse {
        try Self.requireOps(caller)
        let (enrollment, token) = self.makeEnrollment(cluster: cluster, by: caller, now: self.now)
        do {
            try await self.store.addEnrollment(enrollment)
        } catch StoreError.notFound {
            throw Self.unknownCluster(cluster)
        }
        await self.audit(actor: Self.actor(caller), "cluster.enroll", cluster: cluster)
        return EnrollmentResponse(clusterID: cluster, enrollmentToken: token, expiresAt: enrollment.expiresAt)
    }

    private func makeEnrollment(cluster: String, by caller: TokenRecord, now: Date) -> (EnrollmentRecord, String) {
        let token = IssuedToken.enrollment.generate()
        let record = EnrollmentRecord(
            tokenHash: self.hasher.hash(token), clusterID: cluster, createdAt: now, createdBy: Self.actor(caller),
            expiresAt: now.addingTimeInterval(TimeInterval(self.settings.enrollmentTTLSeconds)))
        return (record, token)
    }

    static func unknownCluster(_ id: String) -> RelayError {
        RelayError(.unknownCluster, "cluster \"\(id)\" is not known to this relay; see relayctl clusters list")
    }

    public func register(_ body: RegisterRequest, source: String? = nil) async throws -> RegisterResponse {
        guard Identifier.isValid(body.nodeID) else {
            throw RelayError(.badRequest, "node ID must be \(Identifier.rule)")
        }
        let now = self.now
        let credential = IssuedToken.credential.generate()
        let outcome: RegistrationOutcome
        if IssuedToken.enrollment.isWellFormed(body.enrollmentToken) {
            outcome = try await self.store.register(
                enrollmentHash: self.hasher.hash(body.enrollmentToken),
                credential: CredentialRecord(credentialHash: self.hasher.hash(credential), clusterID: "", nodeID: body.nodeID, createdAt: now),
                now: now)
        } else {
            outcome = .unknownToken
        }
        switch outcome {
        case .registered(let cluster):
            await self.audit(actor: "node:\(cluster)/\(body.nodeID)", "node.register", cluster: cluster, subject: body.nodeID)
            return RegisterResponse(clusterID: cluster, nodeID: body.nodeID, credential: credential)
        case .unknownToken:
            await self.denyAnonymous("node.register", source: source, subject: body.nodeID, reason: "unknown enrollment token")
            self.metrics.authFailed(.enrollment)
            throw RelayError(.enrollmentInvalid, "this enrollment token is not valid; ask the vendor's operator for a new one (relayctl clusters enroll CLUSTER)")
        case .alreadyUsed(let at):
            await self.denyAnonymous("node.register", source: source, subject: body.nodeID, reason: "enrollment token already used")
            self.metrics.authFailed(.enrollment)
            throw RelayError(.enrollmentUsed, "this enrollment token was already used at \(Timestamp.text(at)); each token registers one node once, ask for a new one")
        case .expired(let at):
            await self.denyAnonymous("node.register", source: source, subject: body.nodeID, reason: "enrollment token expired")
            self.metrics.authFailed(.enrollment)
            throw RelayError(.enrollmentExpired, "this enrollment token expired at \(Timestamp.text(at)); ask for a new one")
        }
    }

    // MARK: heartbeat

    /// One heartbeat, authenticated by the node credential `bearer`. Usually one read of the store
    /// and no write (`NodeLiveness`).
    public func heartbeat(_ body: HeartbeatRequest, bearer: String?, source: String? = nil) async throws -> HeartbeatResponse {
        let now = self.now
        // Requests ended in the last day, at most 50: what a connector whose tunnel was down missed.
        let (endedSince, endedLimit) = (now.addingTimeInterval(-86_400), 50)
        var view: HeartbeatView?
        let credential = try await self.authenticateNode(
            bearer: bearer, cluster: body.clusterID, node: body.nodeID, action: "heartbeat", source: source
        ) { hash in
            let read = try await self.store.heartbeatView(
                credentialHash: hash, clusterID: body.clusterID, nodeID: body.nodeID, endedSince: endedSince, endedLimit: endedLimit)
            view = read
            return read.credential
        }
        let cluster = credential.clusterID
        let nodeActor = "node:\(cluster)/\(credential.nodeID)"
        var ended = view?.ended ?? []
        var requests = view?.open ?? []
        if !body.decisions.isEmpty {
            for decision in body.decisions { try await self.apply(decision, cluster: cluster, now: now) }
            requests = try await self.store.requests(clusterID: cluster, states: [.pending, .approved])
            ended = try await self.store.endedRequests(clusterID: cluster, since: endedSince, limit: endedLimit)
        }

        let mode = body.privacy.mode
        if mode.approvesAutomatically {
            for (index, request) in requests.enumerated() where request.state == .pending {
                requests[index] = try await self.approve(request, by: "\(Self.automaticApproval)privacy mode \(mode.rawValue)", now: now)
            }
        }
        let flag = mode != .disabled && AccessPolicy.flag(requests: requests, now: now)
        let encoder = APIJSON.encoder()
        let node = NodeRecord(
            clusterID: cluster, nodeID: credential.nodeID, sourceType: String(body.sourceType.prefix(64)),
            connectorVersion: String(body.connectorVersion.prefix(64)), privacyMode: mode,
            privacyJSON: String(decoding: try encoder.encode(body.privacy), as: UTF8.self),
            healthJSON: try body.health.map { String(decoding: try encoder.encode($0), as: UTF8.self) } ?? "{}",
            lastHeartbeatAt: now, registeredAt: now, remoteUIRequested: flag)
        // Decided against the store as read with this heartbeat: what another relay node wrote counts.
        let previous: NodeRecord?
        if NodeLiveness.changesOnlyLiveness(node, stored: view?.node, clusterMode: view?.clusterMode) {
            self.liveness.withLockedValue { $0.keep(node) }
            previous = view?.node
        } else {
            previous = try await self.store.recordHeartbeat(node)
            self.liveness.withLockedValue { $0.written(node) }
        }
        if previous?.privacyMode != mode {
            await self.audit(actor: nodeActor, "heartbeat.mode", cluster: cluster, subject: credential.nodeID, reason: "privacy mode \(mode.rawValue)")
        }
        if (previous?.remoteUIRequested ?? false) != flag {
            await self.audit(
                actor: "relay", "heartbeat.flag", cluster: cluster, subject: credential.nodeID,
                reason: flag ? "remote-UI flag set" : "remote-UI flag cleared")
        }
        let active = requests.filter { $0.isActive(at: now) }
        // What waits for the customer: pending requests, and in approvedOnly also those the relay
        // approved on its own under an earlier mode (the customer decides them now).
        let waiting = mode.approvesAutomatically || mode == .disabled
            ? [] : requests.filter { $0.state == .pending || ($0.isActive(at: now) && $0.changedBy.hasPrefix(Self.automaticApproval)) }
        var interval = self.settings.heartbeatIntervalSeconds
        if !waiting.isEmpty { interval = min(interval ?? Int.max, self.settings.approvalHeartbeatSeconds) }
        // Approved requests past their window count as ended now, whether or not the reconciler
        // has marked them yet: the connector ends their sessions with the real reason.
        let lapsed = requests.filter { $0.state == .approved && !$0.isActive(at: now) }
        ended += lapsed
        return HeartbeatResponse(
            remoteUIRequested: flag, websocketURLs: self.tunnelURLs, nextHeartbeatSeconds: interval,
            pendingApprovals: waiting.map(PendingApproval.init), activeRole: active.map(\.role).max(),
            endedRequests: ended.map {
                EndedAccessRequest(
                    requestID: $0.id, expert: $0.expert, state: $0.state == .approved ? RequestState.expired.rawValue : $0.state.rawValue,
                    reason: AccessPolicy.endReason(of: $0, now: now) ?? $0.state.rawValue)
            }, reconnectSpreadMilliseconds: self.settings.reconnectSpreadMilliseconds)
    }

    /// Approvals the relay gave on its own (modes `all`, `readOnly`) are recorded as by this prefix.
    static let automaticApproval = "auto:"

    private func apply(_ decision: ApprovalDecision, cluster: String, now: Date) async throws {
        let customer = "customer:\(String(decision.by.prefix(64)))@\(cluster)"
        let reason = decision.reason.map { String($0.prefix(500)) }
        // A revocation ends an approved (or still pending) request; approve and reject decide a
        // pending one, or one the relay approved on its own (the customer's mode now asks them).
        let request = try await self.store.request(id: decision.requestID)
        let automatic = request.map { $0.state == .approved && $0.changedBy.hasPrefix(Self.automaticApproval) } ?? false
        let allowed: Set<RequestState> = decision.verdict == .revoke || automatic ? [.pending, .approved] : [.pending]
        // Already revoked on the customer's word (the connector said so on its control stream first).
        if decision.verdict == .revoke, let request, request.clusterID == cluster, request.state == .revoked { return }
        guard let request, request.clusterID == cluster, allowed.contains(request.state) else {
            await self.audit(
                actor: customer, "request.\(decision.verdict.rawValue)", cluster: cluster, subject: String(decision.requestID),
                denied: decision.verdict == .revoke ? "not an open request of this cluster" : "not a pending request of this cluster")
            return
        }
        switch decision.verdict {
        case .revoke:
            try await self.end(request, as: .revoked, by: customer, reason: reason, now: now)
        case .approve where request.state == .approved:
            // Confirmed: the customer's approval now, its window unchanged.
            var confirmed = request
            confirmed.changedAt = now
            confirmed.changedBy = customer
            if try await self.store.updateRequest(confirmed, expecting: .approved) {
                await self.audit(actor: customer, "request.approve", cluster: cluster, subject: String(request.id), reason: "confirmed an automatic approval")
            }
        case .approve:
            _ = try await self.approve(request, by: customer, now: now)
        case .reject:
            try await self.end(request, as: .rejected, by: customer, reason: reason, now: now)
        }
    }

    /// The customer's connector ended an access request's grant (a kill, an idle or length limit,
    /// a revocation): the request is revoked here too, with that reason, so no later session is
    /// opened under it. Only a request of the connector's own cluster and expert.
    func customerEnded(request id: Int64, expert: String, cluster: String, node: String, by: String?, reason: String) async {
        do {
            guard let request = try await self.store.request(id: id), request.clusterID == cluster, request.expert == expert,
                request.state == .approved || request.state == .pending
            else { return }
            let actor = by.map { "customer:\(String($0.prefix(64)))@\(cluster)" } ?? "connector:\(cluster)/\(node)"
            try await self.end(request, as: .revoked, by: actor, reason: String(reason.prefix(500)), now: self.now)
        } catch {
            self.logger.error("cannot record the customer's end of a request", metadata: ["request": "\(id)", "error": "\(error)"])
        }
    }

    /// Ends a request on the customer's word (compare and set on the state it was read in), audited.
    private func end(_ request: AccessRequestRecord, as state: RequestState, by: String, reason: String?, now: Date) async throws {
        var ended = request
        ended.state = state
        ended.changedAt = now
        ended.changedBy = by
        ended.endReason = reason
        if try await self.store.updateRequest(ended, expecting: request.state) {
            await self.accessChanged()
            await self.audit(
                actor: by, state == .revoked ? "request.revoke" : "request.reject", cluster: request.clusterID, subject: String(request.id), reason: reason)
        }
    }

    public func approve(_ request: AccessRequestRecord, by: String, now: Date) async throws -> AccessRequestRecord {
        var approved = request
        approved.state = .approved
        approved.changedAt = now
        approved.changedBy = by
        approved.approvedAt = now
        approved.expiresAt = now.addingTimeInterval(TimeInterval(request.durationSeconds))
        guard try await self.store.updateRequest(approved, expecting: .pending) else {
            // Someone else decided first (a heartbeat's automatic approval, say): what is stored is the answer.
            return try await self.store.request(id: request.id) ?? request
        }
        await self.accessChanged()
        await self.audit(actor: by, "request.approve", cluster: request.clusterID, subject: String(request.id))
        return approved
    }

    // MARK: audit

    /// Appends one audit record. A store failure is logged, not thrown: the caller's answer stands.
    /// Text that callers control is capped and escaped (`AuditText`).
    func audit(
        actor: String, _ action: String, cluster: String? = nil, subject: String? = nil, denied: String? = nil, reason: String? = nil
    ) async {
        let record = AuditRecord(
            time: self.now, actor: AuditText.clean(actor) ?? "", action: AuditText.clean(action) ?? "", clusterID: AuditText.clean(cluster),
            subject: AuditText.clean(subject), outcome: denied == nil ? .ok : .denied, reason: AuditText.clean(denied ?? reason),
            requestID: RequestID.current)
        do {
            try await self.store.appendAudit([record])
        } catch {
            self.logger.error("audit write failed; kept to write again", metadata: ["action": "\(action)", "error": "\(error)"])
            self.keepUnwritten(audit: [record])
        }
        if let denied {
            self.logger.notice(
                "denied",
                metadata: ["actor": "\(record.actor)", "action": "\(record.action)", "reason": "\(AuditText.clean(denied) ?? "")",
                           "request_id": "\(record.requestID ?? "-")"])
        }
    }

    /// A refusal of a caller who did not authenticate: recorded at once the first time in a minute
    /// per source, action and reason, then counted (`DenialAggregator`).
    func denyAnonymous(_ action: String, source: String?, cluster: String? = nil, subject: String? = nil, reason: String) async {
        await self.deny(actor: "anonymous", action, source: source, cluster: cluster, subject: subject, reason: reason)
    }

    /// A refusal of an authenticated caller (an expert calling an ops endpoint, a bad request):
    /// audited like anonymous ones, folded per caller, action and reason per minute.
    public func deny(caller: TokenRecord, _ action: String, source: String?, reason: String) async {
        await self.deny(actor: Self.actor(caller), action, source: source, reason: reason)
    }

    private func deny(actor: String, _ action: String, source: String?, cluster: String? = nil, subject: String? = nil, reason: String) async {
        let source = source ?? "unknown"
        let (first, summaries) = self.denials.withLockedValue {
            $0.count(DenialKey(source: source, action: action, reason: reason, actor: actor), at: self.now)
        }
        await self.writeDenialSummaries(summaries)
        if let first {
            await self.audit(actor: actor, first.action, cluster: cluster, subject: subject, denied: "\(first.reason) (from \(first.source))")
        }
    }

    /// Writes the time and health of heartbeats kept in memory (the reconciler, every tick, and the
    /// store before it closes): a crash loses at most one reconcile interval of them.
    public func flushLiveness() async throws {
        let records = self.liveness.withLockedValue { $0.takeUnwritten() }
        do {
            try await self.store.recordLiveness(records)
        } catch {
            self.liveness.withLockedValue { $0.unflushed(records) }
            throw error
        }
    }

    /// The relay nodes sharing the store, live or not yet dropped.
    public func relayNodes() async throws -> [RelayNodeView] {
        let deadline = self.now.addingTimeInterval(-Double(self.settings.nodeTTLMilliseconds) / 1000)
        return try await self.store.relayNodes().map {
            RelayNodeView(
                id: $0.id, tunnelURL: $0.tunnelURL, startedAt: $0.startedAt, lastSeenAt: $0.lastSeenAt, live: $0.lastSeenAt >= deadline,
                tunnels: $0.tunnels, sessions: $0.sessions)
        }
    }

    /// Audit records and session ends the store refused (a database outage): written again by the
    /// reconciler's next ticks, in their order, so that nothing accepted is lost while this node runs.
    func keepUnwritten(audit: [AuditRecord] = [], sessions: [SessionRecord] = []) {
        let dropped = self.unwritten.withLockedValue { $0.keep(audit: audit, sessions: sessions) }
        if dropped > 0 {
            self.logger.critical("records kept for the store past the limit; the oldest are dropped", metadata: ["dropped": "\(dropped)"])
        }
    }

    /// Writes what `keepUnwritten` kept; what fails again stays kept.
    public func flushUnwritten() async throws {
        let (audit, sessions) = self.unwritten.withLockedValue { $0.take() }
        guard !audit.isEmpty || !sessions.isEmpty else { return }
        do {
            try await self.store.appendAudit(audit)
        } catch {
            self.unwritten.withLockedValue { $0.putBack(audit: audit, sessions: sessions) }
            throw error
        }
        for (index, session) in sessions.enumerated() {
            do {
                try await self.store.updateSession(session)
            } catch {
                self.unwritten.withLockedValue { $0.putBack(audit: [], sessions: Array(sessions[index...])) }
                throw error
            }
        }
        self.logger.notice("records kept during a store failure written", metadata: ["audit": "\(audit.count)", "sessions": "\(sessions.count)"])
    }

    /// Nodes of a cluster with their latest heartbeat, written or not.
    public func nodes(clusterID: String) async throws -> [NodeRecord] {
        let stored = try await self.store.nodes(clusterID: clusterID)
        return self.liveness.withLockedValue { $0.overlay(stored) }
    }

    /// Clusters with their latest heartbeat, written or not.
    public func clusters() async throws -> [ClusterRecord] {
        let stored = try await self.store.clusters()
        return self.liveness.withLockedValue { liveness in stored.map { liveness.overlay($0) } }
    }

    public func cluster(id: String) async throws -> ClusterRecord? {
        let stored = try await self.store.cluster(id: id)
        return self.liveness.withLockedValue { liveness in stored.map { liveness.overlay($0) } }
    }

    /// Writes what the last minute's refusals left over, and prunes records past retention (hourly).
    /// Called by the reconciler.
    func auditHousekeeping() async throws {
        await self.writeDenialSummaries(self.denials.withLockedValue { $0.flush(at: self.now) })
        let now = self.now
        let due = self.lastPrune.withLockedValue { last in
            guard last.map({ now.timeIntervalSince($0) >= 3600 }) ?? true else { return false }
            last = now
            return true
        }
        if due {
            let pruned = try await self.store.pruneAudit(before: now.addingTimeInterval(-TimeInterval(self.settings.auditRetentionSeconds)))
            if pruned > 0 { self.logger.info("audit records past retention pruned", metadata: ["records": "\(pruned)"]) }
        }
    }

    private func writeDenialSummaries(_ summaries: [DenialAggregator.Summary]) async {
        guard !summaries.isEmpty else { return }
        let ordered = summaries.sorted { ($0.key.source, $0.key.action, $0.key.reason) < ($1.key.source, $1.key.action, $1.key.reason) }
        let records = ordered.map { summary in
            AuditRecord(
                time: summary.minute.addingTimeInterval(60), actor: AuditText.clean(summary.key.actor) ?? "", action: AuditText.clean(summary.key.action) ?? "",
                subject: AuditText.clean(summary.key.source), outcome: .denied,
                reason: AuditText.clean(
                    "\(summary.count) more like this from \(summary.key.source) in the minute from \(Timestamp.text(summary.minute)): \(summary.key.reason)"))
        }
        do {
            try await self.store.appendAudit(records)
        } catch {
            self.logger.error("audit write failed; kept to write again", metadata: ["action": "denial summary", "error": "\(error)"])
            self.keepUnwritten(audit: records)
        }
    }
}

/// What the store could not take yet, oldest first, bounded (`MissionControl.keepUnwritten`).
struct UnwrittenRecords {
    static let limit = 100_000
    private(set) var audit: [AuditRecord] = []
    private(set) var sessions: [SessionRecord] = []

    /// Returns how many of the oldest were dropped to stay within `limit`.
    mutating func keep(audit: [AuditRecord], sessions: [SessionRecord]) -> Int {
        self.audit += audit
        self.sessions += sessions
        let over = max(0, self.audit.count - Self.limit) + max(0, self.sessions.count - Self.limit)
        if self.audit.count > Self.limit { self.audit.removeFirst(self.audit.count - Self.limit) }
        if self.sessions.count > Self.limit { self.sessions.removeFirst(self.sessions.count - Self.limit) }
        return over
    }

    mutating func take() -> ([AuditRecord], [SessionRecord]) {
        defer { (self.audit, self.sessions) = ([], []) }
        return (self.audit, self.sessions)
    }

    /// A flush failed: these go first again.
    mutating func putBack(audit: [AuditRecord], sessions: [SessionRecord]) {
        self.audit = audit + self.audit
        self.sessions = sessions + self.sessions
    }
}
