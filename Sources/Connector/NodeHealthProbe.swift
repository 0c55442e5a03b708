import Foundation
import TunnelCore
import RelayAPI

/// Reads this node's health for the heartbeat, from /proc and statvfs (Linux). Only the fields of
/// `NodeHealth`: nothing that names or locates the machine.
public struct NodeHealthProbe: Sendable {
    public var masterNode: Bool
    public var startedAt: Date
    /// The file system whose size is reported (the connector's data folder).
    public var diskPath: String

    public init(masterNode: Bool, startedAt: Date, diskPath: String) {
        self.masterNode = masterNode
        self.startedAt = startedAt
        self.diskPath = diskPath
    }

    public func sample(serverState: String = "running") -> NodeHealth {
        let release = Self.osRelease()
        let memory = Self.meminfo()
        var disk = statvfs()
        var diskTotal: Int64 = 0
        var diskUsed: Int64 = 0
        if statvfs(self.diskPath, &disk) == 0 {
            let block = Int64(disk.f_frsize)
            diskTotal = Int64(disk.f_blocks) * block
            diskUsed = diskTotal - Int64(disk.f_bfree) * block
        }
        let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").first.flatMap { Double($0) } ?? 0
        return NodeHealth(
            osName: release["NAME"] ?? "Linux", osVersion: release["VERSION_ID"] ?? release["VERSION"] ?? "unknown",
            cpuCores: ProcessInfo.processInfo.activeProcessorCount, cpuLoad: load,
            ramTotalBytes: (memory["MemTotal"] ?? 0) * 1024, ramFreeBytes: (memory["MemAvailable"] ?? memory["MemFree"] ?? 0) * 1024,
            diskTotalBytes: diskTotal, diskUsedBytes: diskUsed, serverState: serverState, masterNode: self.masterNode,
            startedAt: self.startedAt)
    }

    static func osRelease() -> [String: String] {
        guard let text = try? String(contentsOfFile: "/etc/os-release", encoding: .utf8) else { return [:] }
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { continue }
            values[String(parts[0])] = String(parts[1]).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        }
        return values
    }

    /// /proc/meminfo values in KiB.
    static func meminfo() -> [String: Int64] {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return [:] }
        var values: [String: Int64] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, let number = parts[1].split(separator: " ").first.flatMap({ Int64($0) }) else { continue }
            values[String(parts[0])] = number
        }
        return values
    }
}

public enum ConnectorVersion {
    public static let current = ProductVersion.current
}
