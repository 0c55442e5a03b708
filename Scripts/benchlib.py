"""Shared set-up for the benchmark scripts: release binaries, certificates, and a relay with one
enrolled cluster, an expert token and a registered connector (real processes, loopback only)."""
import json, os, re, socket, subprocess, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def require_tools(*names):
    """Exits with the apt-get line when a Debian tool the script needs is missing."""
    import shutil
    for name in names:
        if not shutil.which(name):
            raise SystemExit(f"{name} is missing: apt-get install {name}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20, proc=None, log=None):
    """Waits for a listener on `port`; when `proc` (writing to `log`) exits or the time runs out,
    stops with what it printed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"port {port} did not open: the process exited ({proc.returncode}){log_tail(log)}")
            time.sleep(0.1)
    raise SystemExit(f"port {port} did not open within {timeout} s{log_tail(log)}")


def log_tail(path, lines=30):
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        tail = f.readlines()[-lines:]
    return f"; the end of {path}:\n" + "".join("  " + line for line in tail)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class WrkResult:
    """One wrk run: requests/s, p50 and p99 latency (ms), requests completed, non-2xx answers and
    socket errors (connect, read, write, timeout)."""

    def __init__(self, out):
        self.rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        self.requests = int(re.search(r"(\d+) requests in", out).group(1))
        self.p50, self.p99 = self._latency(out, 50), self._latency(out, 99)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        self.non2xx = int(non2xx.group(1)) if non2xx else 0
        self.socket_errors = sum(map(int, sockets.groups())) if sockets else 0

    @staticmethod
    def _latency(out, percent):
        m = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]


# Each open session's plain URL and the token its relayctl wrote (--local-token-file): relayctl's
# local port refuses requests that carry neither that token nor a signed-in browser's cookie.
SESSION_TOKENS = {}


def session_headers(url):
    """The header a request to `url` needs when it goes through a session opened here."""
    for base, token in SESSION_TOKENS.items():
        if url.replace("ws://", "http://").startswith(base):
            return {"X-Relayctl-Token": token}
    return {}


def header_args(url):
    """`session_headers` as wrk's and curl's -H arguments."""
    return [arg for name, value in session_headers(url).items() for arg in ("-H", f"{name}: {value}")]


def wrk(url, connections, duration, script=None, threads=2):
    argv = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration}s", "--latency", *header_args(url)]
    if script:
        argv += ["-s", script]
    return WrkResult(subprocess.run(argv + [url], capture_output=True, text=True, timeout=duration + 60).stdout)


def cpu_seconds(pids):
    """User plus system CPU seconds the processes and every descendant of theirs have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    children, times = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo, seen = 0.0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += times.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def release_bin(no_build):
    return built_bin(no_build, debug=False)


def built_bin(no_build, debug):
    """The folder of the programs, built first unless `no_build`: release, or debug (the tests' build)."""
    configuration = [] if debug else ["-c", "release"]
    if not no_build:
        subprocess.run(["swift", "build", *configuration], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    path = subprocess.run(["swift", "build", *configuration, "--show-bin-path"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
    for product in ("demo-component", "relay", "connector", "relayctl") if debug else ():
        if not os.path.exists(f"{path}/{product}"):  # `swift test` builds what the tests run
            subprocess.run(["swift", "build", "--product", product], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return path


class Stack:
    """relay + enrolled cluster `bench` + expert token + registered connector config (not started)."""

    def __init__(self, work, bin_dir, component_port, limits=(), heartbeat="1s", relay_extra=""):
        self.work, self.bin, self.procs = work, bin_dir, {}
        subprocess.run([os.path.join(ROOT, "Certs/make-dev-certs.sh"), work], check=True, stdout=subprocess.DEVNULL)
        self.relay_port = free_port()
        self.admin_port = free_port()
        limits_block = ("limits:\n" + "".join(f"  {item.replace('=', ': ', 1)}\n" for item in limits)) if limits else ""
        self.write("relay.yaml", f"listen: 127.0.0.1:{self.relay_port}\nadmin_listen: 127.0.0.1:{self.admin_port}\ntls:\n  certificate_file: relay.pem\n"
                                 f"  private_key_file: relay.key\ndata_dir: relay-data\n{limits_block}{relay_extra}")
        self.write("connector.yaml", f"node_id: n1\ncredential_file: credential.json\nrelay:\n"
                                     f"  url: https://127.0.0.1:{self.relay_port}\n  ca_file: ca.pem\n"
                                     f"heartbeat:\n  interval: {heartbeat}\nprivacy:\n  mode: all\n"
                                     f"components:\n  ui: http://127.0.0.1:{component_port}\n"
                                     f"{limits_block}")
        self.start("relay", [f"{bin_dir}/relay", "--config", f"{work}/relay.yaml", "--log-level", "warning"])
        wait_port(self.relay_port, timeout=60, proc=self.procs["relay"], log=self.log("relay"))
        self.ops_token = open(f"{work}/relay-data/bootstrap-ops-token").read().strip()
        enrollment = self.ctl(["clusters", "add", "bench"], self.ops_token)["enrollmentToken"]
        self.expert_token = self.ctl(["tokens", "create", "--name", "bench", "--role", "expert"], self.ops_token)["secret"]
        self.write("enrollment", enrollment)
        subprocess.run([f"{bin_dir}/connector", "register", "--config", f"{work}/connector.yaml",
                        "--enrollment-token-file", f"{work}/enrollment", "--log-level", "warning"],
                       check=True, stdout=subprocess.DEVNULL)
        self.credential = json.load(open(f"{work}/credential.json"))

    def write(self, name, text):
        path = f"{self.work}/{name}"
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)

    def log(self, name):
        return f"{self.work}/{name}.log"

    def start(self, name, argv, env=None):
        log = open(self.log(name), "w")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def request_access(self, duration, reason, timeout=60):
        """An admin request for cluster `bench`, waited on until approved: the customer's privacy mode
        (`all` here) reaches the relay with the connector's heartbeat, and a request made before it
        waits for it."""
        request = self.ctl(["requests", "create", "--cluster", "bench", "--role", "admin", "--duration", duration,
                            "--reason", reason], self.expert_token)
        deadline = time.time() + timeout
        while request["state"] != "approved":
            if time.time() > deadline:
                raise SystemExit(f"request {request['id']} still {request['state']} after {timeout} s{log_tail(self.log('connector'))}")
            time.sleep(0.2)
            request = next(r for r in self.ctl(["requests", "list", "--cluster", "bench"], self.expert_token) if r["id"] == request["id"])
        return request

    def open_session(self, name="relayctl", component="ui", extra=(), timeout=90):
        """Starts `relayctl session open` on a port it picks itself (a port chosen beforehand can be
        taken meanwhile by any outgoing connection) and returns the plain URL it prints for scripts;
        requests to it need `session_headers(url)`."""
        env = dict(os.environ, RELAYCTL_TOKEN=self.expert_token)
        token_file = f"{self.work}/{name}.local-token"
        self.start(name, [f"{self.bin}/relayctl", "session", "open", "--relay", f"https://127.0.0.1:{self.relay_port}",
                          "--ca", f"{self.work}/ca.pem", "--cluster", "bench", "--component", component,
                          "--listen", "127.0.0.1:0", "--local-token-file", token_file, *extra], env)
        proc, deadline = self.procs[name], time.time() + timeout
        while time.time() < deadline:
            with open(self.log(name), errors="replace") as f:
                found = re.search(r"^scripts: (http://\S+?)/? with header", f.read(), re.M)
            if found:
                with open(token_file) as f:
                    SESSION_TOKENS[found.group(1)] = f.read().strip()
                return found.group(1)
            if proc.poll() is not None:
                raise SystemExit(f"relayctl session open exited ({proc.returncode}){log_tail(self.log(name))}")
            time.sleep(0.1)
        raise SystemExit(f"relayctl session open printed no URL within {timeout} s{log_tail(self.log(name))}")

    def ctl(self, args, token):
        env = dict(os.environ, RELAYCTL_TOKEN=token)
        out = subprocess.run([f"{self.bin}/relayctl", *args, "--relay", f"https://127.0.0.1:{self.relay_port}",
                              "--ca", f"{self.work}/ca.pem", "--json"], env=env, check=True, capture_output=True, text=True)
        return json.loads(out.stdout)

    def stop(self):
        import signal
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


def nginx(work, port, status_port=None, name="nginx", upstream_port=None):
    """nginx (one worker) serving `work/www` (a 1 KiB file `1k`, a 10 MiB file `10m`) on `port`; with
    `status_port`, its stub_status there (accepted connections and requests, for reuse figures); with
    `upstream_port`, a reverse proxy to that port instead (keep-alive to the upstream)."""
    www = f"{work}/www"
    os.chmod(work, 0o711)  # run as root, nginx's worker is `nobody`: it may pass through, and read www only
    if not os.path.exists(f"{www}/10m"):
        os.makedirs(www, exist_ok=True)
        with open(f"{www}/1k", "wb") as f:
            f.write(b"x" * 1024)
        with open(f"{www}/10m", "wb") as f:
            f.write(os.urandom(10 << 20))
        os.chmod(www, 0o755)
        for served in ("1k", "10m"):
            os.chmod(f"{www}/{served}", 0o644)
    status = f"server {{ listen 127.0.0.1:{status_port}; location / {{ stub_status; }} }}" if status_port else ""
    if upstream_port:
        site = (f"upstream component {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}\n"
                f"  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://component; "
                f"proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}")
    else:
        site = f"server {{ listen 127.0.0.1:{port}; root {www}; location / {{ }} }}"
    temp = f"{work}/{name}-temp"
    os.makedirs(temp, exist_ok=True)
    conf = f"""daemon off; worker_processes 1; pid {work}/{name}.pid; error_log {work}/{name}-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp};
  uwsgi_temp_path {temp}; scgi_temp_path {temp};
  {site} {status} }}
"""
    with open(f"{work}/{name}.conf", "w") as f:
        f.write(conf)
    return subprocess.Popen(["nginx", "-c", f"{work}/{name}.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
