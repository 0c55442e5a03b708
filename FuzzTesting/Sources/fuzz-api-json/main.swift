import FuzzDriver

@_cdecl("fuzz_api_json_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer("api-json", argc, argv)
}
