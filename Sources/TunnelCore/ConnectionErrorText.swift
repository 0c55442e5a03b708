import Foundation
import NIOCore
import NIOPosix
import NIOSSL

extension SocketAddress {
    /// `127.0.0.1:8443` or `[::1]:8443`, for people (NIO's description adds the family and repeats the host).
    public var display: String {
        guard let ip = self.ipAddress else { return self.pathname ?? "\(self)" }
        let host = ip.contains(":") ? "[\(ip)]" : ip
        return self.port.map { "\(host):\($0)" } ?? host
    }
}

/// One plain sentence for why a connection failed, saying what to check. Library errors are
/// mapped, never printed raw: their text carries type dumps and BoringSSL's build paths.
public func describeConnectionError(_ error: Error) -> String {
    switch error {
    case let error as NIOConnectionError:
        if error.connectionErrors.isEmpty {
            return "cannot resolve the host name \(error.host)"
        }
        let causes = Set(error.connectionErrors.map { describeConnectionError($0.error) })
        return causes.sorted().joined(separator: "; ")
    case let error as IOError:
        switch error.errnoCode {
        case ECONNREFUSED: return "connection refused (nothing listens there: is it running, on this port?)"
        case ETIMEDOUT: return "no answer (timed out): check the address and any firewall"
        case EHOSTUNREACH, ENETUNREACH: return "the host cannot be reached from here"
        case ECONNRESET: return "the connection was reset by the peer"
        case ENOENT: return "no such socket (is it running?)"
        case EACCES, EPERM: return "permission denied"
        default: return "connection failed (\(String(cString: strerror(error.errnoCode))))"
        }
    case ChannelError.connectTimeout:
        return "no answer within the connect timeout: check the address and any firewall"
    case let error as NIOSSLExtraError where error == .failedToValidateHostname:
        return "TLS: the server's certificate does not name the host you connected to"
    case let error as NIOSSLError:
        switch error {
        case .handshakeFailed:
            return "TLS handshake failed: the server's certificate is not signed by the configured CA (or it is not a TLS server)"
        case .uncleanShutdown:
            return "the server closed the TLS connection abruptly"
        default:
            return "TLS failed"
        }
    case is NIOSSLExtraError:
        return "TLS failed: the server's certificate was not accepted"
    case ChannelError.ioOnClosedChannel, ChannelError.alreadyClosed, ChannelError.eof:
        return "the connection closed unexpectedly"
    default:
        return "connection failed"
    }
}
