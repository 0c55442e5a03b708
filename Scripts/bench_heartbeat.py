#!/usr/bin/env python3
"""Benchmark: heartbeats one relay node answers per second with the embedded SQLite store, and
their p99 latency, beside /healthz on the same keep-alive HTTPS connections (the same TLS and HTTP
path without authentication or the store), in one run.

  python3 Scripts/bench_heartbeat.py [--duration 10] [--no-build]

Each heartbeat is a real one: a registered node's credential, a full body with node health;
the relay authenticates it, applies it to the store (node row, cluster mode) and answers the flag.
Needs wrk (apt-get install wrk).
"""
import argparse, json, os, shutil, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Stack, free_port, release_bin, wrk


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    bin_dir = release_bin(args.no_build)
    work = tempfile.mkdtemp(prefix="relay-hb-bench-")
    stack = None
    try:
        stack = Stack(work, bin_dir, component_port=free_port())
        cred = stack.credential
        body = {
            "clusterID": cred["clusterID"], "nodeID": cred["nodeID"], "sourceType": "server", "connectorVersion": "bench",
            "privacy": {"mode": "all", "components": ["ui"]}, "decisions": [],
            "health": {"osName": "Debian GNU/Linux", "osVersion": "12", "cpuCores": 2, "cpuLoad": 0.5,
                       "ramTotalBytes": 25_000_000_000, "ramFreeBytes": 20_000_000_000, "diskTotalBytes": 250_000_000_000,
                       "diskUsedBytes": 17_000_000_000, "serverState": "running", "masterNode": True,
                       "startedAt": "2026-11-21T08:00:00Z"},
        }
        script = f"{work}/heartbeat.lua"
        stack.write("heartbeat.lua",
                    'wrk.method = "POST"\n'
                    f"wrk.body = {json.dumps(json.dumps(body))}\n"
                    'wrk.headers["Content-Type"] = "application/json"\n'
                    f'wrk.headers["Authorization"] = "Bearer {cred["credential"]}"\n')
        base = f"https://127.0.0.1:{stack.relay_port}"
        print(f"== one relay node, embedded SQLite store; wrk -t2, keep-alive HTTPS, {args.duration} s per run (latency in ms)")
        print(f"{'connections':>11} {'endpoint':>14} {'req/s':>10} {'p50':>8} {'p99':>8}   ratio heartbeat/healthz (req/s)")
        for connections in (16, 64):
            h = wrk(f"{base}/healthz", connections, args.duration)
            b = wrk(f"{base}/v1/heartbeat", connections, args.duration, script=script)
            if b[3] or h[3]:
                print(f"non-2xx responses: heartbeat {b[3]}, healthz {h[3]}")
            print(f"{connections:>11} {'/healthz':>14} {h[0]:>10.0f} {h[1]:>8.2f} {h[2]:>8.2f}")
            print(f"{connections:>11} {'/v1/heartbeat':>14} {b[0]:>10.0f} {b[1]:>8.2f} {b[2]:>8.2f}   {b[0] / h[0]:.2f}")
        # At one heartbeat a minute per node, what the measured rate sustains:
        print(f"\nat 60 s per heartbeat, {b[0]:.0f} heartbeats/s is about {b[0] * 60:,.0f} connector nodes per relay node")
    finally:
        if stack:
            stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
