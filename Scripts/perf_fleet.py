"""The performance harness's fleet figures: heartbeats/s one relay node answers from many registered
nodes, and the relay's memory per idle tunnel with many tunnels attached."""
import json, os, ssl, statistics, time, urllib.request

from benchlib import Stack, cpu_seconds, free_port, log_tail, rss_kib, wrk

HEALTH = {"osName": "Debian GNU/Linux", "osVersion": "12", "cpuCores": 2, "cpuLoad": 0.5,
          "ramTotalBytes": 25_000_000_000, "ramFreeBytes": 20_000_000_000, "diskTotalBytes": 250_000_000_000,
          "diskUsedBytes": 17_000_000_000, "serverState": "running", "masterNode": False,
          "startedAt": "2026-11-21T08:00:00Z"}


def api(stack, path, body, token=None):
    context = ssl.create_default_context(cafile=f"{stack.work}/ca.pem")
    request = urllib.request.Request(f"https://127.0.0.1:{stack.relay_port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, context=context, timeout=30) as answer:
        return json.load(answer)


def register_nodes(stack, cluster, count):
    """`count` more nodes of `cluster`, each registered with its own enrollment token: (nodeID, credential)."""
    nodes = []
    for n in range(count):
        enrollment = api(stack, f"/v1/clusters/{cluster}/enroll", {}, stack.ops_token)["enrollmentToken"]
        node_id = f"hb-{n}"
        nodes.append((node_id, api(stack, "/v1/register", {"enrollmentToken": enrollment, "nodeID": node_id})["credential"]))
    return nodes


def heartbeat_script(stack, count):
    """A wrk script sending heartbeats as a fleet does: `count` nodes in turn, each with its own
    credential and a CPU load that differs on every beat (a real node's health is never the same
    twice). Returns its path."""
    cluster = stack.credential["clusterID"]
    nodes = register_nodes(stack, cluster, count)
    bodies = [json.dumps({"clusterID": cluster, "nodeID": node_id, "sourceType": "server", "connectorVersion": "perf",
                          "privacy": {"mode": "all", "components": ["ui"]}, "decisions": [],
                          "health": dict(HEALTH, cpuLoad=0.123456)}) for node_id, _ in nodes]
    lua = ("local bodies = {" + ",".join(json.dumps(b) for b in bodies) + "}\n"
           "local auths = {" + ",".join(json.dumps(f"Bearer {c}") for _, c in nodes) + "}\n"
           "local i = math.random(#bodies)\n"
           "request = function()\n"
           "  i = i % #bodies + 1\n"
           "  local body = bodies[i]:gsub('0.123456', string.format('%.6f', math.random()))\n"
           "  return wrk.format('POST', '/v1/heartbeat', {['Content-Type'] = 'application/json', "
           "['Authorization'] = auths[i]}, body)\n"
           "end\n")
    stack.write("heartbeats.lua", lua)
    return f"{stack.work}/heartbeats.lua"


def heartbeats(stack, count, duration, repeats):
    """Heartbeats/s and latency one relay node answers (`heartbeat_script`), at 16 and 64 connections."""
    script = heartbeat_script(stack, count)
    base = f"https://127.0.0.1:{stack.relay_port}"
    relay = stack.procs["relay"].pid

    def measured(url, connections, script=None):
        """One wrk run and the relay's CPU per request in it (steadier than the rate on a shared machine)."""
        before = cpu_seconds([relay])
        run = wrk(url, connections, duration, script=script)
        run.cpu_us = 1e6 * (cpu_seconds([relay]) - before) / max(run.requests, 1)
        return run

    runs = {16: [], 64: []}
    healthz = []
    for connections in runs:
        for _ in range(repeats):
            run = measured(f"{base}/v1/heartbeat", connections, script=script)
            if run.non2xx or run.socket_errors:
                raise SystemExit(f"heartbeats: {run.non2xx} non-2xx answers, {run.socket_errors} socket errors")
            runs[connections].append(run)
            print(f"  heartbeats c={connections}: {run.rps:,.0f}/s p50 {run.p50:.2f} ms p99 {run.p99:.2f} ms, "
                  f"relay CPU {run.cpu_us:.0f} us each", flush=True)
        healthz.append(measured(f"{base}/healthz", connections))
    rows = ["| heartbeats, one relay node, SQLite | connections | per second | p50 ms | p99 ms | relay CPU per request |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for connections, runs_at in runs.items():
        rows.append(f"| {count} nodes in turn, health differing each beat | {connections} | "
                    f"{statistics.median(r.rps for r in runs_at):,.0f} | {statistics.median(r.p50 for r in runs_at):.2f} | "
                    f"{statistics.median(r.p99 for r in runs_at):.2f} | {statistics.median(r.cpu_us for r in runs_at):.0f} µs |")
    for connections, h in zip(runs, healthz):
        rows.append(f"| `/healthz` on the same listener (no store) | {connections} | {h.rps:,.0f} | {h.p50:.2f} | {h.p99:.2f} | "
                    f"{h.cpu_us:.0f} µs |")
    return {"rate": statistics.median(r.rps for r in runs[64]), "table": "\n".join(rows)}


def idle_tunnels(work, bin_dir, count, settle=20):
    """A fresh relay with `count` idle tunnels attached, each from its own registered node, all
    dialed by one `tunnel-swarm` process through the real connector code: relay RSS before and after."""
    stack_dir = f"{work}/tunnels"
    os.makedirs(stack_dir)
    stack = Stack(stack_dir, bin_dir, free_port(), limits=["handshake_timeout=60s"],
                  relay_extra=f"connections:\n  max_per_address: {count + 1000}\n  max_total: {count + 2000}\n")
    try:
        stack.start("connector", [f"{bin_dir}/connector", "--config", f"{stack_dir}/connector.yaml", "--log-level", "warning"])
        stack.request_access("4h", "idle tunnels")
        cluster = stack.credential["clusterID"]
        nodes = register_nodes(stack, cluster, count)
        stack.write("swarm.jsonl", "".join(json.dumps({"clusterID": cluster, "nodeID": n, "credential": c}) + "\n" for n, c in nodes))
        time.sleep(2)
        relay = stack.procs["relay"].pid
        before = rss_kib(relay)
        stack.start("swarm", [f"{bin_dir}/tunnel-swarm", "--config", f"{stack_dir}/connector.yaml",
                              "--credentials", f"{stack_dir}/swarm.jsonl",
                              "--tunnel-url", f"wss://127.0.0.1:{stack.relay_port}/v1/tunnel"])
        swarm = stack.procs["swarm"]
        swarm_before = rss_kib(swarm.pid)
        started = time.time()
        deadline = started + 300
        while "all " not in open(stack.log("swarm")).read():
            if swarm.poll() is not None or time.time() > deadline:
                raise SystemExit(f"tunnel-swarm did not get {count} tunnels up{log_tail(stack.log('swarm'))}")
            time.sleep(0.5)
        up = time.time()
        time.sleep(settle)
        after = rss_kib(relay)
        print(f"  {count} tunnels up in {up - started:.0f} s; relay RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB", flush=True)
        return {"count": count, "before": before, "after": after, "per_tunnel": (after - before) / count,
                "dialer_per_tunnel": (rss_kib(swarm.pid) - swarm_before) / count}
    finally:
        stack.stop()
