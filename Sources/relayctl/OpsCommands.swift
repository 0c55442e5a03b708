import ArgumentParser
import ConfigKit
import Foundation
import RelayAPI
import RelayCtlKit
import RelayModel

// MARK: clusters

struct Clusters: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Enroll and inspect clusters (ops).", subcommands: [Add.self, Enroll.self, List.self, Show.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Enroll a cluster; prints its one-time enrollment token.")
        @OptionGroup var relay: RelayOptions
        @Argument(help: "Cluster ID.") var id: String
        @Option(help: "Free text shown in lists.") var description: String = ""

        func run() async throws {
            try await self.relay.run({ try await $0.call(RelayEndpoints.createCluster, body: CreateClusterRequest(id: self.id, description: self.description)) }) {
                enrollmentText($0)
            }
        }
    }

    struct Enroll: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A new one-time enrollment token for another node of an existing cluster.")
        @OptionGroup var relay: RelayOptions
        @Argument(help: "Cluster ID.") var id: String

        func run() async throws {
            try await self.relay.run({ try await $0.call(RelayEndpoints.enroll, self.id) }) {
                enrollmentText($0)
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List clusters, their flag and nodes.")
        @OptionGroup var relay: RelayOptions

        func run() async throws {
            try await self.relay.run({ try await $0.call(RelayEndpoints.clusters) }) { clusters in
                TextTable.render(
                    ["CLUSTER", "MODE", "FLAG", "NODES", "LAST HEARTBEAT", "DESCRIPTION"],
                    clusters.map {
                        [$0.cluster.id, $0.cluster.privacyMode?.rawValue ?? "-", $0.remoteUIRequested ? "on" : "off", String($0.nodes.count),
                         HumanFormat.time($0.cluster.lastHeartbeatAt), $0.cluster.description]
                    })
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One cluster: flag, active requests, and each node's health.")
        @OptionGroup var relay: RelayOptions
        @Argument(help: "Cluster ID.") var id: String

        func run() async throws {
            try await self.relay.run({ try await $0.call(RelayEndpoints.cluster, self.id) }) { detail in
                var out = "cluster \(detail.cluster.id)  \(detail.cluster.description)\n"
                out += "privacy mode: \(detail.cluster.privacyMode?.rawValue ?? "unknown (no heartbeat yet)")\n"
                out += "remote-UI flag: \(detail.remoteUIRequested ? "on" : "off")\n"
                out += "components: \(detail.components.isEmpty ? "none reported yet" : detail.components.joined(separator: ", "))\n"
                for request in detail.activeRequests {
                    out += "active request \(request.id): \(request.expert), \(request.role.rawValue), until \(HumanFormat.time(request.expiresAt))\n"
                }
                out += "\n" + TextTable.render(
                    ["NODE", "VERSION", "LAST HEARTBEAT", "TUNNELS", "OS", "CPU", "LOAD", "RAM FREE/TOTAL", "DISK USED/TOTAL", "STATE", "MASTER", "STARTED"],
                    detail.nodes.map { node in
                        let h = node.health
                        return [
                            node.record.nodeID, node.record.connectorVersion, HumanFormat.time(node.record.lastHeartbeatAt), String(node.tunnelsHere),
                            h.map { "\($0.osName) \($0.osVersion)" } ?? "-", h.map { String($0.cpuCores) } ?? "-",
                            h.map { String(format: "%.2f", $0.cpuLoad) } ?? "-",
                            h.map { "\(HumanFormat.bytes($0.ramFreeBytes))/\(HumanFormat.bytes($0.ramTotalBytes))" } ?? "-",
                            h.map { "\(HumanFormat.bytes($0.diskUsedBytes))/\(HumanFormat.bytes($0.diskTotalBytes))" } ?? "-",
                            h?.serverState ?? "-", h.map { $0.masterNode ? "yes" : "no" } ?? "-", HumanFormat.time(h?.startedAt),
                        ]
                    })
                return out
            }
        }
    }
}

/// `: why` for an ended request whose reason says more than its state.
private func endNote(_ request: AccessRequestRecord) -> String {
    guard request.state.isFinal, let reason = request.endReason, reason != request.state.rawValue else { return "" }
    return ": \(reason)"
}

func enrollmentText(_ enrollment: EnrollmentResponse) -> String {
    """
    enrollment token for cluster \(enrollment.clusterID) (shown once, single use, expires \(HumanFormat.time(enrollment.expiresAt))):
    \(enrollment.enrollmentToken)
    next: on the cluster node, save it to a file and run: connector register --enrollment-token-file FILE
    """
}

// MARK: requests

struct Requests: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Access requests.", subcommands: [Create.self, List.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Ask for access to a cluster.")
        @OptionGroup var relay: RelayOptions
        @Option(help: "Cluster ID.") var cluster: String
        @Option(help: "Why access is needed (shown to the customer).") var reason: String
        @Option(help: "admin, user or viewer.") var role: String = "viewer"
        @Option(help: "How long, from approval: 30m, 2h, 1d.") var duration: String = "1h"
        @Option(help: "Expert to ask for (ops only; experts ask for themselves).") var expert: String?
        @Option(help: "While the request is pending, wait this long for the customer's decision (90s, 5m), showing progress; exits 0 once approved, 4 when rejected, 7 still pending.")
        var wait: String?

        func run() async throws {
            guard let role = AccessRole(rawValue: self.role) else { throw ValidationError("--role must be admin, user or viewer") }
            let seconds = try parseDurationSeconds(self.duration, option: "--duration")
            let waitSeconds = try self.wait.map { try parseDurationSeconds($0, option: "--wait") }
            let body = CreateAccessRequest(clusterID: self.cluster, expert: self.expert, reason: self.reason, role: role, durationSeconds: seconds)
            let client = try self.relay.client()
            var request: AccessRequestRecord
            var failure: (String, Int32)?
            do {
                request = try await client.call(RelayEndpoints.createRequest, body: body)
                if let waitSeconds, request.state == .pending {
                    var line = WaitLine(seconds: waitSeconds)
                    let outcome = try await ApprovalWait(client: client, cluster: request.clusterID).wait(for: request.id, seconds: waitSeconds) { request, mode, waited in
                        line.show(SessionWait.pendingText(request, mode: mode), waited: waited, intro: nil)
                    }
                    line.finish()
                    switch outcome {
                    case .approved(let final), .ended(let final), .stillPending(let final): request = final
                    }
                    failure = SessionWait.failure(outcome, seconds: waitSeconds)
                }
            } catch let error as APIError {
                self.relay.fail(error)
            } catch let error as ApprovalWaitError {
                throw relayctlFailure("\(error)", RelayCtlExit.failure)
            }
            // The request as it stands is printed whatever the outcome: a script learns its ID.
            if self.relay.json {
                print(String(decoding: try APIJSON.encoder().encode(request), as: UTF8.self))
            } else if failure == nil {
                print(Self.human(request))
            }
            if let (message, code) = failure { throw relayctlFailure(message, code) }
        }

        static func human(_ request: AccessRequestRecord) -> String {
            switch request.state {
            case .approved:
                return "request \(request.id) approved (\(request.changedBy)) until \(HumanFormat.time(request.expiresAt))\nnext: relayctl session open --cluster \(request.clusterID)"
            default:
                return "request \(request.id) is pending customer approval; the cluster's connector shows it to the customer at its next heartbeat\nnext: relayctl requests list --cluster \(request.clusterID), or wait with relayctl session open --cluster \(request.clusterID)"
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List access requests (experts see their own).")
        @OptionGroup var relay: RelayOptions
        @Option(help: "Only this cluster.") var cluster: String?
        @Option(help: "Only these states, comma separated: pending,approved,expired,revoked,rejected.") var state: String?

        func run() async throws {
            try await self.relay.run({ try await $0.call(RelayEndpoints.requests, query: [("cluster", self.cluster), ("state", self.state)]) }) { requests in
                TextTable.render(
                    ["ID", "CLUSTER", "EXPERT", "ROLE", "DURATION", "STATE", "CHANGED BY", "CHANGED AT", "EXPIRES", "REASON"],
                    requests.map {
                        // An ended request says why in its state (a customer's rejection reason, a revocation's).
                        [String($0.id), $0.clusterID, $0.expert, $0.role.rawValue, formatMilliseconds($0.durationSeconds * 1000),
                         $0.state.rawValue + endNote($0),
                         $0.changedBy, HumanFormat.time($0.changedAt), HumanFormat.time($0.expiresAt), $0.reason]
                    })
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a request: its tunnels and sessions close within seconds.")
        @OptionGroup var relay: RelayOptions
        @Argument(help: "Request ID.") var id: Int64
        @Option(help: "Shown to the engineer whose session ends.") var reason: String?

        func run() async throws {
            try await self.relay.run({ try await $0.call(RelayEndpoints.revokeRequest, String(self.id), body: RevokeRequest(reason: self.reason)) }) {
                "request \($0.id) revoked by \($0.changedBy) at \(HumanFormat.time($0.changedAt))"
            }
        }
    }
}

// MARK: sessions

struct Sessions: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Expert sessions.", subcommands: [List.self, Kill.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Live sessions (--all: ended ones too).")
        @OptionGroup var relay: RelayOptions
        @Flag(help: "Include ended sessions.") var all = false

        func run() async throws {
            try await self.relay.run({ try await $0.call(RelayEndpoints.sessions, query: [("all", self.all ? "true" : nil)]) }) { sessions in
                TextTable.render(
                    ["SESSION", "EXPERT", "CLUSTER", "NODE", "COMPONENT", "ROLE", "REQUEST", "STARTED", "ENDED", "REQUESTS", "IN", "OUT", "END REASON"],
                    sessions.map {
                        [$0.id, $0.expert, $0.clusterID, $0.node ?? "any", $0.component, $0.role.rawValue, String($0.requestID),
                         HumanFormat.time($0.startedAt), HumanFormat.time($0.endedAt), String($0.requests), HumanFormat.bytes($0.bytesIn),
                         HumanFormat.bytes($0.bytesOut), $0.endReason ?? "-"]
                    })
            }
        }
    }

    struct Kill: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "End a live session (ops); the engineer is told who ended it.")
        @OptionGroup var relay: RelayOptions
        @Argument(help: "Session ID.") var id: String

        func run() async throws {
            try await self.relay.run({ try await $0.call(RelayEndpoints.killSession, self.id) }) {
                "session \($0.id) of \($0.expert) will be closed within seconds"
            }
        }
    }
}

// MARK: tokens

struct Tokens: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "API tokens (ops).", subcommands: [Create.self, List.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a token; it is printed once, the relay keeps only a hash.")
        @OptionGroup var relay: RelayOptions
        @Option(help: "Name (the expert's or operator's name).") var name: String
        @Option(help: "expert or ops.") var role: String
        @Option(help: "Lifetime: 30d, 8h. Without it the token lasts until revoked.") var ttl: String?

        func run() async throws {
            guard let role = TokenRole(rawValue: self.role) else { throw ValidationError("--role must be expert or ops") }
            let ttl = try self.ttl.map { try parseDurationSeconds($0, option: "--ttl") }
            try await self.relay.run({ try await $0.call(RelayEndpoints.createToken, body: CreateTokenRequest(name: self.name, role: role, ttlSeconds: ttl)) }) {
                "token \($0.token.name) (\($0.token.role.rawValue)), shown once:\n\($0.secret)\nnext: give it to its owner, who sets RELAYCTL_TOKEN or uses --token-file"
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tokens (never their secrets).")
        @OptionGroup var relay: RelayOptions

        func run() async throws {
            try await self.relay.run({ try await $0.call(RelayEndpoints.tokens) }) { tokens in
                TextTable.render(
                    ["NAME", "ROLE", "CREATED", "CREATED BY", "EXPIRES", "REVOKED"],
                    tokens.map { token in
                        [token.name, token.role.rawValue, HumanFormat.time(token.createdAt), token.createdBy, HumanFormat.time(token.expiresAt),
                         token.revokedAt.map { HumanFormat.time($0) }.map { [$0, "by", token.revokedBy ?? "?"].joined(separator: " ") } ?? "-"]
                    })
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a token; its live sessions close within seconds.")
        @OptionGroup var relay: RelayOptions
        @Argument(help: "Token name.") var name: String

        func run() async throws {
            try await self.relay.run({ try await $0.call(RelayEndpoints.revokeToken, self.name) }) {
                "token \($0.name) revoked"
            }
        }
    }
}

// MARK: audit

struct Audit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The relay's audit trail (ops).", subcommands: [Export.self])

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stream audit records, oldest first: JSON lines with --json, a table otherwise; --follow keeps printing new ones.",
            discussion: "For a SIEM: relayctl audit export --json --follow --after LAST_ID (a shipper that restarts resumes after the last ID it sent)")
        @OptionGroup var relay: RelayOptions
        @Option(help: "Only records at or after this time (ISO 8601, e.g. 2026-11-21T09:00:00Z).") var since: String?
        @Option(help: "Only records after this ID.") var after: Int64 = 0
        @Flag(help: "Keep running and print records as they are written (Ctrl-C or SIGTERM ends).") var follow = false
        @Option(help: "With --follow, how often to ask the relay for new records (e.g. 2s).") var interval: String = "2s"

        func run() async throws {
            guard let pause = parseDurationMilliseconds(self.interval), pause >= 100 else {
                throw ValidationError("--interval must be a duration of at least 100ms, such as 2s")
            }
            let client = try self.relay.client()
            let encoder = APIJSON.encoder()
            var after = self.after
            var header = !self.relay.json
            do {
                // Page by page, printing as it goes: memory stays bounded however long the trail.
                while true {
                    let page = try await client.call(
                        RelayEndpoints.audit, query: [("after", String(after)), ("limit", "1000"), ("since", self.since)])
                    for record in page.records {
                        if self.relay.json {
                            print(String(decoding: try encoder.encode(record), as: UTF8.self))
                        } else {
                            if header {
                                print(TextTable.render(["ID", "TIME", "ACTOR", "ACTION", "CLUSTER", "SUBJECT", "OUTCOME", "REASON", "REQUEST ID"], []))
                                header = false
                            }
                            print([String(record.id), HumanFormat.time(record.time), record.actor, record.action, record.clusterID ?? "-",
                                   record.subject ?? "-", record.outcome.rawValue, record.reason ?? "-", record.requestID ?? "-"].joined(separator: "  "))
                        }
                        after = record.id
                    }
                    fflush(stdout)  // a shipper reading the pipe gets each page now
                    if page.nextAfter != nil { continue }
                    guard self.follow else { break }
                    try await Task.sleep(for: .milliseconds(pause))
                }
            } catch let error as APIError {
                self.relay.fail(error)
            }
        }
    }
}

// MARK: relay nodes

struct Relays: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The relay nodes sharing one store.", subcommands: [List.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the relay nodes: tunnel URL, last seen, live (sent to connectors) or not.")
        @OptionGroup var relay: RelayOptions

        func run() async throws {
            try await self.relay.run({ try await $0.call(RelayEndpoints.relayNodes) }) { nodes in
                TextTable.render(
                    ["NODE", "TUNNEL URL", "LIVE", "LAST SEEN", "STARTED"],
                    nodes.map { [$0.id, $0.tunnelURL, $0.live ? "yes" : "no", HumanFormat.time($0.lastSeenAt), HumanFormat.time($0.startedAt)] })
            }
        }
    }
}
