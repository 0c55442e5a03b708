import CustomerAudit
import Foundation
import PrivacyPolicy
import RelayAPI
import RelayModel
import TunnelCore

/// The customer's decisions: approvals (privacy mode `approvedOnly`) and settings changes.
extension PrivacyGuard {
    // MARK: approvals

    /// The relay's heartbeat answer: requests waiting for the customer, and which decisions it took.
    /// `sent` are the decisions that heartbeat carried: only those can have been taken (a decision
    /// made while the heartbeat was in flight goes with the next one).
    public func heartbeatAnswered(pending: [PendingApproval], sent: [ApprovalDecision]) {
        let now = self.clock()
        let carried = Set(sent.map { "\($0.requestID) \($0.verdict.rawValue)" })
        let changed = self.inner.withLockedValue { inner -> Bool in
            inner.pending = pending
            let waiting = Set(pending.map(\.requestID))
            var changed = false
            for index in inner.persisted.approvals.indices where inner.persisted.approvals[index].deliveredAt == nil {
                let approval = inner.persisted.approvals[index]
                let key = "\(approval.requestID) \(ApprovalDecision.Verdict(approval.verdict).rawValue)"
                if carried.contains(key) && !waiting.contains(approval.requestID) {
                    inner.persisted.approvals[index].deliveredAt = now
                    changed = true
                }
            }
            // Decisions whose access ended a month ago are of no use to the policy any more.
            let before = inner.persisted.approvals.count
            inner.persisted.approvals.removeAll { $0.deliveredAt != nil && now.timeIntervalSince($0.expiresAt) > 30 * 86_400 }
            return changed || before != inner.persisted.approvals.count
        }
        if changed { self.persist() }
    }

    /// Decisions the relay has not taken yet: sent with every heartbeat until it has.
    public var undeliveredDecisions: [ApprovalDecision] {
        self.inner.withLockedValue { inner in
            inner.persisted.approvals.filter { $0.deliveredAt == nil }.map {
                ApprovalDecision(requestID: $0.requestID, verdict: ApprovalDecision.Verdict($0.verdict), by: $0.by, reason: $0.customerReason)
            }
        }
    }

    public var requests: ConnectorRequests {
        self.inner.withLockedValue { inner in
            let decided = Set(inner.persisted.approvals.map(\.requestID))
            return ConnectorRequests(
                pending: inner.pending.filter { !decided.contains($0.requestID) },
                decided: inner.persisted.approvals.sorted { $0.decidedAt > $1.decidedAt },
                ended: inner.persisted.relayEnded.sorted { $0.at > $1.at })
        }
    }

    /// `connector requests approve|reject`: kept on disk, then sent with the next heartbeat.
    /// `expected` is the request as the customer saw it: if the relay's copy differs now (expert,
    /// role, duration or reason), nothing is decided.
    public func decide(
        _ id: Int64, _ verdict: CustomerApproval.Verdict, by: String, reason: String?, expected: PendingApproval? = nil
    ) throws -> CustomerApproval {
        let now = self.clock()
        let approval = try self.inner.withLockedValue { inner -> CustomerApproval in
            if let existing = inner.persisted.approvals.first(where: { $0.requestID == id }) {
                throw ControlError(
                    status: 409, code: "already_decided",
                    message: "request \(id) was already \(existing.verdict.rawValue) by \(existing.by) at \(Timestamp.text(existing.decidedAt))")
            }
            guard let request = inner.pending.first(where: { $0.requestID == id }) else {
                let known = inner.pending.map { String($0.requestID) }.joined(separator: ", ")
                throw ControlError(
                    status: 404, code: "not_pending",
                    message: "request \(id) is not waiting for this cluster's approval (waiting: \(known.isEmpty ? "none" : known)); `connector requests list` shows them")
            }
            if let expected, expected.decisionFields != request.decisionFields {
                throw ControlError(
                    status: 409, code: "request_changed",
                    message: "request \(id) is not what you saw: now \(request.expert), \(request.role.rawValue), \(formatMilliseconds(request.durationSeconds * 1000)), reason \(visibleText(request.reason)); nothing was decided, look again with `connector requests list`")
            }
            var approval = CustomerApproval(
                requestID: id, verdict: verdict, expert: request.expert, role: request.role, reason: request.reason, by: by,
                decidedAt: now, expiresAt: now.addingTimeInterval(TimeInterval(request.durationSeconds)))
            approval.customerReason = reason
            inner.persisted.approvals.append(approval)
            return approval
        }
        self.persist()
        self.record(
            AuditEntry(
                time: now, event: "approval", expert: approval.expert, role: approval.role.rawValue, accessRequest: id,
                decision: verdict == .approved ? "approve" : "reject", reason: reason, actor: "customer:\(by)",
                detail: verdict == .approved ? "until \(Timestamp.text(approval.expiresAt))" : nil))
        return approval
    }

    /// `connector requests revoke`: takes back access to a request the customer approved, or that
    /// the relay approved on its own (modes `all`, `readOnly`). From now on every stream of it is
    /// refused, its sessions end, and the relay learns it with the next heartbeat (sent at once).
    public func revoke(_ id: Int64, by: String, reason: String?) throws -> CustomerApproval {
        let now = self.clock()
        let (approval, cuts) = try self.inner.withLockedValue { inner -> (CustomerApproval, Cuts) in
            let known = inner.persisted.approvals.firstIndex { $0.requestID == id }
            let session = inner.sessions.values.first { $0.accessRequest == id }
            if let known, inner.persisted.approvals[known].verdict != .approved {
                let existing = inner.persisted.approvals[known]
                throw ControlError(
                    status: 409, code: "not_approved",
                    message: "request \(id) was \(existing.verdict.rawValue) by \(existing.by) at \(Timestamp.text(existing.decidedAt)); there is nothing to revoke")
            }
            guard known != nil || session != nil else {
                throw ControlError(
                    status: 404, code: "unknown_request",
                    message: "this connector has neither approved request \(id) nor served a session of it; `connector requests list` and `connector sessions list` show what it knows")
            }
            let base = known.map { inner.persisted.approvals[$0] }
            var approval = CustomerApproval(
                requestID: id, verdict: .revoked, expert: base?.expert ?? session?.expert ?? "-", role: base?.role ?? session?.role ?? .viewer,
                reason: base?.reason ?? "-", by: by, decidedAt: now, expiresAt: base?.expiresAt ?? now)
            approval.customerReason = reason
            if let known { inner.persisted.approvals[known] = approval } else { inner.persisted.approvals.append(approval) }
            var cuts = Cuts()
            let keys = Set(inner.sessions.values.filter { $0.accessRequest == id }.map(\.grantKey)).union(inner.grants.keys.filter { $0.accessRequest == id })
            for key in keys { cuts.add(Self.endGrant(key, reason: "the customer revoked access request \(id) (\(by))", by: by, now: now, inner: &inner)) }
            return (approval, cuts)
        }
        self.persist()
        self.record(
            AuditEntry(
                time: now, event: "approval", expert: approval.expert, role: approval.role.rawValue, accessRequest: id, decision: "revoke",
                reason: reason, actor: "customer:\(by)"))
        self.carryOut(cuts)
        return approval
    }

    /// Saves the state as it is now. Saves are serial and each writes the latest state, so an
    /// older snapshot can never land after a newer one.
    func persist() {
        let directory = self.config.stateDirectory
        self.saving.withLockedValue { _ in
            do {
                try self.inner.withLockedValue { $0.persisted }.save(directory: directory)
            } catch {
                self.logger.error("cannot save the connector's state", metadata: ["error": "\(error)"])
            }
        }
    }

    // MARK: settings

    /// Puts new settings in force: a reloaded config file and/or a mode set from the CLI. Takes
    /// effect from the next request; running streams no longer allowed are reset now.
    public func apply(config newConfig: ConnectorConfig? = nil, mode change: ModeChange? = nil, actor: String) -> SettingsApplied {
        let now = self.clock()
        // The change, the sessions it ends and the streams it no longer allows are one step: the
        // periodic sweep never sees the new rules before this call has counted what they cut.
        let (before, after, state, cuts, fileMode) = self.inner.withLockedValue { inner -> (PrivacyRules, PrivacyRules, ConnectorState?, Cuts, PrivacyMode) in
            let before = inner.rules
            if let newConfig {
                inner.config = newConfig
                inner.configLoadedAt = now
            }
            var changedState: ConnectorState?
            if let change {
                inner.persisted.modeOverride = change.mode.map { ModeOverride(mode: $0, by: change.by, at: now) }
                changedState = inner.persisted
            }
            inner.rules = inner.config.privacyRules(mode: inner.persisted.modeOverride?.mode)
            var cuts = Cuts()
            if inner.rules.mode == .disabled && before.mode != .disabled {
                let reason = "the customer turned remote access off"
                cuts = Self.endAllSessions(&inner, reason: reason, now: now)
                cuts.events.append(ControlEvent(event: ControlEvent.accessOff, reason: reason))
            }
            cuts.add(Self.sweep(&inner, now: now))
            return (before, inner.rules, changedState, cuts, inner.config.privacyMode)
        }
        if state != nil { self.persist() }
        let changes = describeChanges(before, after)
        self.record(
            AuditEntry(time: now, event: "setting", reason: changes.isEmpty ? "no change" : nil, actor: actor, detail: changes.joined(separator: "; ")))
        self.carryOut(cuts)
        self.logger.notice(
            "settings applied",
            metadata: [
                "by": "\(actor)", "mode": "\(after.mode.rawValue)", "changes": "\(changes.isEmpty ? "none" : changes.joined(separator: "; "))",
                "reset": "\(cuts.channels.count)", "sessions_ended": "\(cuts.sessionsEnded)",
            ])
        if before.mode != after.mode {
            let observers = self.modeObservers.withLockedValue { $0 }
            observers.forEach { $0(after.mode) }
        }
        return SettingsApplied(
            mode: after.mode, changes: changes, streamsReset: cuts.channels.count, sessionsEnded: cuts.sessionsEnded, fileMode: fileMode,
            modeOverride: self.modeOverride)
    }
}

/// A control-socket request that cannot be done: status, stable code, one sentence.
public struct ControlError: Error, CustomStringConvertible, Sendable {
    public var status: Int
    public var code: String
    public var message: String
    public var description: String { self.message }
}

func describeChanges(_ before: PrivacyRules, _ after: PrivacyRules) -> [String] {
    var changes: [String] = []
    if before.mode != after.mode { changes.append("mode \(before.mode.rawValue) -> \(after.mode.rawValue)") }
    let oldNames = Set(before.components.keys)
    let newNames = Set(after.components.keys)
    for name in newNames.subtracting(oldNames).sorted() { changes.append("component \(name) added") }
    for name in oldNames.subtracting(newNames).sorted() { changes.append("component \(name) removed") }
    for name in oldNames.intersection(newNames).sorted() where before.components[name] != after.components[name] {
        changes.append("component \(name) changed")
    }
    if before.deniedPathPrefixes != after.deniedPathPrefixes {
        changes.append("denied paths \(before.deniedPathPrefixes) -> \(after.deniedPathPrefixes)")
    }
    if before.maxSessionMilliseconds != after.maxSessionMilliseconds {
        changes.append("max session \(formatMilliseconds(before.maxSessionMilliseconds)) -> \(formatMilliseconds(after.maxSessionMilliseconds))")
    }
    if before.idleTimeoutMilliseconds != after.idleTimeoutMilliseconds {
        changes.append("idle timeout \(formatMilliseconds(before.idleTimeoutMilliseconds)) -> \(formatMilliseconds(after.idleTimeoutMilliseconds))")
    }
    return changes
}

extension ApprovalDecision.Verdict {
    init(_ verdict: CustomerApproval.Verdict) {
        switch verdict {
        case .approved: self = .approve
        case .rejected: self = .reject
        case .revoked: self = .revoke
        }
    }
}

extension PendingApproval {
    /// What a customer decides on: the same request with other values is another question.
    var decisionFields: [String] { [self.expert, self.role.rawValue, String(self.durationSeconds), self.reason] }
}
