import FuzzEntryPoints

// Built with -sanitize=fuzzer -parse-as-library (Scripts/fuzz.sh): libFuzzer provides main.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    FuzzEntryPoints.targets["request-target"]!(Array(UnsafeRawBufferPointer(start: start, count: count)))
    return 0
}
