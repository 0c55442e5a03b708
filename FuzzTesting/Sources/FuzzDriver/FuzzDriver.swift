import FuzzEntryPoints

// Each fuzzer is an executable whose entry point (SwiftPM links it as <module>_main) starts
// libFuzzer's driver on one target of FuzzEntryPoints. Built with -sanitize=fuzzer
// -parse-as-library (Scripts/fuzz.sh).

/// The target this process fuzzes (set once, before the driver starts).
private var selected: (@Sendable ([UInt8]) -> Void)?

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    selected?(start.map { Array(UnsafeBufferPointer(start: $0, count: count)) } ?? [])
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// Runs libFuzzer on `target` with the process's arguments.
public func runFuzzer(_ target: String, _ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    selected = FuzzEntryPoints.targets[target]
    precondition(selected != nil, "no fuzz target \(target)")
    var count = argc
    var arguments = argv
    return runDriver(&count, &arguments, fuzzOne)
}
