import ArgumentParser
import ConfigKit
import DemoComponentKit
import NIOPosix
import TunnelCore
import UnixSignals

@main
struct DemoComponentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo-component",
        abstract: "A sample cluster component (web page, JSON API, downloads, uploads) for demos and benchmarks.")

    @Option(help: "Address to listen on.")
    var listen: String = "127.0.0.1:8080"

    @Option(help: "Name shown on the page.")
    var name: String = "ui"

    func run() async throws {
        guard let address = parseHostPort(self.listen) else { throw ValidationError("--listen must be host:port") }
        let component = try await DemoComponent.start(
            host: address.host, port: address.port, name: self.name, group: MultiThreadedEventLoopGroup.singleton)
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
        print("demo component \(self.name) on \(component.url)")
        for await _ in signals { break }
        try await component.close()
    }
}
