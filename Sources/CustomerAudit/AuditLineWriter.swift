/// Writes a record as the audit line's JSON, byte for byte what `JSONEncoder` with sorted keys and
/// unescaped slashes writes (`AuditLineWriterTests` holds the two side by side). By hand because
/// the connector writes one for every request an expert sends, and the generic encoder cost more
/// than the rest of the request's audit (its keyed containers box every field).
struct AuditLineWriter {
    private var bytes: [UInt8] = []
    private var first = true

    private init() { self.bytes.reserveCapacity(512) }

    /// The record's fields in key order, without the closing brace (the hash is appended before it).
    static func open(_ entry: AuditEntry) -> [UInt8] {
        var writer = AuditLineWriter()
        writer.bytes.append(UInt8(ascii: "{"))
        // Sorted by key, as the encoder sorts them (byte order; no key is a prefix of another here).
        writer.field("accessRequest", entry.accessRequest)
        writer.field("actor", entry.actor)
        writer.field("bytesIn", entry.bytesIn)
        writer.field("bytesOut", entry.bytesOut)
        writer.field("component", entry.component)
        writer.field("decision", entry.decision)
        writer.field("detail", entry.detail)
        writer.field("durationMs", entry.durationMs)
        writer.field("event", entry.event)
        writer.field("expert", entry.expert)
        writer.field("method", entry.method)
        writer.field("path", entry.path)
        writer.field("prev", entry.prev)
        writer.field("prunedThrough", entry.prunedThrough)
        writer.field("reason", entry.reason)
        writer.field("requestID", entry.requestID)
        writer.field("role", entry.role)
        writer.field("seq", entry.seq)
        writer.field("session", entry.session)
        writer.field("status", entry.status.map(Int64.init))
        writer.field("time", AuditChain.formatTime(entry.time))
        return writer.bytes
    }

    private mutating func key(_ name: StaticString) {
        if !self.first { self.bytes.append(UInt8(ascii: ",")) }
        self.first = false
        self.bytes.append(UInt8(ascii: "\""))
        name.withUTF8Buffer { self.bytes.append(contentsOf: $0) }
        self.bytes.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
    }

    private mutating func field(_ name: StaticString, _ value: Int64?) {
        guard let value else { return }
        self.key(name)
        self.bytes.append(contentsOf: String(value).utf8)
    }

    private mutating func field(_ name: StaticString, _ value: String?) {
        guard let value else { return }
        self.key(name)
        self.string(value)
    }

    /// JSON string escaping as the encoder does it: quote, backslash and control characters; the
    /// rest (slashes, non-ASCII) as UTF-8.
    private mutating func string(_ value: String) {
        self.bytes.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): self.bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): self.bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x08: self.bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "b")])
            case 0x0C: self.bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "f")])
            case 0x0A: self.bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0D: self.bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09: self.bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0..<0x20:
                self.bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
                self.bytes.append(hexDigits[Int(byte >> 4)])
                self.bytes.append(hexDigits[Int(byte & 0xF)])
            default: self.bytes.append(byte)
            }
        }
        self.bytes.append(UInt8(ascii: "\""))
    }
}
