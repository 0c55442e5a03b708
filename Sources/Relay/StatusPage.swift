import Foundation
import RelayAPI
import RelayModel

/// The operators' status page (`/ops/status`): server-rendered HTML, no script, refreshes itself.
/// Every value that came from someone (names, descriptions, reasons) is escaped.
enum StatusPage {
    static let refreshSeconds = 10

    static func render(_ status: RelayStatus) -> String {
        var html = Self.head(title: "Relay status", refresh: true)
        html += "<header><h1>Relay status</h1><p>answered by <b>\(e(status.node))</b> at \(e(Self.time(status.generatedAt))); "
        html += "refreshes every \(Self.refreshSeconds) s</p>"
        html += "<form method=\"post\" action=\"/ops/sign-out\"><button>Sign out</button></form></header>"

        html += Self.section("Relay nodes", status.relayNodes.count, ["node", "URL", "state", "last seen", "tunnels", "sessions", "up since"]) {
            status.relayNodes.map { node in
                [Self.strong(node.id), e(node.tunnelURL), node.live ? Self.badge("live", "ok") : Self.badge("silent", "bad"), e(Self.time(node.lastSeenAt)),
                 String(node.tunnels), String(node.sessions), e(Self.time(node.startedAt))]
            }
        }
        html += Self.section("Clusters", status.clusters.count, ["cluster", "remote access", "node", "mode", "last heartbeat", "health", "tunnels here"]) {
            status.clusters.flatMap { detail -> [[String]] in
                let flag = detail.remoteUIRequested ? Self.badge("requested", "warn") : Self.badge("off", "idle")
                guard !detail.nodes.isEmpty else { return [[Self.strong(detail.cluster.id), flag, "no node yet", "-", "-", "-", "-"]] }
                return detail.nodes.enumerated().map { index, node in
                    [index == 0 ? Self.strong(detail.cluster.id) : "", index == 0 ? flag : "", e(node.record.nodeID),
                     e(node.record.privacyMode.rawValue), e(Self.time(node.record.lastHeartbeatAt)), Self.health(node.health),
                     String(node.tunnelsHere)]
                }
            }
        }
        html += Self.section("Active sessions", status.sessions.count, ["expert", "cluster", "node", "component", "role", "relay node", "started", "requests", "bytes in / out"]) {
            status.sessions.map { session in
                [Self.strong(session.expert), e(session.clusterID), e(session.node ?? "any"), e(session.component), e(session.role.rawValue),
                 e(session.relayNode), e(Self.time(session.startedAt)), String(session.requests), "\(session.bytesIn) / \(session.bytesOut)"]
            }
        }
        html += Self.requests("Pending requests", status.pendingRequests, last: "waiting since") { e(Self.time($0.createdAt)) }
        html += Self.requests("Active requests", status.activeRequests, last: "expires") { e($0.expiresAt.map(Self.time) ?? "-") }
        return html + "</body></html>\n"
    }

    static func signIn(problem: String?) -> String {
        var html = Self.head(title: "Relay status: sign in", refresh: false)
        html += "<header><h1>Relay status</h1></header><section><h2>Sign in with an ops token</h2>"
        if let problem { html += "<p class=\"problem\">\(e(problem))</p>" }
        html += """
            <form method="post" action="/ops/sign-in"><label>Ops token <input type="password" name="token" autocomplete="off" required></label> \
            <button>Sign in</button></form><p>The token stays on this relay node, in memory, for 8 hours; the browser keeps only a \
            random session cookie.</p></section></body></html>

            """
        return html
    }

    // MARK: pieces

    private static func requests(_ title: String, _ requests: [AccessRequestRecord], last: String, _ when: (AccessRequestRecord) -> String) -> String {
        Self.section(title, requests.count, ["#", "expert", "cluster", "role", "reason", last]) {
            requests.map { [String($0.id), Self.strong($0.expert), e($0.clusterID), e($0.role.rawValue), e($0.reason), when($0)] }
        }
    }

    private static func section(_ title: String, _ count: Int, _ columns: [String], rows: () -> [[String]]) -> String {
        var html = "<section><h2>\(e(title)) <span class=\"count\">\(count)</span></h2>"
        let rows = rows()
        guard !rows.isEmpty else { return html + "<p class=\"none\">none</p></section>" }
        html += "<table><thead><tr>" + columns.map { "<th>\(e($0))</th>" }.joined() + "</tr></thead><tbody>"
        for row in rows { html += "<tr>" + row.map { "<td>\($0)</td>" }.joined() + "</tr>" }
        return html + "</tbody></table></section>"
    }

    private static func health(_ health: NodeHealth?) -> String {
        guard let health else { return "-" }
        let used = health.ramTotalBytes > 0 ? 100 - Int(health.ramFreeBytes * 100 / health.ramTotalBytes) : 0
        let kind = health.serverState == "running" ? "ok" : health.serverState == "stopping" ? "bad" : "warn"
        return Self.badge(health.serverState, kind) + e(String(format: " load %.2f on %d cores, RAM %d%% used", health.cpuLoad, health.cpuCores, used))
    }

    private static func badge(_ text: String, _ kind: String) -> String { "<span class=\"badge \(kind)\">\(e(text))</span>" }
    private static func strong(_ text: String) -> String { "<b>\(e(text))</b>" }

    static func time(_ date: Date) -> String { Timestamp.text(date) }

    private static func head(title: String, refresh: Bool) -> String {
        """
        <!doctype html><html lang="en"><head><meta charset="utf-8"><title>\(e(title))</title>\
        \(refresh ? "<meta http-equiv=\"refresh\" content=\"\(Self.refreshSeconds)\">" : "")\
        <meta name="viewport" content="width=device-width, initial-scale=1"><style>\(Self.style)</style></head><body>
        """
    }

    private static let style = """
        body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}\
        header{background:#1d2430;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:baseline}\
        header h1{font-size:18px;margin:0}header p{margin:0;color:#c5cbd6;flex:1}\
        section{margin:16px 24px;background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 16px}\
        h2{font-size:15px;margin:8px 0}.count{color:#6b7585;font-weight:normal}\
        table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}\
        th{color:#6b7585;font-weight:600;font-size:12px}.none{color:#6b7585}.problem{color:#a4262c}\
        .badge{border-radius:10px;padding:1px 8px;font-size:12px}.ok{background:#dff3e4;color:#1b6b33}\
        .bad{background:#fbe0e2;color:#a4262c}.warn{background:#fff1d6;color:#8a5a00}.idle{background:#eef0f3;color:#6b7585}
        """
}

/// HTML-escapes text from anyone (names, descriptions, reasons).
private func e(_ text: String) -> String {
    var out = ""
    out.reserveCapacity(text.utf8.count)
    for character in text {
        switch character {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.append(character)
        }
    }
    return out
}
