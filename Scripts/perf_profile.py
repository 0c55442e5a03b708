#!/usr/bin/env python3
"""Where each of our processes spends its CPU (issue 12), by the library that owns the work:

  python3 Scripts/perf_profile.py [--no-build] [--seconds 6] [--out docs/perf/profile.md]

Runs the same path as Scripts/perf.py (wrk -> relayctl -> relay -> connector -> nginx: 1 KiB GETs
at 64 and at 1 connection, then 10 MiB downloads one after another) and records perf (cpu-clock,
frame-pointer call graphs) on the three processes at once; then one relay node answering heartbeats
(SQLite). Each sample goes to the innermost frame that belongs to a named Swift module
(retain/release, malloc and the like count for the module that called them); a sample whose leaf is
in the kernel counts as "kernel" whoever made the syscall. A library's share includes the work our
code asks of it (a stream channel per request, timers, conversions), so it shows where the time is,
not whom to blame.
Needs linux-perf (Debian) and perf_event_paranoid <= 1 (or root). Loopback only; bounded in time.
"""
import argparse, collections, os, re, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ROOT, Stack, cpu_seconds, free_port, header_args, nginx, release_bin, require_tools, wait_port  # noqa: E402
import perf_fleet  # noqa: E402

# Swift module -> the group a reader of the table cares about.
GROUPS = {
    "ours": ["TunnelCore", "Connector", "CustomerAudit", "PrivacyPolicy", "Relay", "RelayCtlKit", "RelayStore",
             "RelayAPI", "RelayModel", "ConfigKit", "relay", "connector", "relayctl"],
    "swift-nio-http2 (HTTP/2, HPACK, stream channels)": ["NIOHTTP2", "NIOHPACK"],
    "swift-nio (pipelines, futures, event loops, HTTP/1, websocket)": [
        "NIOCore", "NIOPosix", "NIOHTTP1", "NIOWebSocket", "_NIODataStructures", "NIOConcurrencyHelpers", "NIOExtras"],
    "TLS (swift-nio-ssl, BoringSSL)": ["NIOSSL"],
    "JSON (Foundation)": ["FoundationEssentials", "Foundation", "NIOFoundationCompat"],
    "GRDB, SQLite": ["GRDB"],
    "swift-crypto": ["Crypto", "_CryptoExtras"],
    "logging, metrics": ["Logging", "Metrics", "Prometheus"],
}
MODULE_GROUP = {module: group for group, modules in GROUPS.items() for module in modules}
MANGLED = re.compile(r"^\$s(\d+)")


def owner(symbol, dso):
    """The group of one frame, or None when the frame is runtime or libc code working for its caller."""
    if "libsqlite" in dso:
        return "GRDB, SQLite"
    if "CCryptoBoringSSL" in symbol or symbol.startswith(("ssl3_", "SSL_", "aes_", "gcm_", "EVP_")):
        return "TLS (swift-nio-ssl, BoringSSL)"
    if "libswift_Concurrency" in dso or "libdispatch" in dso or "libswiftDispatch" in dso:
        return "Swift concurrency, Dispatch (thread hand-offs)"
    found = MANGLED.match(symbol)
    if not found:
        return None
    length = int(found.group(1))
    return MODULE_GROUP.get(symbol[found.end():found.end() + length])


def attribute(perf_data):
    """{pid: Counter(group -> samples)} from `perf script`."""
    out = subprocess.run(["perf", "script", "-i", perf_data, "-F", "pid,ip,sym,dso"], capture_output=True,
                         text=True, check=True).stdout
    counts = collections.defaultdict(collections.Counter)
    for block in out.split("\n\n"):
        lines = block.strip().splitlines()
        if len(lines) < 2:
            continue
        pid = int(lines[0].split()[0])
        frames = []
        for line in lines[1:]:
            parts = line.strip().split(None, 1)
            rest = parts[1] if len(parts) > 1 else ""
            symbol, _, dso = rest.rpartition(" (")
            frames.append((symbol.split("+0x")[0], dso.rstrip(")")))
        if "kernel" in frames[0][1]:
            counts[pid]["kernel (syscalls, wake-ups, TCP loopback)"] += 1
            continue
        group = next((g for g in (owner(s, d) for s, d in frames) if g), None)
        if group is None:
            group = "C runtime, unattributed"
        counts[pid][group] += 1
    return counts


def written_bytes(pid):
    """Bytes the process has written to files and sockets so far (relayctl: what curl received)."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def record(pids, seconds, path):
    subprocess.run(["perf", "record", "-q", "-F", "999", "-g", "-o", path, "-p", ",".join(map(str, pids)),
                    "--", "sleep", str(seconds)], check=True, stderr=subprocess.DEVNULL)


def table(title, processes, counts, cpu_per, unit="request"):
    """Markdown: one column per process, each group's share of that process's samples, and its CPU
    per `unit` when `cpu_per` (µs per unit, each process) is known."""
    groups = sorted({g for pid in processes.values() for g in counts[pid]},
                    key=lambda g: -sum(counts[p][g] / max(1, sum(counts[p].values())) for p in processes.values()))
    names = list(processes)
    rows = [f"| {title} | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for group in groups:
        cells = []
        for name in names:
            total = sum(counts[processes[name]].values()) or 1
            share = counts[processes[name]][group] / total
            cells.append(f"{100 * share:.1f}%" + (f" ({share * cpu_per[name]:.0f} µs)" if cpu_per else ""))
        rows.append(f"| {group} | " + " | ".join(cells) + " |")
    rows.append("| samples | " + " | ".join(str(sum(counts[processes[n]].values())) for n in names) + " |")
    if cpu_per:
        rows.append(f"| CPU per {unit} (from /proc) | " + " | ".join(f"{cpu_per[n]:.0f} µs" for n in names) + " |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=6, help="perf recording time per profile")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "perf", "profile.md"))
    args = parser.parse_args()
    require_tools("perf", "wrk", "nginx")
    bin_dir = release_bin(args.no_build)
    work = tempfile.mkdtemp(prefix="relay-profile-")
    port = free_port()
    web = nginx(work, port)
    stack = None
    lines = ["# Where the CPU goes", "",
             f"`python3 Scripts/perf_profile.py`, {time.strftime('%Y-%m-%d')}, release build, 2 cores, perf cpu-clock at 999 Hz "
             "with frame-pointer call graphs. Each sample counts for the innermost frame of a named module (runtime "
             "and libc frames count for their caller); kernel leaves count as kernel.", ""]
    try:
        wait_port(port, proc=web, log=f"{work}/nginx-error.log")
        stack = Stack(work, bin_dir, port)
        stack.start("connector", [f"{bin_dir}/connector", "--config", f"{work}/connector.yaml", "--log-level", "warning"])
        stack.request_access("2h", "profile")
        url = stack.open_session() + "/1k"
        processes = {name: stack.procs[name].pid for name in ("relayctl", "relay", "connector")}
        subprocess.run(["wrk", "-t2", "-c64", "-d3s", *header_args(url), url], capture_output=True, check=True)
        duration = args.seconds + 4
        for connections in (64, 1):
            print(f"== requests, {connections} connections", flush=True)
            load = subprocess.Popen(["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s", *header_args(url), url],
                                    stdout=subprocess.PIPE, text=True)
            time.sleep(2)
            before = {n: cpu_seconds([p]) for n, p in processes.items()}
            record(processes.values(), args.seconds, f"{work}/requests-{connections}.data")
            after = {n: cpu_seconds([p]) for n, p in processes.items()}
            out = load.communicate(timeout=duration + 60)[0]
            done = re.search(r"(\d+) requests in ([\d.]+)s", out)
            rate = int(done.group(1)) / float(done.group(2))
            cpu_per = {n: 1e6 * (after[n] - before[n]) / (rate * args.seconds) for n in processes}
            lines += [f"## 1 KiB GETs at {connections} connection{'s' if connections > 1 else ''} ({rate:,.0f} req/s under perf)", ""]
            lines += table("group", processes, attribute(f"{work}/requests-{connections}.data"), cpu_per) + [""]

        print("== downloads", flush=True)
        curl = subprocess.Popen(["bash", "-c", f"end=$((SECONDS+{duration})); while [ $SECONDS -lt $end ]; do "
                                 f"curl -sf -o /dev/null {' '.join(repr(a) for a in header_args(url))} {url[:-3]}/10m || exit 1; done"])
        time.sleep(2)
        before = {n: cpu_seconds([p]) for n, p in processes.items()}
        moved = written_bytes(processes["relayctl"])
        record(processes.values(), args.seconds, f"{work}/downloads.data")
        after = {n: cpu_seconds([p]) for n, p in processes.items()}
        gib = (written_bytes(processes["relayctl"]) - moved) / (1 << 30)
        if curl.wait(timeout=duration + 60) != 0:
            raise SystemExit("a 10 MiB download through the path failed")
        cpu_per_gib = {n: 1e6 * (after[n] - before[n]) / gib for n in processes}
        lines += [f"## 10 MiB downloads, one at a time ({gib * 1024 / args.seconds:,.0f} MiB/s under perf; "
                  "µs of CPU per MiB)", ""]
        lines += table("group", processes, attribute(f"{work}/downloads.data"), {n: v / 1024 for n, v in cpu_per_gib.items()}, unit="MiB") + [""]

        print("== heartbeats", flush=True)
        relay = stack.procs["relay"].pid
        original = perf_fleet.wrk

        def profiled(url, connections, seconds, script=None):
            if script and connections == 64 and not getattr(profiled, "done", False):
                profiled.done = True
                beats = subprocess.Popen(["wrk", "-t2", "-c64", f"-d{args.seconds + 4}s", "-s", script, url],
                                         stdout=subprocess.PIPE, text=True)
                time.sleep(2)
                record([relay], args.seconds, f"{work}/heartbeats.data")
                beats.communicate(timeout=args.seconds + 60)
            return original(url, connections, seconds, script=script)
        perf_fleet.wrk = profiled
        perf_fleet.heartbeats(stack, 200, 4, 1)
        lines += ["## Heartbeats, one relay node (SQLite), 64 connections, 200 nodes", ""]
        lines += table("group", {"relay": relay}, attribute(f"{work}/heartbeats.data"), None) + [""]
    finally:
        if stack:
            stack.stop()
        web.terminate()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
