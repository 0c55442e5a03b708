import FuzzDriver

@_cdecl("fuzz_websocket_stream_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer("websocket-stream", argc, argv)
}
