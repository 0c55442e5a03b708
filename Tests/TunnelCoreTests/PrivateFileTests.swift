import Foundation
import Testing

@testable import TunnelCore

/// Secrets and the customer's decisions are written 0600 from the first byte, never tightened after.
@Suite struct PrivateFileTests {
    static func folder() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("private-file-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    static func mode(_ path: String) throws -> Int? {
        try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
    }

    @Test func createIsExclusiveAndPrivate() throws {
        let path = try Self.folder() + "/key"
        #expect(try PrivateFile.create(path, with: Data("first".utf8)))
        #expect(try Self.mode(path) == 0o600)
        #expect(try !PrivateFile.create(path, with: Data("second".utf8)), "an existing file is never overwritten")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "first")
    }

    @Test func replaceWritesAFreshPrivateFileAndRenamesIt() throws {
        let folder = try Self.folder()
        let path = folder + "/credential.json"
        // A file another process left readable is replaced, not reused with its mode.
        FileManager.default.createFile(atPath: path, contents: Data("old".utf8), attributes: [.posixPermissions: 0o644])
        // A fixed temporary name (credential.json.tmp) that someone prepared is not written through.
        FileManager.default.createFile(atPath: path + ".tmp", contents: Data("planted".utf8), attributes: [.posixPermissions: 0o666])
        try PrivateFile.replace(path, with: Data("new".utf8))
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "new")
        #expect(try Self.mode(path) == 0o600)
        #expect(try String(contentsOfFile: path + ".tmp", encoding: .utf8) == "planted", "the planted file was left alone")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.hasSuffix(".tmp") && $0 != "credential.json.tmp" }
        #expect(leftovers.isEmpty, "no temporary file stays behind")
    }
}
