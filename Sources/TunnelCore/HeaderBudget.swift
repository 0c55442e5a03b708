import NIOCore
import NIOHPACK
import NIOHTTP1

/// How large a request or response head may be to cross the next HTTP/2 link without failing it.
///
/// Two limits apply. The peer's SETTINGS_MAX_HEADER_LIST_SIZE (decoded size: name + value + 32 per
/// field; beyond it the peer fails the whole connection with an HPACK error). And NIOHTTP2 sends a
/// header block as one HEADERS frame, with no CONTINUATION: a block larger than the peer's maximum
/// frame size fails the whole connection on the sending side. HTTP/2 lets no peer go below 16,384
/// bytes of frame, so that is the encoded size every link carries. Either failure would close a
/// tunnel that carries every expert of a cluster, so each hop checks a head before it sends it.
public struct HeaderBudget: Sendable, Equatable {
    /// Decoded size, as SETTINGS_MAX_HEADER_LIST_SIZE counts it.
    public var listSize: Int
    /// HPACK-encoded size of the whole block, pseudo-header fields included.
    public var encodedSize: Int

    /// HTTP/2's smallest SETTINGS_MAX_FRAME_SIZE.
    public static let smallestFrame = 16_384

    public init(listSize: Int, encodedSize: Int) {
        self.listSize = listSize
        self.encodedSize = encodedSize
    }

    /// Into a tunnel: the tunnel's header-list limit, one frame.
    public static func tunnel(_ limits: TunnelLimits) -> HeaderBudget {
        HeaderBudget(listSize: limits.maxHeaderListSize, encodedSize: Self.smallestFrame)
    }

    /// Towards relayctl: the session's header-list limit, one frame.
    public static func session(_ limits: TunnelLimits) -> HeaderBudget {
        HeaderBudget(listSize: limits.sessionHeaderListSize, encodedSize: Self.smallestFrame)
    }

    /// Into a session, on the way to a tunnel: room left for what the relay adds.
    public static func sessionRequest(_ limits: TunnelLimits) -> HeaderBudget {
        HeaderBudget(listSize: limits.sessionHeaderListSize, encodedSize: Self.smallestFrame - TunnelLimits.relayHeaderHeadroom)
    }

    /// Whether `headers`, with pseudo-header fields of `pseudoBytes` (the target, say), fit.
    public func admits(_ headers: HTTPHeaders, pseudoBytes: Int = 0) -> Bool {
        // Pseudo-header fields (:method, :scheme, :authority, :path or :status) with their overhead.
        let pseudo = pseudoBytes + 4 * 32 + 64
        var listSize = pseudo
        for (name, value) in headers { listSize += name.utf8.count + value.utf8.count + 32 }
        guard listSize <= self.listSize else { return false }
        // Huffman coding spends at most 30 bits on a byte: small heads fit without encoding them.
        if listSize * 4 <= self.encodedSize { return true }
        var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
        var block = ByteBuffer()
        let fields = HPACKHeaders(headers.map { ($0.name.lowercased(), $0.value) })
        guard (try? encoder.encode(headers: fields, to: &block)) != nil else { return false }
        return block.readableBytes + pseudo <= self.encodedSize
    }
}
