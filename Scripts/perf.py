#!/usr/bin/env python3
"""The performance harness (issue 12): one nginx component reached four ways in one run, side by side:

  direct     wrk -> nginx
  proxy      wrk -> nginx as a reverse proxy (keep-alive upstream) -> nginx
  ssh -R     wrk -> sshd's forwarded port -> ssh -R -> nginx   (the classic support tunnel)
  ours       wrk -> relayctl session -> relay -> connector -> nginx   (TLS on both network legs)
  baseline   the same as ours, built from an older revision (--baseline REV), to show what changed

  python3 Scripts/perf.py [--quick] [--baseline REV] [--write-readme]

Measures, each wrk figure the median of 3 runs with its range: 1 KiB GETs at 1, 16 and 64
connections (req/s, p50, p99); 10 MiB downloads (MiB/s, sha256 checked through every path, and CPU
seconds per GiB); CPU seconds per 10,000 requests of every process on each path (from /proc); relay RSS per idle tunnel
with 1,000 tunnels attached; heartbeats/s one relay node answers (SQLite); RSS growth while a 1 GiB
download is read at 1 MB/s. Writes docs/perf/results.md and docs/perf/requests.png; --write-readme
puts the table into the README's performance section. Installs what it needs from Debian (nginx,
wrk, openssh-server, curl) and PyPI (matplotlib) when missing. Loopback only; every loop bounded.
"""
import argparse, getpass, hashlib, importlib.util, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ROOT, Stack, cpu_seconds, free_port, header_args, nginx, release_bin, rss_kib, wait_port, wrk  # noqa: E402
import perf_fleet, perf_report  # noqa: E402

CONNECTIONS = (1, 16, 64)


def install_tools():
    wanted = {"nginx": "nginx-light", "wrk": "wrk", "sshd": "openssh-server", "ssh": "openssh-client", "curl": "curl",
              "openssl": "openssl"}
    missing = sorted({pkg for tool, pkg in wanted.items() if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}")})
    if missing:
        print(f"installing {' '.join(missing)} (apt-get)", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if importlib.util.find_spec("matplotlib") is None:
        print("installing matplotlib (pip)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True)


def build_baseline(rev):
    """Release binaries of `rev`: kept in .build-baseline/SHA/bin; built there from `git archive` the
    first time (a full release build: minutes)."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    home = os.path.join(ROOT, ".build-baseline", sha)
    bin_dir = f"{home}/bin"
    if all(os.path.exists(f"{bin_dir}/{name}") for name in ("relay", "connector", "relayctl")):
        return sha, bin_dir
    src = f"{home}/src"
    if not os.path.exists(f"{src}/Package.swift"):
        os.makedirs(src, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
    print(f"building baseline {sha} (release)", flush=True)
    subprocess.run(["swift", "build", "-c", "release"], cwd=src, check=True, stdout=subprocess.DEVNULL)
    built = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], cwd=src, check=True,
                           capture_output=True, text=True).stdout.strip()
    os.makedirs(bin_dir, exist_ok=True)
    for name in ("relay", "connector", "relayctl"):
        shutil.copy(f"{built}/{name}", f"{bin_dir}/{name}")
    return sha, bin_dir


class SSHTunnel:
    """A local sshd and `ssh -R` from the 'customer' side: sshd's forwarded port reaches the component."""

    def __init__(self, work, component_port):
        self.dir = f"{work}/ssh"
        os.makedirs(self.dir)
        os.makedirs("/run/sshd", exist_ok=True)
        for key in ("host", "user"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{self.dir}/{key}"], check=True)
        shutil.copy(f"{self.dir}/user.pub", f"{self.dir}/authorized_keys")
        sshd_port, self.port = free_port(), free_port()
        with open(f"{self.dir}/sshd_config", "w") as f:
            f.write(f"Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {self.dir}/host\nPidFile {self.dir}/sshd.pid\n"
                    f"AuthorizedKeysFile {self.dir}/authorized_keys\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                    "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\n")
        self.sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", f"{self.dir}/sshd_config"],
                                     stdout=open(f"{self.dir}/sshd.log", "w"), stderr=subprocess.STDOUT)
        wait_port(sshd_port, proc=self.sshd, log=f"{self.dir}/sshd.log")
        self.client = subprocess.Popen(
            ["ssh", "-N", "-i", f"{self.dir}/user", "-p", str(sshd_port), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
             "-R", f"127.0.0.1:{self.port}:127.0.0.1:{component_port}", f"{getpass.getuser()}@127.0.0.1"],
            stdout=open(f"{self.dir}/ssh.log", "w"), stderr=subprocess.STDOUT)
        wait_port(self.port, proc=self.client, log=f"{self.dir}/ssh.log")

    def stop(self):
        for p in (self.client, self.sshd):
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


class Path:
    def __init__(self, name, url, pids):
        self.name, self.url, self.pids = name, url, pids  # pids: process label -> pid (CPU is read for each)
        self.runs = {c: [] for c in CONNECTIONS}
        self.cpu = {label: 0.0 for label in pids}
        self.cpu_requests = 0
        self.downloads = []
        # CPU seconds of every process of the path over all its 10 MiB downloads (steadier than MiB/s).
        self.download_cpu = 0.0
        self.download_bytes = 0


def measure_requests(paths, duration, repeats, cpu_at):
    for connections in CONNECTIONS:
        for repeat in range(repeats):
            for path in paths:
                before = {label: cpu_seconds([pid]) for label, pid in path.pids.items()}
                run = wrk(f"{path.url}/1k", connections, duration)
                if connections == cpu_at:
                    for label, pid in path.pids.items():
                        path.cpu[label] += cpu_seconds([pid]) - before[label]
                    path.cpu_requests += run.requests
                if run.non2xx or run.socket_errors:
                    raise SystemExit(f"{path.name} at {connections} connections: {run.non2xx} non-2xx answers, "
                                     f"{run.socket_errors} socket errors")
                path.runs[connections].append(run)
                print(f"  {path.name:>9} c={connections:<3} run {repeat + 1}: {run.rps:>8.0f} req/s  p50 {run.p50:6.2f} ms"
                      f"  p99 {run.p99:6.2f} ms", flush=True)


def measure_downloads(paths, repeats, expected):
    target = tempfile.mkdtemp(prefix="perf-download-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        for _ in range(repeats):
            for path in paths:
                out = f"{target}/10m"
                before = cpu_seconds(list(path.pids.values()))
                speed = subprocess.run(["curl", "-s", "-o", out, "-w", "%{speed_download}", *header_args(path.url), f"{path.url}/10m"],
                                       capture_output=True, text=True, timeout=120, check=True).stdout
                with open(out, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                if digest != expected:
                    raise SystemExit(f"10 MiB download through {path.name}: sha256 {digest}, expected {expected}")
                path.download_cpu += cpu_seconds(list(path.pids.values())) - before
                path.download_bytes += os.path.getsize(out)
                path.downloads.append(float(speed) / (1 << 20))
                os.unlink(out)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def parse_rate(rate):
    """curl's --limit-rate form (1M, 50k, 1000) in bytes per second."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    return float(rate[:-1]) * units[rate[-1].lower()] if rate[-1].lower() in units else float(rate)


def slow_reader(stack, url, size, rate):
    watched = {n: stack.procs[n].pid for n in ("relay", "connector", "relayctl")}
    base = {n: rss_kib(pid) for n, pid in watched.items()}
    peak = dict(base)
    reader = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--limit-rate", rate, "-w", "%{size_download}", *header_args(url), f"{url}/big"],
                              stdout=subprocess.PIPE, text=True)
    started = time.time()
    limit = size / parse_rate(rate) * 1.5 + 60
    while reader.poll() is None and time.time() - started < limit:
        for n, pid in watched.items():
            peak[n] = max(peak[n], rss_kib(pid))
        time.sleep(0.5)
    if reader.poll() is None:
        reader.kill()
        raise SystemExit(f"slow download did not finish in {limit:.0f} s")
    received = int(reader.stdout.read() or 0)
    if received != size:
        raise SystemExit(f"slow download got {received} bytes, expected {size}")
    return {n: (base[n] / 1024, (peak[n] - base[n]) / 1024) for n in watched}, time.time() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5 s runs, one repeat, a 256 MiB slow download at 20 MB/s")
    parser.add_argument("--baseline", metavar="REV", help="also measure our path built from this git revision")
    parser.add_argument("--tunnels", type=int, default=1000, help="idle tunnels for the RSS-per-tunnel figure")
    parser.add_argument("--heartbeat-nodes", type=int, default=200)
    parser.add_argument("--slow-size-mib", type=int, default=1024)
    parser.add_argument("--slow-rate", default="1M", help="curl --limit-rate of the slow reader")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--only", action="append", choices=["requests", "downloads", "tunnels", "heartbeats", "slow"],
                        help="measure only these (repeatable)")
    parser.add_argument("--write-readme", action="store_true", help="replace the README's performance section")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "perf"))
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeats, args.slow_size_mib, args.slow_rate = 5, 1, 256, "20M"
    only = set(args.only or ["requests", "downloads", "tunnels", "heartbeats", "slow"])
    if not args.no_install:
        install_tools()

    bin_dir = release_bin(args.no_build)
    baseline = build_baseline(args.baseline) if args.baseline else None
    work = tempfile.mkdtemp(prefix="relay-perf-")
    component_port, proxy_port = free_port(), free_port()
    started = []
    results = perf_report.Results(args, baseline[0] if baseline else None)
    try:
        web = nginx(work, component_port)
        started.append(web)
        wait_port(component_port, proc=web, log=f"{work}/nginx-error.log")
        with open(f"{work}/www/10m", "rb") as f:
            expected = hashlib.file_digest(f, "sha256").hexdigest()
        with open(f"{work}/www/big", "wb") as f:  # sparse: nginx sends zeros
            f.truncate(args.slow_size_mib << 20)
        os.chmod(f"{work}/www/big", 0o644)
        proxy = nginx(work, proxy_port, name="proxy", upstream_port=component_port)
        started.append(proxy)
        wait_port(proxy_port, proc=proxy, log=f"{work}/proxy-error.log")
        ssh = SSHTunnel(work, component_port)
        started.append(ssh)

        stacks = [("ours", bin_dir)] + ([(f"@{baseline[0]}", baseline[1])] if baseline else [])
        paths = [Path("direct", f"http://127.0.0.1:{component_port}", {"nginx": web.pid}),
                 Path("proxy", f"http://127.0.0.1:{proxy_port}", {"nginx proxy": proxy.pid}),
                 Path("ssh -R", f"http://127.0.0.1:{ssh.port}", {"sshd": ssh.sshd.pid, "ssh": ssh.client.pid})]
        ours = None
        for name, binaries in stacks:
            stack_dir = f"{work}/{name.strip('@')}"
            os.makedirs(stack_dir)
            stack = Stack(stack_dir, binaries, component_port)
            started.append(stack)
            stack.start("connector", [f"{binaries}/connector", "--config", f"{stack_dir}/connector.yaml", "--log-level", "warning"])
            stack.request_access("4h", "performance harness")
            url = stack.open_session()
            paths.append(Path(name, url, {n: stack.procs[n].pid for n in ("relayctl", "relay", "connector")}))
            if name == "ours":
                ours = stack
        results.paths = paths

        if "requests" in only:
            print(f"== 1 KiB GETs, wrk, {args.duration} s per run, {args.repeats} runs", flush=True)
            measure_requests(paths, args.duration, args.repeats, cpu_at=64)
        if "downloads" in only:
            print("== 10 MiB downloads (sha256 checked)", flush=True)
            measure_downloads(paths, args.repeats, expected)
        if "heartbeats" in only:
            print(f"== heartbeats/s, one relay node, SQLite, {args.heartbeat_nodes} nodes", flush=True)
            results.heartbeats = perf_fleet.heartbeats(ours, args.heartbeat_nodes, args.duration, args.repeats)
        if "tunnels" in only:
            print(f"== relay RSS per idle tunnel, {args.tunnels} tunnels", flush=True)
            results.tunnels = perf_fleet.idle_tunnels(work, bin_dir, args.tunnels)
        if "slow" in only:
            print(f"== {args.slow_size_mib} MiB download read at {args.slow_rate}B/s", flush=True)
            results.slow = slow_reader(ours, paths[3].url, args.slow_size_mib << 20, args.slow_rate)
        results.report(args.out, args.write_readme)
    finally:
        for item in reversed(started):
            if isinstance(item, subprocess.Popen):
                item.terminate()
                item.wait(timeout=10)
            else:
                item.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
