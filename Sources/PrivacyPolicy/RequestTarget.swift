/// A request target after normalisation: what the connector forwards and what it matches the
/// customer's denied paths against. Components parse paths in many ways; the connector forwards
/// the normalised form, so the component sees exactly the path that was checked.
public struct NormalizedTarget: Equatable, Sendable {
    /// RFC 3986 section 6 normal form: unreserved characters decoded, other escapes in upper-case hex,
    /// dot segments resolved, duplicate slashes merged. This is what is forwarded.
    public var path: String
    /// The query as received (after `?`), forwarded unchanged.
    public var query: String?
    /// `path` with every escape decoded: what denied prefixes are compared with.
    public var decodedPath: String
    /// `decodedPath` with `;parameters` cut from every segment, as Tomcat, Jetty and Spring read a
    /// path before they route it; denied prefixes are compared with this too.
    public var parameterFreePath: String

    public var forwarded: String { self.path + (self.query.map { "?" + $0 } ?? "") }
}

/// Why a target is refused before any matching: each one is a known way to make a proxy and a
/// component disagree about which resource is meant.
public enum TargetRejection: Error, Equatable, Sendable, CustomStringConvertible {
    case absoluteForm
    case notOriginForm
    case tooLong(Int)
    case invalidCharacter
    case fragment
    case badEscape
    case encodedSlash
    case encodedPercent
    case backslash
    case controlCharacter
    case dotSegmentParameter

    public var description: String {
        switch self {
        case .absoluteForm: "absolute-form request targets (scheme://host/...) are refused: the connector only serves its components"
        case .notOriginForm: "only origin-form request targets (/path) are accepted"
        case .tooLong(let limit): "the request target is longer than \(limit) bytes"
        case .invalidCharacter: "the request target has characters outside printable ASCII"
        case .fragment: "a request target may not carry a #fragment"
        case .badEscape: "the path has a malformed %-escape"
        case .encodedSlash: "the path has an encoded slash or backslash (%2F, %5C)"
        case .encodedPercent: "the path has an encoded percent sign (%25): double encoding is refused"
        case .backslash: "the path has a backslash"
        case .controlCharacter: "the path has an encoded control character"
        case .dotSegmentParameter:
            "a path segment is empty, \".\" or \"..\" once its ;parameters are cut (\"/x/..;/y\", \"/;x/y\"): Java servers would resolve it past the checked path"
        }
    }
}

public enum RequestTargetNormalizer {
    public static let maximumLength = 8192

    public static func normalize(_ target: String) -> Result<NormalizedTarget, TargetRejection> {
        let bytes = Array(target.utf8)
        guard bytes.count <= maximumLength else { return .failure(.tooLong(maximumLength)) }
        guard bytes.first == UInt8(ascii: "/") else {
            return .failure(target.contains("://") ? .absoluteForm : .notOriginForm)
        }
        guard bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return .failure(.invalidCharacter) }
        if bytes.contains(UInt8(ascii: "#")) { return .failure(.fragment) }
        let queryStart = bytes.firstIndex(of: UInt8(ascii: "?"))
        let rawPath = bytes[..<(queryStart ?? bytes.endIndex)]
        let query = queryStart.map { String(decoding: bytes[($0 + 1)...], as: UTF8.self) }

        // 1. Escapes: decode the unreserved ones, upper-case the rest, refuse the dangerous ones.
        var normalized: [UInt8] = []
        normalized.reserveCapacity(rawPath.count)
        var index = rawPath.startIndex
        while index < rawPath.endIndex {
            let byte = rawPath[index]
            if byte == UInt8(ascii: "\\") { return .failure(.backslash) }
            guard byte == UInt8(ascii: "%") else {
                normalized.append(byte)
                index += 1
                continue
            }
            guard index + 2 < rawPath.endIndex,
                let high = hexValue(rawPath[index + 1]), let low = hexValue(rawPath[index + 2])
            else { return .failure(.badEscape) }
            let value = high << 4 | low
            switch value {
            case UInt8(ascii: "/"), UInt8(ascii: "\\"): return .failure(.encodedSlash)
            case UInt8(ascii: "%"): return .failure(.encodedPercent)
            case 0..<0x20, 0x7F: return .failure(.controlCharacter)
            default: break
            }
            if isUnreserved(value) {
                normalized.append(value)
            } else {
                normalized.append(contentsOf: [UInt8(ascii: "%"), hexDigit(high), hexDigit(low)])
            }
            index += 3
        }

        // 2. Segments: merge duplicate slashes, resolve "." and ".." (never above the root).
        let segments = normalized.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true).map { String(decoding: $0, as: UTF8.self) }
        var output: [String] = []
        for segment in segments {
            switch segment {
            case ".": continue
            case "..": if !output.isEmpty { output.removeLast() }
            default: output.append(segment)
            }
        }
        // 3. Path parameters: Java servers cut ";..." from each segment and then resolve dot
        //    segments again, so "/x/..;/admin" means "/admin" to them. A segment that is empty, "."
        //    or ".." without its parameters is refused (decoded, so "%2e%2e%3b" counts too).
        var parameterFree: [String] = []
        for segment in output {
            let decoded = percentDecoded(segment)
            guard let semicolon = decoded.firstIndex(of: ";") else {
                parameterFree.append(decoded)
                continue
            }
            let bare = decoded[..<semicolon]
            if bare.isEmpty || bare == "." || bare == ".." { return .failure(.dotSegmentParameter) }
            parameterFree.append(String(bare))
        }
        let endsInDirectory = normalized.last == UInt8(ascii: "/") || segments.last == "." || segments.last == ".."
        let trailing = endsInDirectory && !output.isEmpty ? "/" : ""
        let path = "/" + output.joined(separator: "/") + trailing
        return .success(
            NormalizedTarget(
                path: path, query: query, decodedPath: percentDecoded(path),
                parameterFreePath: "/" + parameterFree.joined(separator: "/") + trailing))
    }

    /// Decodes every escape (the normal form has no encoded slash or percent left, so segments stay put).
    static func percentDecoded(_ path: String) -> String {
        let bytes = Array(path.utf8)
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "%"), index + 2 < bytes.count, let high = hexValue(bytes[index + 1]),
                let low = hexValue(bytes[index + 2])
            {
                out.append(high << 4 | low)
                index += 3
            } else {
                out.append(bytes[index])
                index += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

private func isUnreserved(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
        return true
    case UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
        return true
    default:
        return false
    }
}

private func hexValue(_ byte: UInt8) -> UInt8? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
    default: nil
    }
}

private func hexDigit(_ value: UInt8) -> UInt8 {
    value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "A") + value - 10
}
