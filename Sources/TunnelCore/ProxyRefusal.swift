import NIOCore
import NIOHTTP1
import RelayModel

/// A proxy hop answers the request itself instead of forwarding it: unknown component, no tunnel,
/// component down, policy refusal. Only that request fails; the connection and other streams go on.
public struct ProxyRefusal: Error, CustomStringConvertible, Sendable, Equatable {
    public var status: HTTPResponseStatus
    /// Stable machine-readable code, sent in `x-relay-error` and the JSON body.
    public var code: String
    /// One sentence for a person, saying what to do next where there is something to do.
    public var message: String
    /// More response headers (for example `x-relay-session-ended`).
    public var headers: [String: String]

    public init(_ status: HTTPResponseStatus, code: String, message: String, headers: [String: String] = [:]) {
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
    }

    /// A refusal of one request inside a session, its status from `StreamErrorCode.status`.
    public init(stream code: StreamErrorCode, _ message: String, headers: [String: String] = [:]) {
        self.init(HTTPResponseStatus(statusCode: code.status), code: code.rawValue, message: message, headers: headers)
    }

    public var description: String { "\(self.status.code) \(self.code): \(self.message)" }

    public static func badGateway(_ message: String) -> ProxyRefusal {
        ProxyRefusal(stream: .upstreamUnavailable, message)
    }

    /// A request head too large for the next HTTP/2 link.
    public static func requestHeadersTooLarge(_ budget: HeaderBudget) -> ProxyRefusal {
        ProxyRefusal(stream: .requestHeadersTooLarge, "the request's headers are larger than the relay carries (\(budget.listSize) bytes, \(budget.encodedSize) encoded); send fewer or smaller cookies or headers")
    }

    public static func requestTrailersTooLarge(_ budget: HeaderBudget) -> ProxyRefusal {
        ProxyRefusal(stream: .requestHeadersTooLarge, "the request's trailers are larger than the relay carries (\(budget.listSize) bytes, \(budget.encodedSize) encoded); send fewer or smaller trailer fields")
    }

    /// The JSON body: `{"error": code, "message": message}`.
    public func body(allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 64 + self.message.utf8.count)
        buffer.writeString("{\"error\":\(jsonString(self.code)),\"message\":\(jsonString(self.message))}\n")
        return buffer
    }

    public func responseHead(version: HTTPVersion, bodyLength: Int) -> HTTPResponseHead {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(bodyLength))
        headers.add(name: "cache-control", value: "no-store")
        headers.add(name: WireHeader.error, value: self.code)
        for (name, value) in self.headers.sorted(by: { $0.key < $1.key }) { headers.add(name: name, value: value) }
        return HTTPResponseHead(version: version, status: self.status, headers: headers)
    }
}

/// A JSON string literal, escaped per RFC 8259.
public func jsonString(_ value: String) -> String {
    var out = "\""
    for scalar in value.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20:
            out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}
