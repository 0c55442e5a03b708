import FuzzDriver

@_cdecl("fuzz_request_target_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer("request-target", argc, argv)
}
