import ArgumentParser
import Foundation
import RelayAPI
import RelayCtlKit
import RelayModel
import TunnelCore

/// Dials a session until the relay accepts it, waiting (with a progress line) while the request
/// is pending the customer's approval or the connector has not dialed in yet, up to one deadline
/// for both.
struct SessionWait {
    let seconds: Int64
    let cluster: String
    let approval: ApprovalWait
    let start = ContinuousClock.now

    func connect(_ session: SessionClient) async throws {
        var line = WaitLine(seconds: self.seconds)
        while true {
            do {
                try await session.connect()
                line.finish()
                return
            } catch let error as DialError {
                guard case .rejected(let status) = error.kind else {
                    // Reached but slow to upgrade (a loaded relay): tried again within --wait. A
                    // refused connection or a TLS failure (a wrong --relay or --ca) is said at once.
                    let waited = ContinuousClock.now - self.start
                    if error.kind == .timedOut && waited < .seconds(self.seconds) {
                        line.show("the relay was slow to answer; trying again", waited: waited, intro: error.message)
                        continue
                    }
                    line.finish()
                    FileHandle.standardError.write(Data("relayctl: \(error.message); check --relay, --ca and that the relay is running\n".utf8))
                    throw ExitCode(RelayCtlExit.unreachable)
                }
                let relaySaid = error.relayMessage ?? error.message
                if status == 503 {
                    // Authorized; the connector dials at its next heartbeat.
                    let waited = ContinuousClock.now - self.start
                    line.show("waiting for the connector to dial in", waited: waited, intro: relaySaid)
                    if waited >= .seconds(self.seconds) {
                        line.finish()
                        FileHandle.standardError.write(
                            Data("relayctl: gave up after \(self.seconds) s: \(error.message); check the cluster's connector (relayctl clusters show \(self.cluster)), then retry\n".utf8))
                        throw ExitCode(RelayCtlExit.timedOut)
                    }
                    try await Task.sleep(for: .seconds(1))
                    continue
                }
                if status == 403, let pending = try? await self.approval.pendingRequest() {
                    try await self.waitForApproval(pending, line: &line)
                    continue
                }
                line.finish()
                FileHandle.standardError.write(Data("relayctl: the relay refused the session (\(status)): \(relaySaid)\n".utf8))
                throw ExitCode(RelayCtlExit.forStatus(status))
            } catch let error as ExitCode {
                throw error
            } catch {
                line.finish()
                FileHandle.standardError.write(Data("relayctl: cannot reach the relay: \(describeConnectionError(error))\n".utf8))
                throw ExitCode(RelayCtlExit.unreachable)
            }
        }
    }

    /// Returns once the request is approved; exits when it ends or the wait runs out.
    private func waitForApproval(_ pending: AccessRequestRecord, line: inout WaitLine) async throws {
        let left = max(0, self.seconds - (ContinuousClock.now - self.start).components.seconds)
        let already = ContinuousClock.now - self.start
        var shown = line
        let outcome: ApprovalWait.Outcome
        do {
            outcome = try await self.approval.wait(for: pending.id, seconds: left) { request, mode, waited in
                shown.show(Self.pendingText(request, mode: mode), waited: already + waited, intro: nil)
            }
        } catch {
            shown.finish()
            throw relayctlFailure("while waiting for request \(pending.id): \(error)", RelayCtlExit.unreachable)
        }
        line = shown
        try Self.finish(outcome, line: &line, seconds: self.seconds)
    }

    static func pendingText(_ request: AccessRequestRecord, mode: PrivacyMode?) -> String {
        "waiting for the customer to approve request \(request.id) (\(mode?.rawValue ?? "mode not reported yet"))"
    }

    /// Says how a wait ended: nothing more when approved; otherwise a line and the exit code.
    static func finish(_ outcome: ApprovalWait.Outcome, line: inout WaitLine, seconds: Int64) throws {
        line.finish()
        if let (message, code) = Self.failure(outcome, seconds: seconds) { throw relayctlFailure(message, code) }
    }

    /// Why a wait that did not end in approval failed, and its exit code (nil when approved).
    static func failure(_ outcome: ApprovalWait.Outcome, seconds: Int64) -> (String, Int32)? {
        switch outcome {
        case .approved:
            return nil
        case .ended(let request):
            return ("\(request.endedLine); ask for access again (relayctl requests create)", RelayCtlExit.denied)
        case .stillPending(let request):
            return (
                "gave up after \(seconds) s: request \(request.id) is still pending the customer's approval; the customer approves it on the cluster with `connector requests approve \(request.id)`",
                RelayCtlExit.timedOut
            )
        }
    }
}

/// One progress line on stderr: a terminal gets it redrawn in place; a file or pipe gets a line
/// at the start and every 30 s (a log should not fill with one line a second).
struct WaitLine {
    let seconds: Int64
    private var shownText: String?
    private var lastPrinted: Int64 = -1
    private let terminal = isatty(STDERR_FILENO) == 1

    init(seconds: Int64) { self.seconds = seconds }

    /// - Parameter intro: said once above the line when it is first shown (the relay's message).
    mutating func show(_ text: String, waited: Duration, intro: String?) {
        let waited = waited.components.seconds
        if self.terminal {
            let head = self.shownText == nil ? intro.map { "relayctl: \($0)\n" } ?? "" : "\r\u{1B}[K"
            FileHandle.standardError.write(Data("\(head)\(text)... \(waited) s".utf8))
        } else if self.shownText != text || waited / 30 > self.lastPrinted / 30 {
            let head = self.shownText == nil ? intro.map { "\($0); " } ?? "" : ""
            FileHandle.standardError.write(Data("relayctl: \(head)\(text)... \(waited) s of \(self.seconds) s\n".utf8))
            self.lastPrinted = waited
        }
        self.shownText = text
    }

    /// Ends a redrawn line, so what follows starts on its own.
    mutating func finish() {
        if self.terminal && self.shownText != nil { FileHandle.standardError.write(Data("\n".utf8)) }
        self.shownText = nil
    }
}
