import Foundation
import RelayAPI
import RelayModel

/// Waits for the customer to decide an access request, by asking the relay (`GET /v1/requests`,
/// where experts see their own) every `poll`. The relay stays the one that decides: this only
/// watches the request's state.
public struct ApprovalWait: Sendable {
    public enum Outcome: Sendable, Equatable {
        case approved(AccessRequestRecord)
        /// Rejected, revoked or expired before it could be used.
        case ended(AccessRequestRecord)
        /// Still pending after the wait.
        case stillPending(AccessRequestRecord)
    }

    let client: APIClient
    let cluster: String
    var poll: Duration = .seconds(1)

    public init(client: APIClient, cluster: String) {
        self.client = client
        self.cluster = cluster
    }

    /// The caller's newest request for the cluster, when it is pending (nil otherwise: whatever
    /// refused the session is then not a wait).
    public func pendingRequest() async throws -> AccessRequestRecord? {
        let newest = try await self.requests().max { $0.id < $1.id }
        return newest?.state == .pending ? newest : nil
    }

    /// Waits until request `id` leaves `pending`, or `seconds` pass. `progress` gets the request,
    /// the cluster's privacy mode (nil before a connector reported one) and the time waited, once
    /// per poll.
    public func wait(
        for id: Int64, seconds: Int64, now: @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now },
        progress: (AccessRequestRecord, PrivacyMode?, Duration) -> Void
    ) async throws -> Outcome {
        let start = now()
        while true {
            let listed: [AccessRequestRecord]
            do {
                listed = try await self.requests()
            } catch let error as APIError where error.kind == .unreachable && now() - start < .seconds(seconds) {
                // A relay node restarting: ask again until the wait runs out.
                try await Task.sleep(for: self.poll)
                continue
            }
            guard let request = listed.first(where: { $0.id == id }) else {
                throw ApprovalWaitError(description: "request \(id) is no longer listed for you")
            }
            switch request.state {
            case .approved:
                // The relay expires it when its window passes (this machine's clock may differ).
                return .approved(request)
            case .rejected, .revoked, .expired:
                return .ended(request)
            case .pending:
                let waited = now() - start
                let detail = try? await self.client.call(RelayEndpoints.cluster, self.cluster)
                progress(request, detail?.cluster.privacyMode, waited)
                if waited >= .seconds(seconds) { return .stillPending(request) }
                try await Task.sleep(for: min(self.poll, .seconds(seconds) - waited + .milliseconds(1)))
            }
        }
    }

    private func requests() async throws -> [AccessRequestRecord] {
        try await self.client.call(RelayEndpoints.requests, query: [("cluster", self.cluster)])
    }
}

public struct ApprovalWaitError: Error, CustomStringConvertible {
    public var description: String
}

extension AccessRequestRecord {
    /// Why a request ended, in a line ("rejected by customer:carol@demo: not today").
    public var endedLine: String {
        let why = self.endReason.map { ": \(visibleText($0))" } ?? ""
        switch self.state {
        case .rejected: return "request \(self.id) was rejected by \(self.changedBy)\(why)"
        case .revoked: return "request \(self.id) was revoked by \(self.changedBy)\(why)"
        case .expired, .approved:
            let why = self.endReason.flatMap { $0 == "expired" ? nil : ": \(visibleText($0))" } ?? ""
            return "request \(self.id) expired at \(HumanFormat.time(self.expiresAt ?? self.changedAt))\(why)"
        case .pending: return "request \(self.id) is pending"
        }
    }
}
