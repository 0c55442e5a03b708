import ArgumentParser
import ConfigKit
import Connector
import CustomerAudit
import Foundation
import NIOPosix
import PrivacyPolicy
import RelayAPI
import RelayCtlKit
import RelayModel

/// The customer's commands: they talk to the running connector over its control socket
/// (`state_dir/control.sock`), except `audit`, which reads the log files directly so it works
/// while the connector is stopped. Both are found from the state directory alone, so they work
/// while connector.yaml does not parse (the kill switch above all).
struct CustomerOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "Path to connector.yaml (see Config/connector.yaml); only its state_dir is read here.")
    var config: String = "connector.yaml"

    @Option(help: "The connector's state directory (env CONNECTOR_STATE_DIR; default: state_dir from --config, else connector-state beside it).")
    var stateDir: String?

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    @Option(name: .customLong("as"), help: "Your name in the audit log (default: $USER).")
    var user: String?

    var actor: String {
        if let user = self.user, !user.isEmpty { return user }
        if let name = ProcessInfo.processInfo.environment["USER"], !name.isEmpty { return name }
        return "uid-\(getuid())"
    }

    /// Flag, environment, then `state_dir` read on its own from the config file, then the default.
    var stateDirectory: String { self.stateDirectoryLookup.path }

    private var stateDirectoryLookup: (path: String, unread: String?) {
        if let directory = self.stateDir, !directory.isEmpty { return (directory, nil) }
        if let directory = ProcessInfo.processInfo.environment["CONNECTOR_STATE_DIR"], !directory.isEmpty { return (directory, nil) }
        return ConnectorConfig.stateDirectory(configPath: self.config)
    }

    func client() throws -> APIClient {
        let lookup = self.stateDirectoryLookup
        let path = ControlServer.socketPath(stateDirectory: lookup.path)
        let hint = lookup.unread.map { "is the connector running? \($0): pass --state-dir" } ?? "is the connector running?"
        return try APIClient(socketPath: path, peer: "the connector's control socket \(path) (\(hint))", group: MultiThreadedEventLoopGroup.singleton)
    }

    /// Where the connector writes its audit log, as it noted in its state directory; for a
    /// connector that never ran, the config file's setting or the default.
    func auditDirectory() -> String {
        let state = self.stateDirectory
        if let directory = (try? ConnectorState.load(directory: state))?.auditDirectory { return directory }
        if let config = try? ConnectorConfig.load(path: self.config) { return config.audit.directory }
        return (state as NSString).appendingPathComponent("audit")
    }

    func print<T: Encodable>(json value: T) throws {
        Swift.print(String(decoding: try APIJSON.encoder().encode(value), as: UTF8.self))
    }
}

/// Runs a control call; errors print the connector's message and exit with relayctl's codes.
func controlCall<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as APIError {
        FileHandle.standardError.write(Data("connector: \(error.message)\n".utf8))
        throw ExitCode(RelayCtlExit.forError(error))
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Mode, tunnels and live sessions of the running connector.")
    @OptionGroup var options: CustomerOptions

    func run() async throws {
        let status: ConnectorStatus = try await controlCall { try await self.options.client().get(ControlPath.status) }
        if self.options.json { return try self.options.print(json: status) }
        print("cluster \(status.cluster), node \(status.node)")
        print("mode: \(status.mode.rawValue)\(overrideNote(status.modeOverride, fileMode: status.configFileMode, fileLoads: status.configProblem == nil))")
        if let path = status.configFile {
            if let problem = status.configProblem {
                print("CONFIG FILE DOES NOT LOAD: \(problem)")
                print("  running on the settings read at \(HumanFormat.time(status.settingsLoadedAt)); fix \(path), then `connector reload`")
            } else {
                print("config file: \(path) (settings in force read at \(HumanFormat.time(status.settingsLoadedAt)))")
            }
        }
        print("components: \(status.components.joined(separator: ", "))")
        print("last heartbeat: \(HumanFormat.time(status.lastHeartbeatAt)), access requested: \(status.remoteUIRequested.map { $0 ? "yes" : "no" } ?? "-")")
        if let failure = status.heartbeatFailure { print("HEARTBEATS FAIL: \(failure)") }
        print("tunnels: \(status.tunnels.isEmpty ? "none" : status.tunnels.joined(separator: ", "))")
        print("live sessions: \(status.liveSessions), requests waiting for approval: \(status.pendingRequests)")
        if let figures = status.figures {
            print(
                "since \(HumanFormat.time(figures.since)): \(figures.heartbeatsAnswered) heartbeats answered, \(figures.heartbeatsFailed) failed; "
                    + "\(figures.tunnelsOpened) tunnels opened; \(figures.requestsAllowed) requests allowed, \(figures.requestsRefused) refused; "
                    + "\(figures.bytesToCluster) bytes to the cluster, \(figures.bytesToExperts) to experts")
        }
        print("audit log: \(status.auditDirectory)")
        if let failure = status.auditFailure {
            print("AUDIT LOG NOT WRITABLE, every request is refused: \(failure)")
        }
    }
}

struct Requests: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Access requests waiting for the customer's approval (privacy mode approvedOnly), and decisions.",
        subcommands: [List.self, Approve.self, Reject.self, Revoke.self], defaultSubcommand: List.self)

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Requests waiting, then decisions taken, then requests the relay ended.",
            discussion: "--watch follows them: the connector asks the relay every 5 s while you watch, so a new request shows within seconds.")
        @OptionGroup var options: CustomerOptions
        @Flag(help: "Keep following (Ctrl-C ends); redraws on a terminal, prints changed lines otherwise.") var watch = false

        func run() async throws {
            guard self.watch else {
                let requests: ConnectorRequests = try await controlCall { try await self.options.client().get(ControlPath.requests) }
                if self.options.json { return try self.options.print(json: requests) }
                return print(requestTable(requests))
            }
            try await watchRequests(self.options)
        }
    }

    struct Approve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Approve a waiting request; kept on disk and sent with the next heartbeat.",
            discussion: "Shows the request (expert, role, duration, reason) and approves exactly that: if the relay's copy changed meanwhile, nothing is approved.")
        @OptionGroup var options: CustomerOptions
        @Argument var request: Int64
        @Option(help: "Why (recorded in the audit log).") var reason: String?

        func run() async throws { try await decide(self.options, self.request, .approve, self.reason) }
    }

    struct Reject: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Reject a waiting request.")
        @OptionGroup var options: CustomerOptions
        @Argument var request: Int64
        @Option(help: "Why (recorded in the audit log).") var reason: String?

        func run() async throws { try await decide(self.options, self.request, .reject, self.reason) }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Take back access: every stream of the request is refused from now on and its sessions end; the relay revokes it too.")
        @OptionGroup var options: CustomerOptions
        @Argument var request: Int64
        @Option(help: "Why (recorded in the audit log).") var reason: String?

        func run() async throws {
            let approval: CustomerApproval = try await controlCall {
                try await self.options.client().post(ControlPath.revoke(self.request), CustomerActor(by: self.options.actor, reason: self.reason))
            }
            if self.options.json { return try self.options.print(json: approval) }
            print("request \(self.request) revoked (\(visibleText(approval.expert))); its sessions ended, the relay is told with the next heartbeat")
        }
    }
}

let requestColumns = ["REQUEST", "EXPERT", "ROLE", "DURATION", "REASON", "STATE", "DECIDED BY", "UNTIL"]

func requestTable(_ requests: ConnectorRequests) -> String {
    TextTable.render(requestColumns, requestRows(requests))
}

/// Waiting, then decided (with the customer's reason, and how the relay ended an approval since),
/// then ended at the relay without a decision here.
func requestRows(_ requests: ConnectorRequests) -> [[String]] {
    let ended = Dictionary(requests.ended.map { ($0.requestID, $0) }) { first, _ in first }
    let decided = Set(requests.decided.map(\.requestID))
    return requests.pending.map {
            [String($0.requestID), $0.expert, $0.role.rawValue, formatMilliseconds($0.durationSeconds * 1000), $0.reason, "waiting", "-", "-"]
        }
            + requests.decided.map {
                let state = $0.verdict.rawValue + ($0.customerReason.map { ": \($0)" } ?? "") + ($0.deliveredAt == nil ? " (not yet sent)" : "")
                // An approval the relay ended since (revoked by an operator, expired) says so.
                let endedSince = $0.verdict == .approved ? ended[$0.requestID] : nil
                let duration = $0.verdict == .revoked ? "-" : formatMilliseconds(Int64($0.expiresAt.timeIntervalSince($0.decidedAt) * 1000))
                return [
                    String($0.requestID), $0.expert, $0.role.rawValue, duration, $0.reason,
                    endedSince.map { "\(state), then \($0.state) at the relay: \($0.reason)" } ?? state,
                    $0.by, $0.verdict == .approved && endedSince == nil ? HumanFormat.time($0.expiresAt) : "-",
                ]
            }
            + requests.ended.filter { !decided.contains($0.requestID) }.map {
                [String($0.requestID), "-", "-", "-", "-", "\($0.state) at the relay: \($0.reason)", "-", "-"]
            }
}

/// `requests list --watch`: asks the connector to heartbeat every 5 s and shows what changed.
private func watchRequests(_ options: CustomerOptions) async throws {
    let terminal = isatty(STDOUT_FILENO) == 1
    var shown = Set<String>()
    var tick = 0
    while !Task.isCancelled {
        // Every fifth second the relay is asked now (it answers with a 5 s interval itself while
        // something waits for the customer).
        let path = tick % 5 == 0 ? ControlPath.refresh : ControlPath.requests
        let requests: ConnectorRequests = try await controlCall {
            path == ControlPath.refresh ? try await options.client().post(path, CustomerActor(by: options.actor)) : try await options.client().get(path)
        }
        tick += 1
        if options.json {
            let line = String(decoding: try APIJSON.encoder().encode(requests), as: UTF8.self)
            if shown.insert(line).inserted { print(line) }
        } else if terminal {
            print("\u{1B}[H\u{1B}[2J" + "requests at \(HumanFormat.time(Date())) (Ctrl-C ends)\n" + requestTable(requests))
        } else {
            // Not a terminal: a header once, then each row once (tab-separated), when it first appears or changes.
            if shown.isEmpty { print(requestColumns.joined(separator: "\t")) }
            shown.insert("")
            for row in requestRows(requests).map({ $0.map(visibleText).joined(separator: "\t") }) where shown.insert(row).inserted { print(row) }
        }
        fflush(stdout)
        try await Task.sleep(for: .seconds(1))
    }
}

private func overrideNote(_ override: ModeOverride?, fileMode: PrivacyMode?, fileLoads: Bool) -> String {
    guard let override else { return fileLoads ? " (from the config file)" : " (from the config file as last loaded; it does not load now)" }
    let file = fileMode.map { "the config file says \($0.rawValue)" } ?? "the config file does not load now"
    return " (set by \(override.by) with `connector mode` at \(HumanFormat.time(override.at)); \(file); `connector mode config` goes back to the file)"
}

private func decide(_ options: CustomerOptions, _ request: Int64, _ verdict: ApprovalDecision.Verdict, _ reason: String?) async throws {
    // What the customer decides on is shown first, and sent along: the connector refuses if it changed.
    let requests: ConnectorRequests = try await controlCall { try await options.client().get(ControlPath.requests) }
    let seen = requests.pending.first { $0.requestID == request }
    if let seen, !options.json {
        print(
            "request \(request): \(visibleText(seen.expert)) as \(seen.role.rawValue) for \(formatMilliseconds(seen.durationSeconds * 1000)), reason: \(visibleText(seen.reason))")
    }
    let approval: CustomerApproval = try await controlCall {
        try await options.client().post(ControlPath.decide(request, verdict), CustomerActor(by: options.actor, reason: reason, expected: seen))
    }
    if options.json { return try options.print(json: approval) }
    if approval.verdict == .approved {
        print("request \(request) approved for \(approval.expert) (\(approval.role.rawValue)) until \(HumanFormat.time(approval.expiresAt))")
    } else {
        print("request \(request) rejected")
    }
}

struct Sessions: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Expert sessions this connector served.", subcommands: [List.self, Kill.self], defaultSubcommand: List.self)

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Live sessions first, then those ended in the last day.")
        @OptionGroup var options: CustomerOptions

        func run() async throws {
            let sessions: [ConnectorSession] = try await controlCall { try await self.options.client().get(ControlPath.sessions) }
            if self.options.json { return try self.options.print(json: sessions) }
            print(
                TextTable.render(
                    ["SESSION", "EXPERT", "ROLE", "COMPONENT", "REQUEST", "STARTED", "LAST ACTIVE", "REQUESTS", "REFUSED", "IN", "OUT", "ENDED"],
                    sessions.map {
                        [$0.id, $0.expert, $0.role.rawValue, $0.component, String($0.accessRequest), HumanFormat.time($0.startedAt),
                         HumanFormat.time($0.lastActivityAt), String($0.requests), String($0.refused), HumanFormat.bytes($0.bytesIn),
                         HumanFormat.bytes($0.bytesOut), $0.endReason ?? "live"]
                    }))
        }
    }

    struct Kill: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "End a session now: its requests are cut and the expert is told why.")
        @OptionGroup var options: CustomerOptions
        @Argument var session: String

        func run() async throws {
            let session: ConnectorSession = try await controlCall {
                try await self.options.client().post(ControlPath.kill(self.session), CustomerActor(by: self.options.actor))
            }
            if self.options.json { return try self.options.print(json: session) }
            print("session \(session.id) of \(session.expert) ended")
        }
    }
}

struct Mode: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Set the privacy mode now, over the config file's (kept across restarts); `config` goes back to the file's.",
        discussion: "`connector mode disabled` is the kill switch: every tunnel closes within seconds.")
    @OptionGroup var options: CustomerOptions
    @Argument(help: "disabled, all, readOnly, approvedOnly or config") var mode: String

    func run() async throws {
        let change: ModeChange
        if self.mode == "config" {
            change = ModeChange(mode: nil, by: self.options.actor)
        } else if let mode = PrivacyMode(rawValue: self.mode) {
            change = ModeChange(mode: mode, by: self.options.actor)
        } else {
            throw ValidationError("mode must be disabled, all, readOnly, approvedOnly or config")
        }
        let applied: SettingsApplied = try await controlCall { try await self.options.client().post(ControlPath.mode, change) }
        if self.options.json { return try self.options.print(json: applied) }
        printApplied(applied)
    }
}

struct Reload: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Read the config file again (as SIGHUP does) and apply its privacy settings.")
    @OptionGroup var options: CustomerOptions

    func run() async throws {
        let applied: SettingsApplied = try await controlCall {
            try await self.options.client().post(ControlPath.reload, CustomerActor(by: self.options.actor))
        }
        if self.options.json { return try self.options.print(json: applied) }
        printApplied(applied)
    }
}

private func printApplied(_ applied: SettingsApplied) {
    print("mode \(applied.mode.rawValue); \(applied.changes.isEmpty ? "no change" : applied.changes.joined(separator: "; "))")
    if let problem = applied.configProblem {
        print("note: the config file does not load (\(problem)); the settings in force are the last that did")
    }
    if let override = applied.modeOverride, let fileMode = applied.fileMode, override.mode != fileMode {
        print(
            "note: the config file says mode \(fileMode.rawValue), but \(override.by) set \(override.mode.rawValue) with `connector mode` at \(HumanFormat.time(override.at)); `connector mode config` goes back to the file")
    }
    if applied.streamsReset > 0 || applied.sessionsEnded > 0 {
        print("\(applied.streamsReset) running requests reset, \(applied.sessionsEnded) sessions ended")
    }
}

struct Audit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The customer's audit log (read from disk; works while the connector is stopped).",
        subcommands: [Tail.self, Export.self, Verify.self])

    /// For a SIEM: every record as stored (JSON lines, chain fields included), then, with
    /// `--follow`, each new one as it is written, across rotations.
    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print every record as stored, one JSON line each (seq, prev and hash included); --follow keeps printing new ones.",
            discussion: "A shipper that restarts passes the last seq it sent: connector audit export --follow --after 1234")
        @OptionGroup var options: CustomerOptions
        @Flag(help: "Keep running and print records as they are written (Ctrl-C or SIGTERM ends).") var follow = false
        @Option(help: "Skip records up to this seq.") var after: Int64 = 0
        @Option(help: "With --follow, how often to look for new records (e.g. 500ms, 2s).") var interval: String = "1s"

        func run() async throws {
            guard let milliseconds = parseDurationMilliseconds(self.interval), milliseconds >= 10 else {
                throw ValidationError("--interval must be a duration such as 500ms or 2s")
            }
            var follower = AuditFollower(directory: self.options.auditDirectory(), afterSeq: self.after)
            var gapsSaid = 0
            while true {
                // Without --follow: everything now, the last lines included without waiting a poll.
                for line in try follower.poll() + (self.follow ? [] : try follower.drain()) { print(line) }
                fflush(stdout)  // a shipper reading the pipe gets each batch now
                for gap in follower.gaps.dropFirst(gapsSaid) {
                    FileHandle.standardError.write(
                        Data("connector: records \(gap.lowerBound)...\(gap.upperBound) were removed (retention) before they could be read\n".utf8))
                }
                gapsSaid = follower.gaps.count
                guard self.follow else { return }
                try await Task.sleep(for: .milliseconds(milliseconds))
            }
        }
    }

    struct Tail: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The last records, oldest first.")
        @OptionGroup var options: CustomerOptions
        @Option(name: [.customShort("n"), .long], help: "How many records.") var lines: Int = 20

        func run() async throws {
            let entries = try AuditVerifier.tail(directory: self.options.auditDirectory(), count: max(0, self.lines))
            for entry in entries {
                if self.options.json {
                    print(AuditVerifier.json(entry))
                } else {
                    print(describe(entry))
                }
            }
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the hash chain of every file; names the first edited, inserted, deleted or moved line.")
        @OptionGroup var options: CustomerOptions

        func run() async throws {
            let result = try AuditVerifier.verify(directory: self.options.auditDirectory())
            if self.options.json {
                struct Report: Encodable {
                    var ok: Bool
                    var files: Int
                    var records: Int
                    var firstSeq: Int64?
                    var lastSeq: Int64?
                    var prunedThrough: Int64?
                    var problem: String?
                }
                try self.options.print(
                    json: Report(
                        ok: result.ok, files: result.files, records: result.records, firstSeq: result.firstSeq, lastSeq: result.lastSeq,
                        prunedThrough: result.prunedThrough, problem: result.problem?.description))
            } else if let problem = result.problem {
                print("audit log NOT intact: \(problem) (checked \(result.records) records)")
            } else {
                let range = result.firstSeq.map { "records \($0)...\(result.lastSeq ?? $0)" } ?? "no records"
                let pruned = result.prunedThrough.map { " (records up to \($0) removed by retention, as recorded)" } ?? ""
                print("audit log intact: \(result.files) files, \(range)\(pruned)")
            }
            if !result.ok { throw ExitCode(1) }
        }
    }
}

private func describe(_ entry: AuditEntry) -> String {
    var parts = [HumanFormat.time(entry.time), "#\(entry.seq)", entry.event]
    if let expert = entry.expert { parts.append("expert=\(expert)") }
    if let role = entry.role { parts.append("role=\(role)") }
    if let session = entry.session { parts.append("session=\(session)") }
    if let component = entry.component { parts.append("component=\(component)") }
    if let method = entry.method, let path = entry.path { parts.append("\(method) \(path)") }
    if let status = entry.status { parts.append("status=\(status)") }
    if let decision = entry.decision { parts.append(decision) }
    if let bytesIn = entry.bytesIn, let bytesOut = entry.bytesOut { parts.append("in=\(bytesIn) out=\(bytesOut)") }
    if let actor = entry.actor { parts.append("by=\(actor)") }
    if let detail = entry.detail, !detail.isEmpty { parts.append(detail) }
    if let reason = entry.reason { parts.append("(\(reason))") }
    return parts.joined(separator: " ")
}
