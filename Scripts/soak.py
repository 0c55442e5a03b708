#!/usr/bin/env python3
"""Soak (issue 11): the real programs (release build) under sustained, messy use for a bounded time,
with their resources sampled every 10 s. Prints, per process, RSS, open file descriptors and
threads at the start and the end of the measured part (after a warm-up) and the slope of each
(per minute), and how many new connections the connector opened to the component per second
compared to requests per second (nginx stub_status).

What runs meanwhile, in a loop:
  * wrk -c16 through the engineer's session (10 s at a time),
  * session churn: a second `relayctl session open`, a few requests, then SIGTERM,
  * cancelled requests: 10 MiB downloads cut after 50 ms,
  * reconnects: the customer turns remote access off and on (`connector mode disabled`, then `all`),
    so the tunnel closes and is dialed again.

    Scripts/soak.py [--minutes 10] [--warmup 60] [--no-build]

Exits 1 if RSS grows faster than 1 MiB/min or file descriptors or threads by more than 1/min
after the warm-up."""
import argparse, json, os, re, signal, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Stack, free_port, header_args, nginx, release_bin, require_tools, rss_kib, wait_port  # noqa: E402


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Threads:")).split()[1])


def slope(points):
    """Least-squares slope of (t, value) points, per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if var == 0 else sum((t - mt) * (v - mv) for t, v in points) / var * 60


def nginx_status(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
    accepts, handled, requests = map(int, re.search(r"\n\s*(\d+)\s+(\d+)\s+(\d+)", text).groups())
    return accepts, requests


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--warmup", type=int, default=60, help="seconds left out of the slopes")
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    require_tools("wrk", "nginx", "curl")
    bin_dir = release_bin(args.no_build)
    work = tempfile.mkdtemp(prefix="relay-soak-")
    component_port, status_port = free_port(), free_port()
    web = nginx(work, component_port, status_port)
    stack = None
    # relayctl is not sampled: turning remote access off ends its session, and it is started again.
    samples = {"relay": [], "connector": []}
    try:
        wait_port(component_port, proc=web, log=f"{work}/nginx-error.log")
        stack = Stack(work, bin_dir, component_port)
        stack.start("connector", [f"{bin_dir}/connector", "run", "--config", f"{work}/connector.yaml", "--log-level", "warning"])
        stack.request_access("24h", "soak")
        url = stack.open_session(extra=["--wait", "60s"])
        def connector(*arguments):
            return [f"{bin_dir}/connector", *arguments, "--config", f"{work}/connector.yaml"]
        started = time.time()
        end = started + args.minutes * 60
        next_sample = started
        cycle = 0
        reuse = []
        requests_done = 0
        while time.time() < end:
            cycle += 1
            if stack.procs["relayctl"].poll() is not None:
                # The customer turned remote access off last cycle, which ended the session: open a new one.
                url = stack.open_session(extra=["--wait", "60s"])
            before = nginx_status(status_port)
            load = subprocess.Popen(["wrk", "-t1", "-c16", "-d10s", *header_args(url), f"{url}/1k"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            # Session churn beside the load: a second session, a few requests, stopped.
            try:
                churn_url = stack.open_session(name="churn", extra=["--wait", "60s"])
                for _ in range(5):
                    subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "10", *header_args(churn_url), f"{churn_url}/1k"])
            finally:
                stack.procs["churn"].send_signal(signal.SIGTERM)
                stack.procs["churn"].wait(timeout=30)
            # Cancelled downloads.
            for _ in range(5):
                subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "0.05", *header_args(url), f"{url}/10m"])
            out, _ = load.communicate(timeout=60)
            after = nginx_status(status_port)
            done = re.search(r"(\d+) requests in", out)
            if not done or int(done.group(1)) == 0:
                raise SystemExit(f"wrk got nothing through the session in cycle {cycle}: {out}")
            requests_done += int(done.group(1))
            reuse.append((after[0] - before[0], after[1] - before[1]))
            # Reconnects: remote access off and on again, every third cycle.
            if cycle % 3 == 0:
                subprocess.run(connector("mode", "disabled", "--as", "soak"), stdout=subprocess.DEVNULL, check=True)
                subprocess.run(connector("mode", "config", "--as", "soak"), stdout=subprocess.DEVNULL, check=True)
                deadline = time.time() + 60
                while time.time() < deadline:
                    status = json.loads(subprocess.run(connector("status", "--json"), capture_output=True, text=True).stdout)
                    if status["tunnels"]:
                        break
                    time.sleep(0.2)
            now = time.time()
            if now >= next_sample:
                for name in samples:
                    pid = stack.procs[name].pid
                    samples[name].append((now - started, rss_kib(pid) / 1024, fds(pid), threads(pid)))
                next_sample = now + 10
        failed = False
        print(f"soak: {args.minutes:g} min, {cycle} cycles (wrk 10 s at 16 connections, a churned session, 5 cancelled downloads; "
              f"remote access off and on every third, which ends the session: a new one is opened); {requests_done} requests "
              f"through the session; slopes after a {args.warmup} s warm-up")
        # Each slope over the whole measured part, then over its second half alone: growth that
        # levels off (allocator arenas, pools reaching their size) shows as a second half near zero.
        print(f"{'process':<10} {'RSS MiB':>16} {'slope/min':>17}   {'fds':>9} {'slope/min':>17}   {'threads':>9} {'slope/min':>17}")
        print(f"{'':<10} {'':>16} {'all, 2nd half':>17}   {'':>9} {'all, 2nd half':>17}   {'':>9} {'all, 2nd half':>17}")
        for name, points in samples.items():
            measured = [p for p in points if p[0] >= args.warmup]
            if len(measured) < 2:
                continue
            later = measured[len(measured) // 2:]
            rows = []
            for index, limit in ((1, 1.0), (2, 1.0), (3, 1.0)):
                s = slope([(p[0], p[index]) for p in measured])
                s2 = slope([(p[0], p[index]) for p in later])
                failed |= s > limit
                rows.append(f"{measured[0][index]:>7.1f}->{measured[-1][index]:<7.1f} {s:>+8.2f},{s2:>+8.2f}")
            print(f"{name:<10} " + "   ".join(rows))
        connections = sum(c for c, _ in reuse)
        requests = sum(r for _, r in reuse)
        if requests:
            print(f"component connections: {connections} new for {requests} requests ({connections / requests * 1000:.1f} per 1,000 requests)")
        if failed:
            print(f"a resource grew after the warm-up; logs in {work}")
            sys.exit(1)
    finally:
        if stack:
            stack.stop()
        web.terminate()


if __name__ == "__main__":
    main()
