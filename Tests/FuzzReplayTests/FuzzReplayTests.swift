import Foundation
import FuzzEntryPoints
import Testing

/// Every input kept under Tests/Fuzz/TARGET/ (seeds, and each crash a fuzzer found, kept when it
/// was fixed) goes through its target again: a regression traps here as it did in the fuzzer.
@Suite struct FuzzReplayTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz")

    static var targets: [String] { FuzzEntryPoints.targets.keys.sorted() }

    @Test(arguments: Self.targets)
    func keptInputsPass(_ target: String) throws {
        let folder = Self.root.appendingPathComponent(target)
        let names = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { !$0.hasPrefix(".") && $0 != "README.md" }.sorted()
        #expect(!names.isEmpty, "Tests/Fuzz/\(target) holds at least the seeds")
        let run = try #require(FuzzEntryPoints.targets[target])
        for name in names {
            run(Array(try Data(contentsOf: folder.appendingPathComponent(name))))
        }
    }
}
