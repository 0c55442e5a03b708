import NIOHTTP1

/// The small parsers `LocalAccess` needs: a query string, cookies, a constant-time compare.
extension LocalAccess {
    struct QueryItem: Equatable {
        var text: Substring
        var name: Substring { self.text.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).first ?? "" }
        var value: String { String(self.text.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).dropFirst().first ?? "") }
    }

    static func split(_ uri: String) -> (path: String, query: [QueryItem]) {
        guard let mark = uri.firstIndex(of: "?") else { return (uri, []) }
        let query = uri[uri.index(after: mark)...].split(separator: "&").map { QueryItem(text: $0) }
        return (String(uri[..<mark]), query)
    }

    /// Every cookie of every Cookie header. Split on `;` only: a cookie's value may hold commas.
    static func cookies(_ headers: HTTPHeaders) -> [(name: String, value: String)] {
        headers["cookie"].flatMap { $0.split(separator: ";") }.compactMap { pair in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else { return nil }
            return (parts[0].trimmedSpaces, parts[1].trimmedSpaces)
        }
    }

    /// The component never sees relayctl's cookie: its value would let the component (or anything
    /// it logs to) drive the engineer's port. The other cookies pass as they came.
    static func removeCookie(named name: String, from headers: inout HTTPHeaders) {
        let values = headers["cookie"]
        guard values.contains(where: { $0.contains(name) }) else { return }
        headers.remove(name: "cookie")
        let kept = values.flatMap { $0.split(separator: ";") }.filter { pair in
            pair.split(separator: "=", maxSplits: 1).first.map { $0.trimmedSpaces != name } ?? true
        }.map { $0.trimmedSpaces }
        if !kept.isEmpty { headers.add(name: "cookie", value: kept.joined(separator: "; ")) }
    }

    /// Equal, in time that does not depend on where they differ.
    static func same(_ a: String, _ b: String) -> Bool {
        let a = Array(a.utf8), b = Array(b.utf8)
        guard a.count == b.count else { return false }
        return zip(a, b).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }
}

extension Substring {
    fileprivate var trimmedSpaces: String {
        String(self.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
