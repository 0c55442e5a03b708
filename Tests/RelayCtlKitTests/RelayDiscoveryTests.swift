import Foundation
import RelayAPI
import RelayCtlKit
import Testing
import TunnelCore

/// `relayctl session open --relay ONE` dials the node given first, then every other live node the
/// relay lists: any of them may hold the cluster's tunnel.
@Suite struct RelayDiscoveryTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    func node(_ id: String, _ url: String, live: Bool = true) -> RelayNodeView {
        RelayNodeView(id: id, tunnelURL: url, startedAt: self.t0, lastSeenAt: self.t0, live: live)
    }

    @Test func theGivenNodesComeFirstThenTheOtherLiveNodesOnce() throws {
        let given = [try WebSocketURL(parsing: "https://Relay-A.example:8443", acceptHTTPS: true)]
        let urls = RelayDiscovery.sessionURLs(given: given, nodes: [
            self.node("relay-a", "wss://relay-a.example:8443/v1/tunnel"),
            self.node("relay-b", "wss://relay-b.example:8443/v1/tunnel"),
            self.node("relay-c", "wss://relay-c.example:8443/v1/tunnel", live: false),
            self.node("relay-d", "not a url"),
        ])
        #expect(urls.map(\.description) == ["wss://Relay-A.example:8443/v1/session", "wss://relay-b.example:8443/v1/session"])
    }

    @Test func withoutAListTheGivenNodesAreAllThereIs() throws {
        let given = try ["https://a:1", "https://b:2"].map { try WebSocketURL(parsing: $0, acceptHTTPS: true) }
        #expect(RelayDiscovery.sessionURLs(given: given, nodes: []).map(\.description) == ["wss://a:1/v1/session", "wss://b:2/v1/session"])
    }
}
