import RelayAPI
import TunnelCore

/// Which relay nodes a session may dial: those given (`--relay`, in order), then every other live
/// node the relay lists (`GET /v1/relay-nodes`), so that one name is enough to reach a node that
/// holds the cluster's tunnel. Pure.
public enum RelayDiscovery {
    public static func sessionURLs(given: [WebSocketURL], nodes: [RelayNodeView]) -> [WebSocketURL] {
        var urls = given.map { url in
            var url = url
            url.path = WirePath.session
            return url
        }
        for node in nodes where node.live {
            guard var url = try? WebSocketURL(parsing: node.tunnelURL) else { continue }
            url.path = WirePath.session
            if !urls.contains(where: { $0.host.lowercased() == url.host.lowercased() && $0.port == url.port }) { urls.append(url) }
        }
        return urls
    }
}
