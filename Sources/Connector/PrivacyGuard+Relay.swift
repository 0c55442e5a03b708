import CustomerAudit
import Foundation
import PrivacyPolicy
import RelayModel
import TunnelCore

/// What the relay ended, told at once on a tunnel's control stream. An event can only end
/// something here (a session, an access request's grants), never allow anything, so the relay,
/// which the customer does not have to trust, gains nothing by sending one.
extension PrivacyGuard {
    public func relaySaid(_ event: ControlEvent) {
        let now = self.clock()
        let reason = String(event.reason.prefix(AuditEntry.maxTextBytes))
        let (cuts, ended) = self.inner.withLockedValue { inner -> (Cuts, RelayEndedRequest?) in
            var cuts = Cuts()
            var ended: RelayEndedRequest?
            switch event.event {
            case ControlEvent.sessionEnded:
                guard let id = event.session else { break }
                cuts.add(Self.endSession(id, reason: "ended at the relay: \(reason)", now: now, inner: &inner))
            case ControlEvent.requestEnded:
                guard let id = event.accessRequest, !inner.persisted.relayEnded.contains(where: { $0.requestID == id }) else { break }
                // Only requests this connector knows (approved here, or served): a relay cannot
                // grow the customer's state or audit log with made-up ones.
                var keys = Set(inner.sessions.values.filter { $0.accessRequest == id }.map(\.grantKey))
                keys.formUnion(inner.grants.keys.filter { $0.accessRequest == id })
                let approval = inner.persisted.approvals.first { $0.requestID == id }
                guard !keys.isEmpty || approval != nil else { break }
                if let approval { keys.insert(GrantKey(accessRequest: id, expert: approval.expert)) }
                for key in keys { cuts.add(Self.endGrant(key, reason: reason, now: now, inner: &inner)) }
                let record = RelayEndedRequest(requestID: id, state: String((event.state ?? "ended").prefix(16)), reason: reason, at: now)
                inner.persisted.relayEnded.append(record)
                // A month of them, at most 500, is plenty for `requests list`.
                inner.persisted.relayEnded.removeAll { now.timeIntervalSince($0.at) > 30 * 86_400 }
                inner.persisted.relayEnded = Array(inner.persisted.relayEnded.suffix(500))
                ended = record
            default:
                break
            }
            // The relay knows already: nothing goes back.
            cuts.events = []
            return (cuts, ended)
        }
        if let ended {
            self.persist()
            self.record(
                AuditEntry(
                    time: now, event: "request.ended", expert: event.expert, accessRequest: ended.requestID, reason: reason,
                    actor: "relay", detail: ended.state))
        }
        self.carryOut(cuts)
    }
}
