/// The connector's heartbeat and dial lifecycle (issue 3), as a pure state machine: no I/O, no clock,
/// no randomness. The driver sends heartbeats, runs timers and opens or closes tunnels as the returned
/// actions say, and feeds back what happened. Jitter comes in as a number in -1...1 that the driver
/// draws, so tests fix it.
///
/// Rules: one heartbeat in flight at a time; every `enabledIntervalMilliseconds` (60 s) while remote
/// access is enabled, every `disabledIntervalMilliseconds` (300 s) while the customer has disabled it,
/// each spread by ±`jitterFraction`. Tunnels are wanted exactly while the last answer carried the
/// remote-UI flag and access is enabled; a disabled connector never dials.
public struct HeartbeatStateMachine: Sendable {
    public struct Configuration: Sendable, Equatable {
        public var enabledIntervalMilliseconds: Int64 = 60_000
        public var disabledIntervalMilliseconds: Int64 = 300_000
        /// Each interval is multiplied by 1 + jitterFraction × jitter, jitter in -1...1.
        public var jitterFraction: Double = 0.1
        /// After a failed heartbeat, the next one comes after at most this long.
        public var retryMilliseconds: Int64 = 10_000
        public init() {}
    }

    /// What the relay's heartbeat answer said.
    public struct Answer: Sendable, Equatable {
        public var remoteUIRequested: Bool
        public var websocketURLs: [String]
        /// The relay may ask for another interval; it is clamped to 1 s ... the disabled interval.
        public var nextIntervalMilliseconds: Int64?

        public init(remoteUIRequested: Bool, websocketURLs: [String], nextIntervalMilliseconds: Int64? = nil) {
            self.remoteUIRequested = remoteUIRequested
            self.websocketURLs = websocketURLs
            self.nextIntervalMilliseconds = nextIntervalMilliseconds
        }

        /// The relay's `next_heartbeat_seconds` in milliseconds, saturating: any number the relay
        /// sends is clamped later, and none can overflow on the way.
        public static func milliseconds(fromSeconds seconds: Int?) -> Int64? {
            guard let seconds else { return nil }
            let (product, overflow) = Int64(clamping: seconds).multipliedReportingOverflow(by: 1000)
            return overflow ? (seconds < 0 ? Int64.min : Int64.max) : product
        }
    }

    public enum Action: Sendable, Equatable {
        case sendHeartbeat
        /// Cancel any pending timer and fire `timerFired` after this long.
        case scheduleHeartbeat(afterMilliseconds: Int64)
        /// Keep exactly these tunnels up (one per URL), dialing the missing ones.
        case openTunnels([String])
        /// Close every tunnel, telling sessions why.
        case closeTunnels(reason: String)
    }

    /// `stopped`: not started yet; `finished`: the connector is shutting down, nothing more happens.
    private enum Phase: Sendable, Equatable { case stopped, awaitingAnswer, waiting, finished }

    public let configuration: Configuration
    public private(set) var remoteAccessEnabled: Bool
    /// The URLs the tunnels are meant to be up to ([] when none).
    public private(set) var tunnelURLs: [String] = []
    private var phase = Phase.stopped
    private var relayInterval: Int64?
    /// Something the relay must learn changed while a heartbeat was in flight (that heartbeat
    /// carries the old state): send another as soon as its answer is in.
    private var heartbeatOwed = false

    public init(configuration: Configuration = Configuration(), remoteAccessEnabled: Bool) {
        self.configuration = configuration
        self.remoteAccessEnabled = remoteAccessEnabled
    }

    /// The connector starts: heartbeat at once.
    public mutating func start() -> [Action] {
        guard self.phase == .stopped else { return [] }
        self.phase = .awaitingAnswer
        return [.sendHeartbeat]
    }

    /// The connector is shutting down: no more heartbeats, and an answer still in flight changes
    /// nothing (its tunnels close with the connector, not by this machine).
    public mutating func stop() {
        self.phase = .finished
        self.heartbeatOwed = false
    }

    /// The timer set by `.scheduleHeartbeat` fired.
    public mutating func timerFired() -> [Action] {
        guard self.phase == .waiting else { return [] }
        self.phase = .awaitingAnswer
        return [.sendHeartbeat]
    }

    /// Something suggests the answer changed (a tunnel was closed or refused by the relay): ask now
    /// instead of at the next timer. Ignored while a heartbeat is in flight or before `start`.
    public mutating func heartbeatNow() -> [Action] {
        guard self.phase == .waiting else { return [] }
        self.phase = .awaitingAnswer
        return [.sendHeartbeat]
    }

    /// Something the relay must learn changed (the customer decided a request): send now, or, when a
    /// heartbeat is in flight, right after its answer.
    public mutating func relayMustLearn() -> [Action] {
        switch self.phase {
        case .stopped, .finished:
            return []
        case .awaitingAnswer:
            self.heartbeatOwed = true
            return []
        case .waiting:
            self.phase = .awaitingAnswer
            return [.sendHeartbeat]
        }
    }

    public mutating func received(_ answer: Answer, jitter: Double) -> [Action] {
        guard self.phase == .awaitingAnswer else { return [] }
        self.phase = .waiting
        self.relayInterval = answer.nextIntervalMilliseconds
        var actions: [Action] = []
        let wanted = self.remoteAccessEnabled && answer.remoteUIRequested ? answer.websocketURLs : []
        if wanted != self.tunnelURLs {
            if wanted.isEmpty {
                // Only reachable while enabled: disabling already closed the tunnels.
                actions.append(.closeTunnels(reason: "the access request ended"))
            } else {
                actions.append(.openTunnels(wanted))
            }
            self.tunnelURLs = wanted
        }
        if self.heartbeatOwed {
            self.heartbeatOwed = false
            self.phase = .awaitingAnswer
            actions.append(.sendHeartbeat)
        } else {
            actions.append(.scheduleHeartbeat(afterMilliseconds: self.interval(jitter: jitter)))
        }
        return actions
    }

    /// The heartbeat could not be delivered or was refused. Tunnels already up stay up (they have their
    /// own liveness); the next heartbeat comes sooner.
    public mutating func failed(jitter: Double) -> [Action] {
        guard self.phase == .awaitingAnswer else { return [] }
        self.phase = .waiting
        self.heartbeatOwed = false  // the retry carries the state as it is then
        let full = self.interval(jitter: jitter)
        return [.scheduleHeartbeat(afterMilliseconds: min(full, self.configuration.retryMilliseconds))]
    }

    /// The customer switched remote access on or off (config reload or CLI).
    public mutating func remoteAccessChanged(enabled: Bool, jitter: Double) -> [Action] {
        guard enabled != self.remoteAccessEnabled, self.phase != .finished else { return [] }
        self.remoteAccessEnabled = enabled
        var actions: [Action] = []
        if !enabled && !self.tunnelURLs.isEmpty {
            self.tunnelURLs = []
            actions.append(.closeTunnels(reason: "remote access is disabled"))
        }
        switch self.phase {
        case .stopped, .finished:
            break
        case .awaitingAnswer:
            // The heartbeat in flight may carry the old mode: tell the relay again once it is answered.
            self.heartbeatOwed = true
        case .waiting:
            // Tell the relay at once: re-enabled, a waiting request is served without a 300 s wait;
            // disabled, the relay stops approving automatically and shows the customer's choice.
            self.phase = .awaitingAnswer
            actions.append(.sendHeartbeat)
        }
        return actions
    }

    /// The interval in force, spread by `jitter` (clamped to -1...1).
    func interval(jitter: Double) -> Int64 {
        let base: Int64
        if !self.remoteAccessEnabled {
            base = self.configuration.disabledIntervalMilliseconds
        } else if let relay = self.relayInterval {
            base = min(max(relay, 1000), self.configuration.disabledIntervalMilliseconds)
        } else {
            base = self.configuration.enabledIntervalMilliseconds
        }
        let spread = self.configuration.jitterFraction * min(max(jitter, -1), 1)
        return Int64((Double(base) * (1 + spread)).rounded())
    }
}
