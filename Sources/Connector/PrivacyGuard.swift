import CustomerAudit
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import PrivacyPolicy
import RelayAPI
import RelayModel
import ServiceLifecycle
import TunnelCore

/// The customer's side of every tunnel stream: decides each request with `StreamPolicy` before any
/// byte reaches a component, keeps the sessions and running streams it let through, ends sessions
/// at the customer's limits, resets streams a settings change no longer allows, and writes the
/// customer's audit log. One per connector process; every tunnel's streams pass through it.
public final class PrivacyGuard: Sendable {
    public let audit: AuditLog
    /// What the connector has done since it started (`connector status`, the metrics textfile).
    public let figures: ConnectorFigures
    let clock: @Sendable () -> Date
    let logger: Logger
    let inner: NIOLockedValueBox<Inner>
    let modeObservers = NIOLockedValueBox<[@Sendable (PrivacyMode) -> Void]>([])
    /// Held while state.json is written (never while `inner` is held).
    let saving = NIOLockedValueBox(())
    let endObservers = NIOLockedValueBox<[@Sendable ([ControlEvent]) -> Void]>([])
    /// Rung when the streams running as the drain began have all closed.
    let drained = Alarm()

    struct Inner {
        var config: ConnectorConfig
        /// When `config` was read (start or the last good reload).
        var configLoadedAt: Date
        var persisted: ConnectorState
        var rules: PrivacyRules
        var pending: [PendingApproval] = []
        var sessions: [String: ConnectorSession] = [:]
        var streams: [ObjectIdentifier: LiveStream] = [:]
        var resetReasons: [ObjectIdentifier: String] = [:]
        /// Refused requests per session and minute (`audit.refusals_per_minute` recorded one by one).
        var refusals: MinuteTally<RefusalKey>
        /// Session limits are kept per access request and expert: a relay that picks new session
        /// IDs gets no new session length, idle time, or way around a customer's kill.
        var grants: [GrantKey: Grant] = [:]
        /// The connector is stopping: new streams are refused, running ones finish.
        var draining = false
    }

    struct GrantKey: Hashable, Sendable {
        var accessRequest: Int64
        var expert: String
    }

    struct Grant: Sendable {
        var startedAt: Date
        var lastActivityAt: Date
        /// When the relay says the access request expires (forgotten a day after).
        var expiresAt: Date
        var endReason: String?
        var endedAt: Date?
    }

    struct RefusalKey: Hashable, Sendable, Comparable {
        var session: String
        var expert: String
        static func < (a: RefusalKey, b: RefusalKey) -> Bool { (a.session, a.expert) < (b.session, b.expert) }
    }

    struct LiveStream {
        var channel: Channel
        var facts: StreamFacts
        var session: String
        /// A websocket's last byte either way: an open websocket keeps its session alive only
        /// while it carries something (nil for requests, which count as activity while they run).
        var webSocketActivity: ActivityStamp?
    }

    /// When a stream last carried bytes, on the guard's clock (written on the stream's loop, read by the sweep).
    final class ActivityStamp: Sendable {
        private let last: NIOLockedValueBox<Date>
        private let clock: @Sendable () -> Date
        init(clock: @escaping @Sendable () -> Date) {
            self.clock = clock
            self.last = NIOLockedValueBox(clock())
        }
        func touch() { self.last.withLockedValue { $0 = self.clock() } }
        var lastActivity: Date { self.last.withLockedValue { $0 } }
    }

    /// One stream's view, confined to the stream's event loop.
    final class Ticket: @unchecked Sendable {
        let channel: Channel
        let openedAt: Date
        var permit: StreamPermit?
        var audited = false
        /// Set for a websocket only (no allocation on a plain request's path).
        var activity: ActivityStamp?
        init(channel: Channel, openedAt: Date) {
            self.channel = channel
            self.openedAt = openedAt
        }
    }

    public init(config: ConnectorConfig, clock: @escaping @Sendable () -> Date = { Date() }, logger: Logger = Logger(label: "connector")) throws {
        try ensurePrivateDirectory(config.stateDirectory)
        var persisted = try ConnectorState.load(directory: config.stateDirectory)
        let auditDirectory = URL(fileURLWithPath: config.audit.directory).standardizedFileURL.path
        if persisted.auditDirectory != auditDirectory {
            persisted.auditDirectory = auditDirectory
            try persisted.save(directory: config.stateDirectory)
        }
        self.audit = try AuditLog(directory: config.audit.directory, maxFileBytes: config.audit.maxFileBytes, maxRotatedFiles: config.audit.maxFiles)
        self.clock = clock
        self.logger = logger
        self.figures = ConnectorFigures(since: clock())
        let rules = config.privacyRules(mode: persisted.modeOverride?.mode)
        let tally = MinuteTally<RefusalKey>(recordedPerMinute: config.audit.refusalsPerMinute, maxKeys: 10_000) { _ in
            RefusalKey(session: "-", expert: "-")
        }
        self.inner = NIOLockedValueBox(Inner(config: config, configLoadedAt: clock(), persisted: persisted, rules: rules, refusals: tally))
    }

    /// The mode in force (the CLI's override, else the config file's).
    public var mode: PrivacyMode { self.inner.withLockedValue { $0.rules.mode } }
    public var rules: PrivacyRules { self.inner.withLockedValue { $0.rules } }
    public var config: ConnectorConfig { self.inner.withLockedValue { $0.config } }
    public var modeOverride: ModeOverride? { self.inner.withLockedValue { $0.persisted.modeOverride } }
    /// When the settings in force were read from the config file.
    public var configLoadedAt: Date { self.inner.withLockedValue { $0.configLoadedAt } }

    /// Called with the new mode after every settings change (heartbeat driver, tunnels).
    public func onModeChange(_ observer: @escaping @Sendable (PrivacyMode) -> Void) {
        self.modeObservers.withLockedValue { $0.append(observer) }
    }

    // MARK: streams

    func ticket(for channel: Channel) -> Ticket { Ticket(channel: channel, openedAt: self.clock()) }

    /// Decides one request; on success opens the component with the normalised target.
    func open(_ head: HTTPRequestHead, _ upstream: ProxyUpstreamHandler, ticket: Ticket, opener: ComponentOpener) -> EventLoopFuture<HTTPRequestHead> {
        let now = self.clock()
        // Fail closed: what cannot be recorded is not let through.
        if self.audit.failure != nil {
            self.audit.probeWhileFailing(now: now)
            return upstream.downstreamEventLoop.makeFailedFuture(Self.auditUnavailable)
        }
        let facts = StreamFacts(method: head.method.rawValue, target: head.uri, headers: head.headers.map { .init($0.name, $0.value) })
        var entries: [AuditEntry] = []
        var events: [ControlEvent] = []
        let outcome = self.inner.withLockedValue { inner -> Result<(StreamPermit, Component), ProxyRefusal> in
            if inner.draining { return .failure(Self.stopping) }
            if let id = facts.session, let session = inner.sessions[id], let reason = session.endReason {
                inner.sessions[id]?.refused += 1
                return .failure(Self.sessionEndedRefusal(reason))
            }
            switch StreamPolicy.decide(facts, rules: inner.rules, approvals: inner.persisted.approvalMap, now: now) {
            case .failure(let denial):
                if let id = facts.session { inner.sessions[id]?.refused += 1 }
                return .failure(ProxyRefusal(stream: denial.kind, denial.reason))
            case .success(let permit):
                let grantKey = GrantKey(accessRequest: permit.accessRequest, expert: permit.expert)
                if let reason = inner.grants[grantKey]?.endReason {
                    // Ended for this access request and expert, whatever session ID the relay picks.
                    inner.sessions[permit.session]?.refused += 1
                    return .failure(Self.sessionEndedRefusal(reason))
                }
                if inner.sessions[permit.session] == nil {
                    inner.sessions[permit.session] = ConnectorSession(
                        id: permit.session, expert: permit.expert, role: permit.role, component: permit.component,
                        accessRequest: permit.accessRequest, startedAt: now, lastActivityAt: now, requests: 0, refused: 0, bytesIn: 0,
                        bytesOut: 0, liveStreams: 0)
                    entries.append(
                        AuditEntry(
                            time: now, event: "session.start", session: permit.session, expert: permit.expert, role: permit.role.rawValue,
                            accessRequest: permit.accessRequest, component: permit.component))
                }
                let grant = inner.grants[grantKey] ?? Grant(startedAt: now, lastActivityAt: now, expiresAt: facts.accessExpiresAt ?? now)
                inner.grants[grantKey] = grant
                if let reason = SessionLimits.endReason(startedAt: grant.startedAt, lastActivity: grant.lastActivityAt, rules: inner.rules, now: now) {
                    let ended = Self.endGrant(grantKey, reason: reason, now: now, inner: &inner)
                    entries += ended.entries
                    events += ended.events
                    return .failure(Self.sessionEndedRefusal(reason))
                }
                guard let component = inner.config.components.first(where: { $0.name == permit.component }) else {
                    return .failure(ProxyRefusal(stream: .unknownComponent, "component \"\(permit.component)\" is not offered"))
                }
                inner.sessions[permit.session]?.lastActivityAt = now
                inner.sessions[permit.session]?.requests += 1
                inner.grants[grantKey]?.lastActivityAt = now
                if permit.webSocket { ticket.activity = ActivityStamp(clock: self.clock) }
                inner.streams[ObjectIdentifier(ticket.channel)] = LiveStream(
                    channel: ticket.channel, facts: facts, session: permit.session, webSocketActivity: ticket.activity)
                return .success((permit, component))
            }
        }
        entries.forEach(self.record)
        self.tellRelay(events)
        switch outcome {
        case .success(let (permit, component)):
            ticket.permit = permit
            // Exactly what was decided goes on: method, normalised target, the headers kept.
            var headers = HTTPHeaders(permit.headers.map { ($0.name, $0.value) })
            headers.addForwardedFor(expertAddress: facts.first(WireHeader.clientAddress), component: component.name)
            let forwarded = HTTPRequestHead(
                version: head.version, method: HTTPMethod(rawValue: permit.method), uri: permit.target.forwarded, headers: headers)
            guard permit.webSocket || (permit.method != "GET" && permit.method != "HEAD") else {
                return opener.open(forwarded, upstream, component: component)
            }
            // A request that can change something (a websocket can) is on the customer's disk before
            // any byte of it reaches the component; its outcome follows in the `request` record (the
            // `websocket` record, with the bytes each way and how long it was open).
            let begun = upstream.downstreamEventLoop.makePromise(of: Void.self)
            self.audit.append(
                AuditEntry(
                    time: now, event: permit.webSocket ? "websocket.open" : "request.begin", requestID: facts.requestID, session: permit.session,
                    expert: permit.expert, role: permit.role.rawValue, accessRequest: permit.accessRequest, component: permit.component,
                    method: permit.method, path: permit.target.forwarded, decision: "allow")
            ) { result in begun.completeWith(result.map { _ in () }) }
            return begun.futureResult.flatMapError { _ in
                ticket.permit = nil  // refused after all: audited as such
                return upstream.downstreamEventLoop.makeFailedFuture(Self.auditUnavailable)
            }.flatMap {
                permit.webSocket ? opener.openWebSocket(forwarded, upstream, component: component) : opener.open(forwarded, upstream, component: component)
            }
        case .failure(let refusal):
            return upstream.downstreamEventLoop.makeFailedFuture(refusal)
        }
    }

    /// Appends a record nobody waits for; a failed write is logged (allowed responses wait in `commit`).
    func record(_ entry: AuditEntry) {
        let logger = self.logger
        self.audit.append(entry) { result in
            if case .failure(let error) = result {
                logger.error("cannot write the customer's audit log", metadata: ["event": "\(entry.event)", "error": "\(error)"])
            }
        }
    }

    static let auditUnavailable = ProxyRefusal(stream: .auditUnavailable, "the customer's audit log cannot be written, so the connector refuses requests until it can (the customer sees why in `connector status`)")

    static let stopping = ProxyRefusal(stream: .connectorStopping, "the customer's connector on this node is shutting down; retry (another node of the cluster may answer)")

    /// When each open websocket last carried bytes, on the guard's clock (what the sweep reads).
    var webSocketActivity: [Date] {
        self.inner.withLockedValue { inner in inner.streams.values.compactMap { $0.webSocketActivity?.lastActivity } }
    }

    /// Stops letting new streams in and waits, at most `bound` on `clock`, for the running ones to
    /// finish: true if they all did. A stream is finished when its channel closed, that is when its
    /// last byte left (a response still held by flow control is not), so closing the tunnel then
    /// loses nothing.
    ///
    /// Open websockets are closed at once (their records say why): they never finish on their
    /// own, so waiting for them would only hold the stop for its whole bound.
    func streamsFinished(within bound: Duration, on clock: any Clock<Duration>) async -> Bool {
        let (running, webSockets) = self.inner.withLockedValue { inner -> ([Channel], [Channel]) in
            inner.draining = true
            var webSockets: [Channel] = []
            for (key, stream) in inner.streams where stream.webSocketActivity != nil {
                inner.resetReasons[key] = "stream reset: the connector is stopping"
                webSockets.append(stream.channel)
            }
            return (inner.streams.values.map(\.channel), webSockets)
        }
        for channel in webSockets { channel.close(promise: nil) }
        guard let loop = running.first?.eventLoop else { return true }
        EventLoopFuture.andAllComplete(running.map(\.closeFuture), on: loop).whenComplete { _ in self.drained.ring() }
        _ = await self.drained.sleep(for: bound, on: clock)
        return running.allSatisfy { !$0.isActive }
    }

    private static func sessionEndedRefusal(_ reason: String) -> ProxyRefusal {
        ProxyRefusal(stream: .sessionEnded, "the customer's connector ended this session: \(reason)",
            headers: [WireHeader.sessionEnded: reason])
    }

    /// The response is complete: its audit record goes to disk before the end reaches the expert.
    func commit(_ record: ProxyExchangeRecord, ticket: Ticket) -> EventLoopFuture<Void> {
        let promise = ticket.channel.eventLoop.makePromise(of: Void.self)
        ticket.audited = true
        let entry = self.requestEntry(record, ticket: ticket, reason: nil)
        self.audit.append(entry) { result in
            switch result {
            case .success: promise.succeed(())
            case .failure(let error): promise.fail(error)
            }
        }
        return promise.futureResult
    }

    /// The exchange is over (completed, refused or cut): forget the stream, audit what was not yet.
    func completed(_ record: ProxyExchangeRecord, ticket: Ticket) {
        let key = ObjectIdentifier(ticket.channel)
        let resetReason = self.inner.withLockedValue { inner -> String? in
            inner.streams[key] = nil
            return inner.resetReasons.removeValue(forKey: key)
        }
        self.count(record, ticket: ticket)
        guard !ticket.audited else { return }
        ticket.audited = true
        let entry = self.requestEntry(record, ticket: ticket, reason: resetReason)
        if ticket.permit == nil {
            // Refusals are recorded one by one up to a rate per session, then counted.
            let now = self.clock()
            let (recordNow, summaries) = self.inner.withLockedValue { inner in
                let counted = inner.refusals.count(RefusalKey(session: entry.session ?? "-", expert: entry.expert ?? "-"), at: now)
                return (counted.record != nil, Self.refusalSummaries(counted.summaries, inner: inner))
            }
            summaries.forEach(self.record)
            guard recordNow else { return }
        }
        self.record(entry)
    }

    /// Records for refusals counted but not recorded one by one.
    static func refusalSummaries(_ summaries: [MinuteTally<RefusalKey>.Summary], inner: Inner) -> [AuditEntry] {
        summaries.sorted { $0.key < $1.key }.map { summary in
            refusalSummary(summary.key, count: summary.count, minute: summary.minute, inner: inner)
        }
    }

    static func refusalSummary(_ key: RefusalKey, count: Int, minute: Date, inner: Inner) -> AuditEntry {
        let known = inner.sessions[key.session]
        return AuditEntry(
            time: minute.addingTimeInterval(60), event: "request.refusals", session: key.session == "-" ? nil : key.session,
            expert: key.expert == "-" ? nil : key.expert,
            role: known?.role.rawValue, accessRequest: known?.accessRequest, component: known?.component, decision: "deny",
            reason: "\(count) more refused requests in the minute from \(Timestamp.text(minute)), counted, not recorded one by one (at most \(inner.refusals.recordedPerMinute) a minute per session are)")
    }

    private func count(_ record: ProxyExchangeRecord, ticket: Ticket) {
        self.figures.request(
            allowed: ticket.permit != nil && record.refusalCode == nil, bytesToCluster: record.requestBodyBytes,
            bytesToExperts: record.responseBodyBytes)
        guard let permit = ticket.permit else { return }
        self.inner.withLockedValue { inner in
            guard var session = inner.sessions[permit.session] else { return }
            session.bytesIn += Int64(record.requestBodyBytes)
            session.bytesOut += Int64(record.responseBodyBytes)
            inner.sessions[permit.session] = session
        }
    }

    private func requestEntry(_ record: ProxyExchangeRecord, ticket: Ticket, reason: String?) -> AuditEntry {
        let head = record.head
        let permit = ticket.permit
        var decisionReason = reason
        let decision = permit == nil ? "deny" : "allow"
        switch record.outcome {
        case .refused(let refusal):
            decisionReason = decisionReason ?? "\(refusal.code): \(refusal.message)"
        case .aborted(let why):
            decisionReason = decisionReason ?? "aborted: \(why)"
        case .completed:
            break
        }
        return AuditEntry(
            time: ticket.openedAt, event: head.opensWebSocket ? "websocket" : "request", requestID: head.headers.first(name: WireHeader.requestID),
            session: head.headers.first(name: WireHeader.session), expert: head.headers.first(name: WireHeader.expert),
            role: permit?.role.rawValue ?? head.headers.first(name: WireHeader.role),
            accessRequest: head.headers.first(name: WireHeader.accessRequest).flatMap { Int64($0) },
            component: head.headers.first(name: WireHeader.component), method: head.opensWebSocket ? "GET" : head.method.rawValue, path: head.uri,
            status: record.status.map { Int($0) }, bytesIn: Int64(record.requestBodyBytes), bytesOut: Int64(record.responseBodyBytes),
            durationMs: record.duration.nanoseconds / 1_000_000, decision: decision, reason: decisionReason,
            detail: permit.flatMap { Self.forwardingDetail($0, received: head.uri) })
    }

    /// How the forwarded request differs from the one received, for the audit record.
    private static func forwardingDetail(_ permit: StreamPermit, received: String) -> String? {
        var parts: [String] = []
        if permit.target.forwarded != received { parts.append("forwarded as \(permit.target.forwarded)") }
        if !permit.strippedHeaders.isEmpty { parts.append("headers removed: \(permit.strippedHeaders.joined(separator: ", "))") }
        return parts.isEmpty ? nil : parts.joined(separator: "; ")
    }

    /// Requests running through the connector right now.
    public var runningRequests: Int { self.inner.withLockedValue { $0.streams.count } }
}

/// The customer's audit log as a service: it stops last, after the tunnels, and records the end of
/// every session still open before the process exits.
extension PrivacyGuard: Service {
    public func run() async {
        try? await gracefulShutdown()
        _ = self.endAllSessions(reason: "the connector stopped")
        self.audit.sync()
    }
}
