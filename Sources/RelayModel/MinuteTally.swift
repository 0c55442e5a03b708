import Foundation

/// Events counted per key per minute, so that a flood of them cannot flood a log: the first
/// `recordedPerMinute` of a key in a minute are to be recorded one by one, the rest only counted
/// and summed up once the minute is over. Pure: the caller supplies the time and writes the records.
///
/// At most `maxKeys` keys are told apart per minute; further ones are folded by `fold` (into one
/// "other" key, say), so memory stays bounded whatever an attacker varies.
public struct MinuteTally<Key: Hashable & Sendable>: Sendable {
    /// What a minute left over: `count` events of `key` beyond those recorded one by one.
    public struct Summary: Equatable, Sendable {
        public var key: Key
        public var minute: Date
        public var count: Int

        public init(key: Key, minute: Date, count: Int) {
            self.key = key
            self.minute = minute
            self.count = count
        }
    }

    public let recordedPerMinute: Int
    public let maxKeys: Int
    private let fold: @Sendable (Key) -> Key
    private var minute: Int64 = .min
    private var counts: [Key: Int] = [:]

    public init(recordedPerMinute: Int = 1, maxKeys: Int = 1000, fold: @escaping @Sendable (Key) -> Key) {
        self.recordedPerMinute = recordedPerMinute
        self.maxKeys = maxKeys
        self.fold = fold
    }

    /// Counts one event at `now`. `record` is the key to record one by one, nil when it was only
    /// counted; `summaries` holds what a minute that just ended left over.
    public mutating func count(_ key: Key, at now: Date) -> (record: Key?, summaries: [Summary]) {
        let summaries = self.rollOver(to: now)
        var key = key
        if self.counts[key] == nil && self.counts.count >= self.maxKeys { key = self.fold(key) }
        let seen = self.counts[key, default: 0]
        self.counts[key] = seen + 1
        return (seen < self.recordedPerMinute ? key : nil, summaries)
    }

    /// Summaries of the minute that ended before `now`, if it has (a timer calls this).
    public mutating func flush(at now: Date) -> [Summary] {
        self.rollOver(to: now)
    }

    /// The events of `key` counted but not recorded so far this minute, forgotten (the key ends:
    /// a session, say); the caller sums them up at once.
    public mutating func close(_ key: Key) -> Int {
        let count = self.counts.removeValue(forKey: key) ?? 0
        return max(0, count - self.recordedPerMinute)
    }

    /// The start of the minute counted now.
    public var currentMinute: Date { Date(timeIntervalSince1970: TimeInterval(self.minute) * 60) }

    private mutating func rollOver(to now: Date) -> [Summary] {
        let current = Int64((now.timeIntervalSince1970 / 60).rounded(.down))
        guard current != self.minute else { return [] }
        let start = self.currentMinute
        let summaries = self.counts.filter { $0.value > self.recordedPerMinute }
            .map { Summary(key: $0.key, minute: start, count: $0.value - self.recordedPerMinute) }
        self.minute = current
        self.counts = [:]
        return summaries
    }
}
