import ConfigKit
import Connector
import Foundation
import Relay
import Testing

private let configFolder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Config").standardizedFileURL.path

/// Every option documented: each key the parsers read, in every section, appears in the example
/// file an admin starts from (Config/relay.yaml, Config/connector.yaml), set or commented.
@Suite struct ExampleCoverageTests {
    /// Each section present (empty where it may be), so the parser asks for every key it knows.
    static let everySectionRelay = """
        listen: 127.0.0.1:0
        tls:
          certificate_file: relay.pem
          private_key_file: relay.key
        store: postgres
        postgres:
          url: postgres://relay@db.example:5432/relay
          password_env: HOME
        connections: {}
        limits: {}
        log: {}
        """

    static let everySectionConnector = """
        node_id: node-1
        credential_file: credential.json
        relay:
          url: https://127.0.0.1:8443
          ca_file: ca.pem
          proxy:
            url: http://proxy.example:3128
        heartbeat: {}
        privacy:
          mode: all
        audit: {}
        health: {}
        components:
          ui:
            url: http://127.0.0.1:8080
        limits: {}
        log: {}
        """

    @Test(arguments: [("relay.yaml", everySectionRelay), ("connector.yaml", everySectionConnector)])
    func everyKeyTheParserReadsIsInTheExampleFile(_ file: String, _ yaml: String) throws {
        let log = ConfigKeyLog()
        try ConfigMap.$keyLog.withValue(log) {
            if file == "relay.yaml" {
                _ = try RelayConfig.parse(yaml: yaml, file: "/etc/relay/relay.yaml")
            } else {
                _ = try ConnectorConfig.parse(yaml: yaml, file: "/etc/connector/connector.yaml")
            }
        }
        let example = try String(contentsOfFile: "\(configFolder)/\(file)", encoding: .utf8)
        let documented = Self.keyPaths(example)
        // A component's name is the admin's own ("ui"): its options are documented under any name.
        let asked = Set(log.all.map { $0.hasPrefix("components.ui") ? "components.*" + $0.dropFirst("components.ui".count) : $0 })
        #expect(asked.count > 30, "the parse asked for \(asked.count) keys")
        for key in asked.sorted() where key != "components.*" {
            #expect(documented.contains(key), "\(file) does not document \(key)")
        }
    }

    /// The dotted path of every key in a YAML example, commented ones included (`#   url:` under
    /// `# proxy:` is `proxy.url`), by indentation; a component's name becomes `*`.
    static func keyPaths(_ text: String) -> Set<String> {
        var stack: [(indent: Int, key: String)] = []
        var paths: Set<String> = []
        for raw in text.split(separator: "\n") {
            var line = Substring(raw)
            let leading = line.prefix { $0 == " " }.count
            line = line.dropFirst(leading)
            var indent = leading
            if line.hasPrefix("#") {
                line = line.dropFirst()
                let spaces = line.prefix { $0 == " " }.count
                indent += max(0, spaces - 1)
                line = line.dropFirst(spaces)
            }
            guard let match = line.prefixMatch(of: #/([a-z_]+):(\s|$)/#) else { continue }
            while let last = stack.last, last.indent >= indent { stack.removeLast() }
            var key = String(match.1)
            if stack.last?.key == "components" { key = "*" }
            stack.append((indent, key))
            paths.insert(stack.map(\.key).joined(separator: "."))
        }
        return paths
    }
}
