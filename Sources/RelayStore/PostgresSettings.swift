import Foundation

/// Where and how a relay node reaches the shared PostgreSQL database (`store: postgres` in
/// relay.yaml). The password never comes from the URL: from a file or an environment variable, so
/// that it is in no command line, config dump or log.
public struct PostgresSettings: Sendable, Equatable {
    public enum TLS: Sendable, Equatable {
        case disable
        /// Verified against `caFile` (nil: the system's trust store), host name included.
        case require(caFile: String?)
    }

    public var host: String
    public var port: Int
    public var username: String
    public var database: String
    public var password: String?
    public var tls: TLS
    /// Connections this node keeps at most for queries; one more holds its LISTEN for other nodes' changes.
    public var poolSize: Int
    /// A query (waiting for a connection included) that takes longer marks the database unavailable.
    public var operationTimeout: Duration

    public init(
        host: String, port: Int = 5432, username: String, database: String, password: String? = nil, tls: TLS = .disable,
        poolSize: Int = 10, operationTimeout: Duration = .seconds(5)
    ) {
        self.host = host
        self.port = port
        self.username = username
        self.database = database
        self.password = password
        self.tls = tls
        self.poolSize = poolSize
        self.operationTimeout = operationTimeout
    }

    /// Reads `postgres://USER@HOST:PORT/DATABASE` (or `postgresql://`). A password in the URL is
    /// refused: the URL is printed and logged, the password must not be.
    public static func parse(url text: String) throws -> PostgresSettings {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
            scheme == "postgres" || scheme == "postgresql"
        else {
            throw PostgresSettingsError("must be postgres://USER@HOST:PORT/DATABASE")
        }
        if components.password != nil {
            throw PostgresSettingsError("must not hold the password; give it in password_file or password_env")
        }
        guard let user = components.user, !user.isEmpty else { throw PostgresSettingsError("names no user (postgres://USER@HOST/DATABASE)") }
        guard let host = components.host, !host.isEmpty else { throw PostgresSettingsError("names no host") }
        let database = String(components.path.drop(while: { $0 == "/" }))
        guard !database.isEmpty, !database.contains("/") else { throw PostgresSettingsError("names no database (postgres://USER@HOST/DATABASE)") }
        // Not echoed: a parameter may hold a secret (password=, sslpassword=).
        if let query = components.query, !query.isEmpty {
            throw PostgresSettingsError("takes no parameters; TLS is set with tls and ca_file, the password with password_file or password_env")
        }
        let port = components.port ?? 5432
        guard (1...65535).contains(port) else { throw PostgresSettingsError("has port \(port), out of range") }
        return PostgresSettings(host: host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")), port: port, username: user, database: database)
    }

    /// The URL without any secret, for messages and logs.
    public var displayURL: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return "postgres://\(self.username)@\(host):\(self.port)/\(self.database)"
    }
}

extension PostgresSettings: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// Never the password: what a log line, an error or a failed test expectation shows.
    public var description: String {
        "\(self.displayURL) (password \(self.password == nil ? "none" : "<redacted>"), tls \(self.tls), pool \(self.poolSize), timeout \(self.operationTimeout))"
    }

    public var debugDescription: String { self.description }

    public var customMirror: Mirror { Mirror(self, children: ["url": self.displayURL, "tls": self.tls, "poolSize": self.poolSize]) }
}

public struct PostgresSettingsError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
