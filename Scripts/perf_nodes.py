#!/usr/bin/env python3
"""Scale-out figures (issue 14), one harness, one run: heartbeats/s and their p99 answered by one
relay node on SQLite, one on PostgreSQL and two nodes sharing PostgreSQL (aggregate of both), and
the latency of opening an engineer's session on each (TLS + websocket upgrade to /v1/session: token
lookup, grant, tunnel lookup, the session's records). Starts its own throwaway PostgreSQL
(Scripts/postgres-test-server.sh). Every process shares the machine's cores with wrk and PostgreSQL:
two nodes here show the store's cost, not what two machines would give.

    python3 Scripts/perf_nodes.py [--debug] [--no-build] [--duration 10] [--repeats 3] [--write-readme]
"""
import argparse, base64, os, re, socket, ssl, statistics, subprocess, tempfile, threading, time

import perf_fleet
from benchlib import ROOT, Stack, free_port, log_tail, built_bin, require_tools, wait_port, wrk

README_BEGIN, README_END = "<!-- nodes:begin -->", "<!-- nodes:end -->"


def postgres(work):
    """A throwaway server in `work/pg`: (url without database, password)."""
    env = dict(os.environ, RELAY_TEST_POSTGRES_PORT=str(free_port()))
    out = subprocess.run([f"{ROOT}/Scripts/postgres-test-server.sh", "start", f"{work}/pg"], env=env, check=True,
                         capture_output=True, text=True).stdout
    url = re.search(r"RELAY_TEST_POSTGRES_URL=(\S+)", out).group(1)
    password = open(re.search(r"RELAY_TEST_POSTGRES_PASSWORD_FILE=(\S+)", out).group(1)).read().strip()
    return url.rsplit("/", 1)[0], password


def create_database(server, password, name):
    subprocess.run(["psql", f"{server}/postgres", "-q", "-c", f"CREATE DATABASE {name}"],
                   env=dict(os.environ, PGPASSWORD=password), check=True, stdout=subprocess.DEVNULL)


def store_block(work, server, database, node):
    return (f"node_name: {node}\ntoken_hash_key_file: {work}/token-hash.key\nstore: postgres\npostgres:\n"
            f"  url: {server}/{database}\n  password_file: {work}/db-password\n")


def open_session(port, token, cafile):
    """(seconds from connect to the relay's 101, of which the upgrade after TLS, status line) for one
    session; the session is then dropped."""
    context = ssl.create_default_context(cafile=cafile)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        # As relayctl does: without it the request waits behind the TLS Finished for a delayed ACK (40 ms).
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
        upgrade = time.perf_counter()
        key = base64.b64encode(os.urandom(16)).decode()
        tls.sendall((f"GET /v1/session HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: relay-tunnel.v1\r\n"
                     f"Authorization: Bearer {token}\r\nx-relay-cluster: bench\r\nx-relay-component: ui\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = tls.recv(4096)
            if not chunk:
                break
            head += chunk
        done = time.perf_counter()
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    return done - started, done - upgrade, status


def session_opens(port, token, cafile, count):
    """Milliseconds: (p50 whole, p50 upgrade, p99 upgrade) over `count` session opens."""
    whole, upgrades = [], []
    for _ in range(count):
        elapsed, upgrade, status = open_session(port, token, cafile)
        if " 101 " not in status + " ":
            raise SystemExit(f"session open on port {port}: {status}")
        whole.append(elapsed * 1000)
        upgrades.append(upgrade * 1000)
    upgrades.sort()
    return statistics.median(whole), statistics.median(upgrades), upgrades[max(0, int(len(upgrades) * 0.99) - 1)]


def wait_for_tunnel(port, token, cafile, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if " 101 " in open_session(port, token, cafile)[2] + " ":
            return
        time.sleep(0.5)
    raise SystemExit(f"no tunnel on port {port} within {timeout} s")


def heartbeat_runs(ports, script, duration, repeats, connections=64):
    """wrk on every port at once (connections split between them): [(rate, p99 ms)] per repeat, rates summed."""
    results = []
    for _ in range(repeats):
        runs = [None] * len(ports)

        def one(index, port):
            runs[index] = wrk(f"https://127.0.0.1:{port}/v1/heartbeat", connections // len(ports), duration, script=script)

        threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(ports)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for run in runs:
            if run.non2xx or run.socket_errors:
                raise SystemExit(f"heartbeats: {run.non2xx} non-2xx answers, {run.socket_errors} socket errors")
        results.append((sum(r.rps for r in runs), max(r.p99 for r in runs)))
    return results


def measure(name, bin_dir, work, component_port, args, server=None, password=None, nodes=1):
    """One configuration: its relay node(s), a connector with an approved request, then the figures."""
    os.makedirs(work)
    extra = ""
    if server:
        database = "perf_" + name.replace("-", "_")
        create_database(server, password, database)
        with open(f"{work}/db-password", "w") as f:
            f.write(password + "\n")
        os.chmod(f"{work}/db-password", 0o600)
        extra = store_block(work, server, database, "relay-a")
    stack = Stack(work, bin_dir, component_port, relay_extra=extra)
    try:
        ports = [stack.relay_port]
        if nodes == 2:
            port_b = free_port()
            config = open(f"{work}/relay.yaml").read().replace(f"127.0.0.1:{stack.relay_port}", f"127.0.0.1:{port_b}")
            config = config.replace(f"admin_listen: 127.0.0.1:{stack.admin_port}", f"admin_listen: 127.0.0.1:{free_port()}")
            config = config.replace("data_dir: relay-data", "data_dir: relay-data-b").replace("node_name: relay-a", "node_name: relay-b")
            stack.write("relay-b.yaml", config)
            stack.start("relay-b", [f"{bin_dir}/relay", "--config", f"{work}/relay-b.yaml", "--log-level", "warning"])
            wait_port(port_b, timeout=60, proc=stack.procs["relay-b"], log=stack.log("relay-b"))
            ports.append(port_b)
        stack.start("connector", [f"{bin_dir}/connector", "--config", f"{work}/connector.yaml", "--log-level", "warning"])
        stack.request_access("2h", "perf_nodes")
        cafile = f"{work}/ca.pem"
        for port in ports:
            wait_for_tunnel(port, stack.expert_token, cafile)
        script = perf_fleet.heartbeat_script(stack, args.heartbeat_nodes)
        runs = heartbeat_runs(ports, script, args.duration, args.repeats)
        opens = [session_opens(port, stack.expert_token, cafile, args.opens) for port in ports]
        figures = {
            "name": name, "rate": statistics.median(r for r, _ in runs), "p99": statistics.median(p for _, p in runs),
            "range": (min(r for r, _ in runs), max(r for r, _ in runs)),
            "open_p50": statistics.median(o[0] for o in opens), "upgrade_p50": statistics.median(o[1] for o in opens),
            "upgrade_p99": max(o[2] for o in opens),
        }
        print(f"  {name}: {figures['rate']:,.0f} heartbeats/s (p99 {figures['p99']:.2f} ms); session open p50 {figures['open_p50']:.2f} ms, "
              f"its upgrade p50 {figures['upgrade_p50']:.2f} ms, p99 {figures['upgrade_p99']:.2f} ms", flush=True)
        return figures
    except BaseException:
        for proc in ("relay", "relay-b", "connector"):
            if proc in stack.procs:
                print(f"--- {proc}{log_tail(stack.log(proc))}")
        raise
    finally:
        stack.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="debug binaries (the ones the tests build)")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--heartbeat-nodes", type=int, default=200)
    parser.add_argument("--opens", type=int, default=100, help="session opens per node")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    require_tools("wrk", "psql", "openssl")
    bin_dir = built_bin(args.no_build, debug=args.debug)
    work = tempfile.mkdtemp(prefix="perf-nodes-")
    os.chmod(work, 0o755)
    server, password = postgres(work)
    component = subprocess.Popen([f"{bin_dir}/demo-component", "--listen", f"127.0.0.1:{(port := free_port())}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        print(f"== heartbeats/s ({args.heartbeat_nodes} nodes in turn, 64 connections, {args.duration} s x {args.repeats}) "
              f"and session opens ({args.opens} per node)", flush=True)
        results = [
            measure("sqlite", bin_dir, f"{work}/sqlite", port, args),
            measure("postgres", bin_dir, f"{work}/postgres", port, args, server, password),
            measure("postgres-2", bin_dir, f"{work}/postgres-2", port, args, server, password, nodes=2),
        ]
    finally:
        component.terminate()
        subprocess.run([f"{ROOT}/Scripts/postgres-test-server.sh", "stop", f"{work}/pg"], check=False)
    base = results[0]["rate"]
    labels = {"sqlite": "one node, SQLite", "postgres": "one node, PostgreSQL", "postgres-2": "two nodes, one PostgreSQL (sum)"}
    rows = [f"Measured {time.strftime('%Y-%m-%d')} by `python3 Scripts/perf_nodes.py{' --debug' if args.debug else ''}` on "
            f"{os.cpu_count()} cores, loopback; relay nodes, PostgreSQL, the connector and wrk share the cores.", "",
            "| store | heartbeats/s (range) | × one node SQLite | heartbeat p99 ms | session open p50 ms | its upgrade p50 ms | upgrade p99 ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        rows.append(f"| {labels[r['name']]} | {r['rate']:,.0f} ({r['range'][0]:,.0f}-{r['range'][1]:,.0f}) | {r['rate'] / base:.2f} | "
                    f"{r['p99']:.2f} | {r['open_p50']:.2f} | {r['upgrade_p50']:.2f} | {r['upgrade_p99']:.2f} |")
    rows += ["", f"{args.heartbeat_nodes} registered nodes heartbeating in turn (health differing each beat), wrk at 64 connections "
             f"(split over the nodes), {args.duration} s, median of {args.repeats}; {args.opens} session opens per node, one at a time "
             "(TLS, then the upgrade: token, grant and tunnel looked up, the session recorded)."]
    table = "\n".join(rows)
    print(table)
    if args.write_readme:
        path = f"{ROOT}/README.md"
        text = open(path).read()
        block = f"{README_BEGIN}\n{table}\n{README_END}"
        text = re.sub(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), lambda _: block, text, flags=re.S)
        open(path, "w").write(text)


if __name__ == "__main__":
    main()
