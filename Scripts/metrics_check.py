#!/usr/bin/env python3
"""A real scrape of a relay's /metrics, checked as Prometheus would take it.

Starts relay, connector, a demo component and `relayctl session open` (the programs, as built),
sends requests through the session, then scrapes the admin listener and checks the text with
`promtool check metrics` (Debian package `prometheus`) and the Python client's parser (PyPI
`prometheus_client`): every family has HELP and TYPE, the names lint clean, and the figures show
what happened (a tunnel, a session, its requests and bytes, heartbeats, handshakes, store calls).
Writes the scrape to --out. Loopback only, every wait bounded.

  python3 Scripts/metrics_check.py [--debug] [--no-build] [--out PATH]
"""
import argparse, os, shutil, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Stack, built_bin, free_port, session_headers, wait_port  # noqa: E402


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.headers.get("content-type", ""), answer.read().decode()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="debug binaries (the tests' build)")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--out", default=".build/metrics-scrape.txt")
    args = parser.parse_args()
    from prometheus_client.parser import text_string_to_metric_families
    promtool = shutil.which("promtool")
    if not promtool:
        raise SystemExit("promtool not found (Debian package prometheus)")
    bin_dir = built_bin(args.no_build, args.debug)
    work = tempfile.mkdtemp(prefix="metrics-check-")
    component_port = free_port()
    stack = None
    try:
        stack = Stack(work, bin_dir, component_port)
        stack.start("component", [f"{bin_dir}/demo-component", "--name", "ui", "--listen", f"127.0.0.1:{component_port}"])
        wait_port(component_port, timeout=30, proc=stack.procs["component"], log=stack.log("component"))
        # The connector's figures for node_exporter: written at every interval and at its stop.
        with open(f"{work}/connector.yaml", "a") as f:
            f.write("metrics_textfile: connector.prom\nmetrics_textfile_interval: 1s\n")
        stack.start("connector", [f"{bin_dir}/connector", "run", "--config", f"{work}/connector.yaml", "--log-level", "notice"])
        stack.request_access("1h", "metrics check")
        url = stack.open_session()
        for _ in range(5):
            request = urllib.request.Request(url + "/", headers=session_headers(url))
            with urllib.request.urlopen(request, timeout=10) as answer:
                answer.read()
        deadline = time.time() + 30
        while True:
            content_type, text = scrape(stack.admin_port)
            families = {f.name: f for f in text_string_to_metric_families(text)}
            opened = sum(s.value for s in families["relay_streams_opened"].samples) if "relay_streams_opened" in families else 0
            if opened >= 5 or time.time() > deadline:
                break
            time.sleep(0.2)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)

        problems = []
        if not content_type.startswith("text/plain; version=0.0.4"):
            problems.append(f"content-type {content_type!r}")
        lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        if lint.returncode != 0:
            problems.append(f"promtool check metrics (exit {lint.returncode}): {lint.stdout}{lint.stderr}")

        def value(family, suffix="", **labels):
            found = [s.value for s in families.get(family, None).samples
                     if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items())] if family in families else []
            return sum(found) if found else None

        expected = [
            ("tunnels connected", value("relay_tunnels_connected"), lambda v: v == 1),
            ("clusters connected", value("relay_clusters_connected"), lambda v: v == 1),
            ("sessions active", value("relay_sessions_active"), lambda v: v == 1),
            ("approved requests", value("relay_access_requests", state="approved"), lambda v: v == 1),
            ("heartbeats ok", value("relay_heartbeats", "_total", outcome="ok"), lambda v: v >= 1),
            ("streams opened", value("relay_streams_opened", "_total"), lambda v: v >= 5),
            ("bytes to the expert", value("relay_bytes", "_total", direction="to_expert"), lambda v: v > 0),
            ("tunnel handshakes", value("relay_handshake_duration_seconds", "_count", link="tunnel"), lambda v: v >= 1),
            ("session handshakes", value("relay_handshake_duration_seconds", "_count", link="session"), lambda v: v >= 1),
            ("request latencies", value("relay_stream_duration_seconds", "_count"), lambda v: v >= 5),
            ("store calls", value("relay_store_operation_duration_seconds", "_count"), lambda v: v >= 1),
            ("API calls", value("relay_api_request_duration_seconds", "_count"), lambda v: v >= 1),
        ]
        for what, got, ok in expected:
            if got is None or not ok(got):
                problems.append(f"{what}: {got}")
            else:
                print(f"  {what:<22} {got:g}")
        for family in families.values():
            if not family.documentation:
                problems.append(f"{family.name} has no HELP")
        print(f"{len(families)} families, {sum(len(f.samples) for f in families.values())} samples; scrape in {args.out}")
        stack.stop()
        textfile = open(f"{work}/connector.prom").read()
        lint = subprocess.run([promtool, "check", "metrics"], input=textfile, capture_output=True, text=True)
        if lint.returncode != 0:
            problems.append(f"promtool check metrics on the connector's textfile (exit {lint.returncode}): {lint.stdout}{lint.stderr}")
        connector = {f.name: f for f in text_string_to_metric_families(textfile)}
        allowed = [s.value for s in connector["connector_requests"].samples if s.labels.get("decision") == "allow"]
        if allowed != [5]:
            problems.append(f"the connector's textfile counts {allowed} allowed requests, not 5")
        print(f"  connector textfile     {len(connector)} families, requests allowed {allowed}")
        if problems:
            raise SystemExit("metrics check failed:\n  " + "\n  ".join(problems))
        print("metrics check passed (promtool check metrics: clean; prometheus_client parser: every family read)")
    finally:
        if stack:
            stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
