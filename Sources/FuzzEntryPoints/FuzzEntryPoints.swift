import ConfigKit
import Connector
import Foundation
import NIOCore
import NIOEmbedded
import NIOWebSocket
import PrivacyPolicy
import Relay
import RelayAPI
import RelayModel
import TunnelCore

/// What the fuzzers (FuzzTesting/, `Scripts/fuzz.sh`) feed, and what `FuzzReplayTests` replays:
/// one function per target, taking any bytes. A crash, a trap or a broken invariant (checked with
/// `require`, which traps) is a finding; thrown errors and refusals are the expected answer to junk.
public enum FuzzEntryPoints {
    public static let targets: [String: @Sendable ([UInt8]) -> Void] = [
        "request-target": requestTargetAndPolicy,
        "websocket-stream": webSocketStream,
        "api-json": apiJSON,
        "config": config,
    ]

    /// The invariant behind a finding: traps, so the fuzzer keeps the input.
    static func require(_ condition: Bool, _ message: @autoclosure () -> String) {
        if !condition { fatalError("fuzz invariant broken: \(message())") }
    }

    // MARK: request target + stream policy

    static let rules = PrivacyRules(
        mode: .all,
        components: [
            ComponentRules(name: "ui", authority: "127.0.0.1:8080", caseInsensitivePaths: true, deniedPathPrefixes: ["/admin/keys/"]),
        ],
        deniedPathPrefixes: ["/secrets"])
    static let now = Date(timeIntervalSince1970: 1_800_000_000)

    /// Byte 0 picks the method, then: target, NUL, one header value (sent as Host, or as an
    /// identity-stripping candidate). Invariants: the normal form is a fixed point; an allowed
    /// target's every reading (decoded, parameters cut) is outside the denied prefixes; what is
    /// forwarded normalises to itself with the same decision.
    public static func requestTargetAndPolicy(_ data: [UInt8]) {
        guard let selector = data.first else { return }
        let rest = data.dropFirst()
        let parts = rest.split(separator: 0, maxSplits: 1, omittingEmptySubsequences: false)
        let target = String(decoding: parts.first ?? [], as: UTF8.self)
        let extra = parts.count > 1 ? String(decoding: parts[1], as: UTF8.self) : nil
        let methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "get", "CONNECT", "TRACE", "M-SEARCH", "PATCH"]
        let method = methods[Int(selector) % methods.count]

        if case .success(let normal) = RequestTargetNormalizer.normalize(target) {
            let again = RequestTargetNormalizer.normalize(normal.forwarded)
            require((try? again.get()) == normal, "normal form is not a fixed point: \(target.debugDescription) -> \(normal.forwarded.debugDescription)")
        }
        var headers: [StreamFacts.Header] = [
            .init("x-relay-component", "ui"), .init("x-relay-expert", "alice"), .init("x-relay-session", "s1"),
            .init("x-relay-role", "admin"), .init("x-relay-access-request", "7"),
            .init("x-relay-access-expires", String(Int64(now.timeIntervalSince1970) + 600)),
        ]
        if let extra { headers.append(.init(selector & 0x80 == 0 ? "host" : "x-original-url", extra)) }
        let facts = StreamFacts(method: method, target: target, headers: headers)
        guard case .success(let permit) = StreamPolicy.decide(facts, rules: rules, approvals: [:], now: now) else { return }
        for reading in [permit.target.decodedPath, permit.target.parameterFreePath] {
            let folded = reading.lowercased()
            require(!folded.hasPrefix("/secrets") && !folded.hasPrefix("/admin/keys/") && folded != "/admin/keys",
                    "a denied path was allowed: \(target.debugDescription) read as \(reading.debugDescription)")
        }
        require(permit.method == method && method == method.uppercased(), "the method forwarded is not the one decided")
        require(!permit.headers.contains { PrivacyRules.isStripped($0.name) || $0.name.hasPrefix("x-relay-") }, "a stripped header passed")
        let forwarded = StreamFacts(method: method, target: permit.target.forwarded, headers: headers)
        guard case .success(let second) = StreamPolicy.decide(forwarded, rules: rules, approvals: [:], now: now) else {
            return require(false, "the forwarded form of an allowed request is refused: \(permit.target.forwarded.debugDescription)")
        }
        require(second.target == permit.target, "the forwarded form decides differently")
    }

    // MARK: websocket -> byte stream

    /// Raw bytes from a peer into the tunnel's websocket end (NIO's frame decoder, then our
    /// adapter). Invariants: no trap; what comes out is at most what went in; a closed tunnel
    /// stays closed.
    public static func webSocketStream(_ data: [UInt8]) {
        let channel = EmbeddedChannel()
        do {
            try channel.pipeline.syncOperations.addHandlers([
                ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 16)),
                WebSocketFrameEncoder(),
                WebSocketProtocolErrorHandler(isServer: true),
                WebSocketByteStreamHandler(role: .server, maxOutboundFrameSize: 1 << 12),
            ])
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        } catch {
            return
        }
        var delivered = 0
        // In pieces, as TCP delivers: the first byte says how big.
        let step = Int(data.first ?? 1) % 64 + 1
        var index = 0
        while index < data.count, channel.isActive {
            let end = min(index + step, data.count)
            do {
                try channel.writeInbound(ByteBuffer(bytes: data[index..<end]))
            } catch {
                break
            }
            while let bytes = try? channel.readInbound(as: ByteBuffer.self) { delivered += bytes.readableBytes }
            index = end
        }
        require(delivered <= data.count, "more bytes out than in")
        while (try? channel.readOutbound(as: ByteBuffer.self)) != nil {}
        _ = try? channel.finish()
    }

    // MARK: API JSON

    /// Any body as each message the relay or the connector decodes. Invariants: what decodes
    /// re-encodes to something that decodes to the same; a heartbeat answer drives the heartbeat
    /// machine and the tunnel URL parser without a trap.
    public static func apiJSON(_ data: [UInt8]) {
        let body = Data(data)
        let decoder = APIJSON.decoder()
        let encoder = APIJSON.encoder()
        func roundTrip<T: Codable & Equatable>(_ type: T.Type) {
            guard let value = try? decoder.decode(T.self, from: body) else { return }
            guard let encoded = try? encoder.encode(value) else { return require(false, "\(T.self) decoded but does not encode") }
            require((try? decoder.decode(T.self, from: encoded)) == value, "\(T.self) does not survive a round trip")
        }
        roundTrip(HeartbeatRequest.self)
        roundTrip(HeartbeatResponse.self)
        roundTrip(RegisterRequest.self)
        roundTrip(RegisterResponse.self)
        _ = try? decoder.decode(CreateAccessRequest.self, from: body)
        _ = try? decoder.decode(CreateTokenRequest.self, from: body)
        _ = try? decoder.decode(ModeChange.self, from: body)
        if let answer = try? decoder.decode(HeartbeatResponse.self, from: body) {
            var machine = HeartbeatStateMachine(remoteAccessEnabled: true)
            _ = machine.start()
            let actions = machine.received(
                .init(
                    remoteUIRequested: answer.remoteUIRequested, websocketURLs: answer.websocketURLs,
                    nextIntervalMilliseconds: HeartbeatStateMachine.Answer.milliseconds(fromSeconds: answer.nextHeartbeatSeconds)),
                jitter: 1)
            for case .scheduleHeartbeat(let delay) in actions {
                require(delay >= 0 && delay <= 2 * HeartbeatStateMachine.Configuration().disabledIntervalMilliseconds, "interval out of bounds")
            }
            for url in answer.websocketURLs { _ = try? WebSocketURL(parsing: url) }
        }
    }

    // MARK: configuration

    /// Any text as relay.yaml and connector.yaml. Invariant: no trap; a config that parses has
    /// limits inside their documented ranges.
    public static func config(_ data: [UInt8]) {
        let text = String(decoding: data, as: UTF8.self)
        if let relay = try? RelayConfig.parse(yaml: text, file: "/fuzz/relay.yaml") {
            require(relay.limits.maxConcurrentStreams >= 1 && relay.connectionLimits.maxTotal >= 1, "relay limits out of range")
        }
        if let connector = try? ConnectorConfig.parse(yaml: text, file: "/fuzz/connector.yaml") {
            require(!connector.components.isEmpty && connector.heartbeat.enabledIntervalMilliseconds >= 100, "connector config out of range")
        }
    }
}
