import Foundation
import RelayAPI
import RelayModel

/// Exit codes relayctl promises to scripts (docs/relayctl.md).
public enum RelayCtlExit {
    public static let ok: Int32 = 0
    /// Anything not listed below.
    public static let failure: Int32 = 1
    /// The relay could not be reached (address, CA, TLS, network).
    public static let unreachable: Int32 = 3
    /// The credentials were refused (401) or the caller may not do this (403).
    public static let denied: Int32 = 4
    /// No such cluster, request, session or token (404).
    public static let notFound: Int32 = 5
    /// The object is in a state that does not allow it (409: exists already, already ended).
    public static let conflict: Int32 = 6
    /// A wait ran out: `session open` for the customer's approval or the connector, `requests create --wait` for the approval.
    public static let timedOut: Int32 = 7
    /// The relay ended the session (request revoked or expired, session killed).
    public static let sessionEnded: Int32 = 8
    /// A bad argument or request body (400); argument-parser usage errors exit 64.
    public static let badRequest: Int32 = 2

    /// The exit code for an HTTP status from the relay.
    public static func forStatus(_ status: UInt) -> Int32 {
        switch status {
        case 400, 413: badRequest
        case 401, 403: denied
        case 404: notFound
        case 409: conflict
        default: failure
        }
    }

    public static func forError(_ error: APIError) -> Int32 {
        switch error.kind {
        case .status(let status, _): forStatus(status)
        case .unreachable: unreachable
        case .badResponse: failure
        }
    }
}

/// Human output: columns padded to the widest cell.
public enum TextTable {
    /// Every cell is shown with its control characters written out (`visibleText`): a reason an
    /// expert typed cannot move the cursor or forge a row.
    public static func render(_ header: [String], _ rows: [[String]]) -> String {
        let rows = rows.map { $0.map(visibleText) }
        var widths = header.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() where index < widths.count { widths[index] = max(widths[index], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
}

public enum HumanFormat {
    public static func time(_ date: Date?) -> String {
        date.map(Timestamp.text) ?? "-"
    }

    public static func bytes(_ value: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var amount = Double(value)
        var unit = 0
        while amount >= 1024 && unit < units.count - 1 {
            amount /= 1024
            unit += 1
        }
        return unit == 0 ? "\(value) B" : String(format: "%.1f %@", amount, units[unit])
    }
}
