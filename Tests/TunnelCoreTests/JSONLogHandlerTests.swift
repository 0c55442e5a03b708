import Foundation
import Logging
import NIOConcurrencyHelpers
import Testing
import TunnelCore

/// `log: {format: json}`: each event is one line a log shipper can parse as it stands.
@Suite struct JSONLogHandlerTests {
    @Test func eachEventIsOneJSONObjectWithItsMetadata() throws {
        let lines = NIOLockedValueBox<[String]>([])
        var logger = Logger(label: "relay") { label in JSONLogHandler(label: label) { line in lines.withLockedValue { $0.append(line) } } }
        logger.logLevel = .trace
        logger[metadataKey: "node"] = "relay-1"
        logger.notice("a \"quoted\"\nmessage\twith\u{1}controls", metadata: ["request_id": "abc", "message": "hidden?", "path": "/x\\y"])
        logger.trace("quiet")
        let written = lines.withLockedValue { $0 }
        #expect(written.count == 2)
        #expect(written.allSatisfy { $0.hasSuffix("}\n") && $0.dropLast().split(separator: "\n").count == 1 }, "one line each")
        let first = try #require(try JSONSerialization.jsonObject(with: Data(written[0].utf8)) as? [String: String])
        #expect(first["level"] == "notice")
        #expect(first["logger"] == "relay")
        #expect(first["message"] == "a \"quoted\"\nmessage\twith\u{1}controls")
        #expect(first["_message"] == "hidden?", "a metadata key never hides a fixed field")
        #expect(first["request_id"] == "abc")
        #expect(first["node"] == "relay-1")
        #expect(first["path"] == "/x\\y")
        let time = try #require(first["time"])
        #expect(time.wholeMatch(of: #/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/#) != nil, "\(time)")
        let second = try #require(try JSONSerialization.jsonObject(with: Data(written[1].utf8)) as? [String: String])
        #expect(second["level"] == "trace")
    }
}
