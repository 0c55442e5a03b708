import RelayAPI
import TunnelCore

/// What Mission Control and the handshake gate refuse, in their own terms: a code and a sentence
/// that says what to do next. HTTP is not theirs: the code's status (`APIErrorCode.status`) is
/// given where the router and the gate answer (`ProxyRefusal.init(_: RelayError)`).
public struct RelayError: Error, Equatable, Sendable, CustomStringConvertible {
    public var code: APIErrorCode
    public var message: String

    public init(_ code: APIErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(self.code.rawValue): \(self.message)" }
}

extension ProxyRefusal {
    public init(_ error: RelayError) { self.init(error.code, error.message) }
}
