import CustomerAudit
import Foundation
import NIOCore
import PrivacyPolicy
import RelayModel
import TunnelCore

/// Sessions and their limits. A session is what the relay calls one (its ID); the customer's
/// limits, kills and revocations hold per access request and expert (a grant), so a relay that
/// picks new session IDs gets no new session length, idle time or way around a kill.
extension PrivacyGuard {
    /// Ends a session: its running streams are reset and later requests refused with the reason.
    static func endSession(_ id: String, reason: String, now: Date, inner: inout Inner) -> Cuts {
        guard let session = inner.sessions[id], session.endReason == nil else { return Cuts() }
        inner.sessions[id]!.endReason = reason
        inner.sessions[id]!.endedAt = now
        var channels: [Channel] = []
        for (key, stream) in inner.streams where stream.session == id {
            inner.resetReasons[key] = "stream reset: \(reason)"
            channels.append(stream.channel)
        }
        let entry = AuditEntry(
            time: now, event: "session.end", session: id, expert: session.expert, role: session.role.rawValue,
            accessRequest: session.accessRequest, component: session.component, bytesIn: session.bytesIn, bytesOut: session.bytesOut,
            durationMs: Int64(now.timeIntervalSince(session.startedAt) * 1000), reason: reason)
        let key = RefusalKey(session: id, expert: session.expert)
        let uncounted = inner.refusals.close(key)
        let summary = uncounted > 0 ? [Self.refusalSummary(key, count: uncounted, minute: inner.refusals.currentMinute, inner: inner)] : []
        let event = ControlEvent(
            event: ControlEvent.sessionEnded, session: id, accessRequest: session.accessRequest, expert: session.expert, reason: reason)
        return Cuts(entries: summary + [entry], channels: channels, sessionsEnded: 1, events: [event])
    }

    /// Ends a grant and every session under it: later sessions of the same access request and
    /// expert are refused with the same reason.
    /// - Parameter by: the customer's user who ended it (kill, revocation); nil for a limit.
    static func endGrant(_ key: GrantKey, reason: String, by: String? = nil, now: Date, inner: inout Inner) -> Cuts {
        var cuts = Cuts()
        if inner.grants[key] == nil { inner.grants[key] = Grant(startedAt: now, lastActivityAt: now, expiresAt: now) }
        if inner.grants[key]?.endReason == nil {
            inner.grants[key]?.endReason = reason
            inner.grants[key]?.endedAt = now
            // The relay ends every session of the grant, including any this node has not seen yet.
            cuts.events.append(
                ControlEvent(event: ControlEvent.grantEnded, accessRequest: key.accessRequest, expert: key.expert, reason: reason, by: by))
        }
        for (id, session) in inner.sessions where session.endReason == nil && session.grantKey == key {
            cuts.add(Self.endSession(id, reason: reason, now: now, inner: &inner))
        }
        return cuts
    }

    /// What a sweep or a settings change ended: records to write, stream channels to close, and
    /// what the relay is told at once (its control streams).
    struct Cuts {
        var entries: [AuditEntry] = []
        var channels: [Channel] = []
        var sessionsEnded = 0
        var events: [ControlEvent] = []

        mutating func add(_ other: Cuts) {
            self.entries += other.entries
            self.channels += other.channels
            self.sessionsEnded += other.sessionsEnded
            self.events += other.events
        }
    }

    /// Writes the records, closes the streams, then tells the relay.
    func carryOut(_ cuts: Cuts) {
        cuts.entries.forEach(self.record)
        for channel in cuts.channels { channel.close(promise: nil) }
        self.tellRelay(cuts.events)
    }

    /// Sends events to the relay on every tunnel's control stream (see `onEnded`).
    func tellRelay(_ events: [ControlEvent]) {
        guard !events.isEmpty else { return }
        let observers = self.endObservers.withLockedValue { $0 }
        observers.forEach { $0(events) }
    }

    /// Called with what the customer's side ended (sessions, grants, access), for the relay.
    public func onEnded(_ observer: @escaping @Sendable ([ControlEvent]) -> Void) {
        self.endObservers.withLockedValue { $0.append(observer) }
    }

    /// Ends grants at their limits and resets streams the settings no longer allow. Runs every
    /// second and, in the same critical section as the change, on every settings change.
    @discardableResult
    public func sweep() -> (streamsReset: Int, sessionsEnded: Int) {
        let now = self.clock()
        let cuts = self.inner.withLockedValue { Self.sweep(&$0, now: now) }
        self.carryOut(cuts)
        return (cuts.channels.count, cuts.sessionsEnded)
    }

    static func sweep(_ inner: inout Inner, now: Date) -> Cuts {
        var cuts = Cuts()
        cuts.entries += Self.refusalSummaries(inner.refusals.flush(at: now), inner: inner)
        // A grant with a request running is not idle; one with a websocket open, only while it
        // carries bytes (an open live view nobody watches must not hold a session for good).
        var running: Set<GrantKey> = []
        var webSocketBytes: [GrantKey: Date] = [:]
        for stream in inner.streams.values {
            guard let key = inner.sessions[stream.session]?.grantKey else { continue }
            if let activity = stream.webSocketActivity {
                webSocketBytes[key] = max(webSocketBytes[key] ?? .distantPast, activity.lastActivity)
            } else {
                running.insert(key)
            }
        }
        for (key, grant) in inner.grants where grant.endReason == nil {
            let active = running.contains(key) ? now : max(grant.lastActivityAt, webSocketBytes[key] ?? .distantPast)
            // Kept: the next request and the sweep after a long stream ends count from here.
            inner.grants[key]?.lastActivityAt = active
            if let reason = SessionLimits.endReason(startedAt: grant.startedAt, lastActivity: active, rules: inner.rules, now: now) {
                cuts.add(Self.endGrant(key, reason: reason, now: now, inner: &inner))
            }
        }
        let approvals = inner.persisted.approvalMap
        for (key, stream) in inner.streams where inner.resetReasons[key] == nil {
            if case .failure(let denial) = StreamPolicy.decide(stream.facts, rules: inner.rules, approvals: approvals, now: now) {
                inner.resetReasons[key] = "stream reset: no longer allowed: \(denial.reason)"
                cuts.channels.append(stream.channel)
            }
        }
        // Ended sessions are remembered for a day, so their late requests are told why; grants
        // until a day after their access request expires (no session of it can come later).
        inner.sessions = inner.sessions.filter { $0.value.endedAt.map { now.timeIntervalSince($0) < 86_400 } ?? true }
        inner.grants = inner.grants.filter { now.timeIntervalSince(max($0.value.expiresAt, $0.value.lastActivityAt)) < 86_400 }
        return cuts
    }

    /// Ends every live session (tunnels closed because the access ended, or the customer disabled access).
    @discardableResult
    public func endAllSessions(reason: String) -> Int {
        let now = self.clock()
        let cuts = self.inner.withLockedValue { Self.endAllSessions(&$0, reason: reason, now: now) }
        self.carryOut(cuts)
        return cuts.sessionsEnded
    }

    static func endAllSessions(_ inner: inout Inner, reason: String, now: Date) -> Cuts {
        var cuts = Cuts()
        for (id, session) in inner.sessions where session.endReason == nil {
            cuts.add(Self.endSession(id, reason: reason, now: now, inner: &inner))
        }
        return cuts
    }

    /// `connector sessions kill`: the session ends, and with it its access request for this expert
    /// (a new session ID from the relay is refused too; `requests revoke` ends it for everyone).
    public func killSession(_ id: String, by: String) throws -> ConnectorSession {
        let now = self.clock()
        let (result, session) = self.inner.withLockedValue { inner -> (Cuts, ConnectorSession?) in
            guard let session = inner.sessions[id], session.endReason == nil else { return (Cuts(), inner.sessions[id]) }
            let ended = Self.endGrant(session.grantKey, reason: "killed by the customer (\(by))", by: by, now: now, inner: &inner)
            return (ended, inner.sessions[id])
        }
        guard let session else { throw ControlError(status: 404, code: "unknown_session", message: "no session \(id) on this connector") }
        guard !result.entries.isEmpty else {
            throw ControlError(status: 409, code: "session_ended", message: "session \(id) already ended: \(session.endReason ?? "-")")
        }
        self.carryOut(result)
        return session
    }

    public var sessions: [ConnectorSession] {
        self.inner.withLockedValue { inner in
            inner.sessions.values.map { session in
                var session = session
                session.liveStreams = inner.streams.values.filter { $0.session == session.id }.count
                return session
            }
        }.sorted { $0.startedAt > $1.startedAt }
    }
}

extension ConnectorSession {
    var grantKey: PrivacyGuard.GrantKey { PrivacyGuard.GrantKey(accessRequest: self.accessRequest, expert: self.expert) }
}
