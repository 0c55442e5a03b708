#!/usr/bin/env python3
"""Websockets through the session against a direct connection, in one run (issue 13):

  python3 Scripts/perf_websocket.py [--no-build] [--size-mib 100] [--messages 1000]

The demo component's `/ws/echo` reached directly and through relayctl -> relay -> connector (release
build, loopback, TLS on both network legs). Measures the MiB/s of echoing `--size-mib` MiB in 1 MiB
binary messages (up to 8 in flight, every byte checked), and the round-trip latency of small text
messages sent one at a time (p50, p99). Uses the Python `websockets` client (PyPI; installed when
missing). Bounded: every wait has a deadline.
"""
import argparse, asyncio, hashlib, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Stack, free_port, release_bin, session_headers, wait_port  # noqa: E402


def ensure_websockets():
    try:
        import websockets  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "websockets"], check=True)


async def throughput(url, size_mib, in_flight=8):
    import websockets
    block = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB
    async with websockets.connect(url, max_size=4 << 20, compression=None, open_timeout=30, additional_headers=session_headers(url)) as ws:
        start = time.perf_counter()
        sent = received = 0

        async def sender():
            nonlocal sent
            while sent < size_mib:
                while sent - received >= in_flight:
                    await asyncio.sleep(0.001)
                await ws.send(block[:4] + sent.to_bytes(4, "big") + block[8:])
                sent += 1

        async def receiver():
            nonlocal received
            while received < size_mib:
                message = await asyncio.wait_for(ws.recv(), 60)
                if len(message) != len(block) or int.from_bytes(message[4:8], "big") != received:
                    raise SystemExit(f"message {received} came back changed")
                received += 1
        await asyncio.gather(sender(), receiver())
        return size_mib / (time.perf_counter() - start)


async def latency(url, count):
    import websockets
    async with websockets.connect(url, compression=None, open_timeout=30, additional_headers=session_headers(url)) as ws:
        times = []
        for index in range(count):
            start = time.perf_counter()
            await ws.send(f"ping {index}")
            if await asyncio.wait_for(ws.recv(), 30) != f"ping {index}":
                raise SystemExit("an echo came back changed")
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        return times[len(times) // 2], times[int(len(times) * 0.99) - 1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ensure_websockets()
    bin_dir = release_bin(args.no_build)
    work = tempfile.mkdtemp(prefix="relay-ws-")
    port = free_port()
    component = subprocess.Popen([f"{bin_dir}/demo-component", "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL)
    stack = None
    try:
        wait_port(port, proc=component)
        stack = Stack(work, bin_dir, port)
        stack.start("connector", [f"{bin_dir}/connector", "--config", f"{work}/connector.yaml", "--log-level", "warning"])
        stack.request_access("2h", "websocket benchmark")
        base = stack.open_session()
        paths = {"direct": f"ws://127.0.0.1:{port}/ws/echo", "ours": base.replace("http://", "ws://") + "/ws/echo"}
        results = {name: {"mibs": [], "p50": [], "p99": []} for name in paths}
        for _ in range(args.repeats):
            for name, url in paths.items():  # interleaved, so both see the same machine
                results[name]["mibs"].append(asyncio.run(throughput(url, args.size_mib)))
                p50, p99 = asyncio.run(latency(url, args.messages))
                results[name]["p50"].append(p50)
                results[name]["p99"].append(p99)
        direct = statistics.median(results["direct"]["mibs"])
        print(f"websocket echo through the demo component, {args.size_mib} MiB in 1 MiB messages; "
              f"{args.messages} text round trips one at a time; median of {args.repeats} (range)")
        print("| path | MiB/s | x direct | p50 ms | p99 ms |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, figures in results.items():
            mibs = figures["mibs"]
            print(f"| {name} | {statistics.median(mibs):,.0f} ({min(mibs):,.0f}-{max(mibs):,.0f}) | "
                  f"{statistics.median(mibs) / direct:.2f} | {statistics.median(figures['p50']):.2f} | {statistics.median(figures['p99']):.2f} |")
    finally:
        if stack:
            stack.stop()
        component.terminate()
        component.wait(timeout=10)


if __name__ == "__main__":
    main()
