#!/usr/bin/env python3
"""Benchmark: the same component reached directly and through the full path
(local port -> relayctl -> relay -> connector -> component), in one run, printed side by side.

  python3 Scripts/bench.py [--duration 10] [--slow-size-mib 1024] [--slow-rate 50M]

Measures (release build, real processes, loopback only, every loop bounded):
  * 1 KiB GETs with wrk at 16 and 64 connections: requests/s, p50 and p99 latency
  * MiB/s of a 10 MiB download (curl, best of 5)
  * a 1 GiB download read slowly (curl --limit-rate): RSS growth of relay, connector and relayctl
Needs wrk and curl (apt-get install wrk curl).
"""
import argparse, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Stack, free_port, release_bin, require_tools, rss_kib, wait_port, wrk


def download_mibs(url, size, tries=5):
    best = 0.0
    for _ in range(tries):
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}", url],
                             capture_output=True, text=True, timeout=120).stdout.split()
        if int(float(out[1])) != size:
            raise SystemExit(f"download of {url} returned {out[1]} bytes, expected {size}")
        best = max(best, float(out[0]) / (1 << 20))
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--slow-size-mib", type=int, default=1024)
    parser.add_argument("--slow-rate", default="50M", help="curl --limit-rate for the slow reader")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--limit", action="append", default=[], metavar="KEY=VALUE",
                        help="a limits: entry for relay.yaml and connector.yaml, e.g. initial_window_size=1MiB")
    parser.add_argument("--skip-wrk", action="store_true")
    args = parser.parse_args()
    require_tools("wrk", "curl", "openssl")

    bin_dir = release_bin(args.no_build)
    work = tempfile.mkdtemp(prefix="relay-bench-")
    component_port = free_port()
    stack = None
    try:
        stack = Stack(work, bin_dir, component_port, limits=args.limit)
        procs = stack.procs
        stack.start("component", [f"{bin_dir}/demo-component", "--listen", f"127.0.0.1:{component_port}"])
        wait_port(component_port, proc=procs["component"], log=stack.log("component"))
        stack.start("connector", [f"{bin_dir}/connector", "--config", f"{work}/connector.yaml", "--log-level", "warning"])
        stack.request_access("2h", "benchmark")
        path = stack.open_session()
        direct = f"http://127.0.0.1:{component_port}"

        print(f"== 1 KiB GETs, wrk -t2, {args.duration} s per run (latency in ms)")
        print(f"{'connections':>11} {'':>9} {'req/s':>10} {'p50':>8} {'p99':>8}   ratio path/direct (req/s, p50, p99)")
        for connections in (() if args.skip_wrk else (16, 64)):
            d = wrk(f"{direct}/bytes/1024", connections, args.duration)
            p = wrk(f"{path}/bytes/1024", connections, args.duration)
            if d[3] or p[3]:
                print(f"non-2xx responses: direct {d[3]}, path {p[3]}")
                if os.environ.get("BENCH_DEBUG"):
                    for n in procs:
                        print(n, open(f"{work}/{n}.log").read()[-3000:])
            print(f"{connections:>11} {'direct':>9} {d[0]:>10.0f} {d[1]:>8.2f} {d[2]:>8.2f}")
            print(f"{connections:>11} {'path':>9} {p[0]:>10.0f} {p[1]:>8.2f} {p[2]:>8.2f}   "
                  f"{p[0] / d[0]:.2f}, {p[1] / d[1]:.1f}x, {p[2] / d[2]:.1f}x")

        size = 10 << 20
        d = download_mibs(f"{direct}/bytes/{size}", size)
        p = download_mibs(f"{path}/bytes/{size}", size)
        print(f"\n== 10 MiB download, best of 5 (MiB/s)\n   direct {d:.0f}   path {p:.0f}   ratio {p / d:.2f}")

        slow = args.slow_size_mib << 20
        watched = ("relay", "connector", "relayctl")
        base = {n: rss_kib(procs[n].pid) for n in watched}
        peak = dict(base)
        reader = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--limit-rate", args.slow_rate, "-w", "%{size_download}",
                                   f"{path}/bytes/{slow}"], stdout=subprocess.PIPE, text=True)
        started = time.time()
        while reader.poll() is None and time.time() - started < 600:
            for n in watched:
                peak[n] = max(peak[n], rss_kib(procs[n].pid))
            time.sleep(0.2)
        if reader.poll() is None:
            reader.kill()
            raise SystemExit("slow download did not finish in 600 s")
        received = int(reader.stdout.read() or 0)
        elapsed = time.time() - started
        print(f"\n== {args.slow_size_mib} MiB download read slowly (curl --limit-rate {args.slow_rate}): "
              f"{received / (1 << 20):.0f} MiB in {elapsed:.0f} s")
        print(f"{'process':>10} {'RSS before':>11} {'peak':>9} {'growth':>9}   (limit 16 MiB)")
        worst = 0
        for n in watched:
            growth = (peak[n] - base[n]) / 1024
            worst = max(worst, growth)
            print(f"{n:>10} {base[n] / 1024:>9.1f} M {peak[n] / 1024:>7.1f} M {growth:>7.1f} M")
        if received != slow:
            raise SystemExit(f"slow download got {received} bytes, expected {slow}")
        print(f"\nworst RSS growth {worst:.1f} MiB: {'within' if worst <= 16 else 'OVER'} the 16 MiB bound")
    finally:
        if stack:
            stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
