"""The performance harness's report: markdown tables with ratios, the targets of issue 12 met or
missed, a PNG chart, and the README's performance section (between its perf markers)."""
import datetime, os, platform, statistics

from benchlib import ROOT

README_BEGIN, README_END = "<!-- perf:begin -->", "<!-- perf:end -->"


def med(values):
    return statistics.median(values) if values else float("nan")


def spread(values, fmt):
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(med(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


class Results:
    def __init__(self, args, baseline):
        self.args, self.baseline = args, baseline
        self.paths, self.heartbeats, self.tunnels, self.slow = [], None, None, None

    def path(self, name):
        return next((p for p in self.paths if p.name == name), None)

    def tables(self):
        out = []
        direct, ssh = self.path("direct"), self.path("ssh -R")
        if any(p.runs[64] for p in self.paths):
            out.append(f"1 KiB GETs from nginx, wrk, {self.args.duration} s per run; median of {self.args.repeats} runs "
                       "(range); latency in ms; ratios of median req/s.\n")
            out.append("| path | connections | req/s | p50 | p99 | × direct | × ssh -R |")
            out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
            for connections in sorted(self.paths[0].runs):
                for p in self.paths:
                    runs = p.runs[connections]
                    if not runs:
                        continue
                    rps = [r.rps for r in runs]
                    ratio_d = med(rps) / med([r.rps for r in direct.runs[connections]])
                    ratio_s = med(rps) / med([r.rps for r in ssh.runs[connections]])
                    out.append(f"| {p.name} | {connections} | {spread(rps, '{:,.0f}')} | {spread([r.p50 for r in runs], '{:.2f}')} "
                               f"| {spread([r.p99 for r in runs], '{:.2f}')} | {ratio_d:.3f} | {ratio_s:.2f} |")
            out.append("")
            out.append("CPU seconds per 10,000 requests at 64 connections (user + system, from /proc, every process of "
                       "the path and its children):\n")
            out.append("| path | processes | total |")
            out.append("| --- | --- | ---: |")
            for p in self.paths:
                if p.cpu_requests:
                    each = ", ".join(f"{label} {seconds * 10000 / p.cpu_requests:.2f}" for label, seconds in p.cpu.items())
                    out.append(f"| {p.name} | {each} | {sum(p.cpu.values()) * 10000 / p.cpu_requests:.2f} |")
            out.append("")
        if any(p.downloads for p in self.paths):
            out.append("10 MiB download of random bytes (curl to /dev/shm, sha256 checked after each), MiB/s:\n")
            out.append("| path | MiB/s | × direct | × ssh -R | CPU s per GiB (every process of the path; /proc counts 10 ms ticks, so small figures are coarse) |")
            out.append("| --- | ---: | ---: | ---: | ---: |")
            for p in self.paths:
                per_gib = p.download_cpu * (1 << 30) / p.download_bytes if p.download_bytes else 0.0
                out.append(f"| {p.name} | {spread(p.downloads, '{:,.0f}')} | {med(p.downloads) / med(direct.downloads):.2f} "
                           f"| {med(p.downloads) / med(ssh.downloads):.2f} | {per_gib:.2f} |")
            out.append("")
        if self.heartbeats:
            out.append(self.heartbeats["table"] + "\n")
        if self.tunnels:
            t = self.tunnels
            out.append(f"Idle tunnels: relay RSS {t['before'] / 1024:.1f} MiB before, {t['after'] / 1024:.1f} MiB with "
                       f"{t['count']:,} tunnels attached: **{t['per_tunnel']:.1f} KiB per idle tunnel** "
                       f"(the dialing process: {t['dialer_per_tunnel']:.1f} KiB per tunnel).\n")
        if self.slow:
            growth, elapsed = self.slow
            cells = ", ".join(f"{n} {g:.1f} MiB (from {b:.1f} MiB)" for n, (b, g) in growth.items())
            out.append(f"{self.args.slow_size_mib} MiB download read at {self.args.slow_rate}B/s ({elapsed:.0f} s): "
                       f"RSS growth {cells}.\n")
        return "\n".join(out)

    def targets(self):
        rows = []
        direct, ssh, ours, base = self.path("direct"), self.path("ssh -R"), self.path("ours"), self.path(f"@{self.baseline}")
        if ours and ours.runs[64]:
            rps = med([r.rps for r in ours.runs[64]]) / med([r.rps for r in ssh.runs[64]])
            p99 = med([r.p99 for r in ours.runs[64]])
            rows.append(("req/s at 64 connections >= 2x ssh -R", f"{rps:.2f}x", rps >= 2))
            rows.append(("p99 at 64 connections <= 10 ms", f"{p99:.1f} ms", p99 <= 10))
            if ours.runs[1]:
                added = med([r.p50 for r in ours.runs[1]]) - med([r.p50 for r in direct.runs[1]])
                rows.append(("p50 added at 1 connection <= 0.5 ms", f"{added:.2f} ms", added <= 0.5))
            if base and base.cpu_requests:
                now = sum(ours.cpu.values()) / ours.cpu_requests
                then = sum(base.cpu.values()) / base.cpu_requests
                rows.append((f"CPU per request <= 1/3 of {self.baseline}", f"{now * 1e4:.2f} vs {then * 1e4:.2f} s/10k "
                             f"({now / then:.2f}x)", now <= then / 3))
        if ours and ours.downloads:
            ratio = med(ours.downloads) / med(direct.downloads)
            rows.append(("10 MiB download >= 30% of direct", f"{ratio:.0%}", ratio >= 0.3))
        if self.heartbeats:
            rows.append(("heartbeats/s on one node (SQLite) >= 5,000", f"{self.heartbeats['rate']:,.0f}", self.heartbeats["rate"] >= 5000))
        if self.tunnels:
            rows.append((f"relay RSS per idle tunnel <= 32 KiB ({self.tunnels['count']:,} tunnels)",
                         f"{self.tunnels['per_tunnel']:.1f} KiB", self.tunnels["per_tunnel"] <= 32))
        if self.slow:
            worst = max(g for _, g in self.slow[0].values())
            rows.append((f"slow {self.args.slow_size_mib} MiB reader grows RSS <= 16 MiB", f"{worst:.1f} MiB", worst <= 16))
        lines = ["| target (issue 12) | measured | |", "| --- | ---: | --- |"]
        lines += [f"| {name} | {value} | {'met' if ok else '**missed**'} |" for name, value, ok in rows]
        return "\n".join(lines) + "\n"

    def chart(self, path):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        measured = [p for p in self.paths if p.runs[64]]
        if not measured:
            return False
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        width = 0.8 / len(measured)
        connections = sorted(measured[0].runs)
        for i, p in enumerate(measured):
            xs = [c + (i - len(measured) / 2 + 0.5) * width for c in range(len(connections))]
            axes[0].bar(xs, [med([r.rps for r in p.runs[c]]) for c in connections], width, label=p.name)
            axes[1].bar(xs, [med([r.p99 for r in p.runs[c]]) for c in connections], width, label=p.name)
        for ax, title in ((axes[0], "1 KiB GETs: requests/s"), (axes[1], "1 KiB GETs: p99 latency (ms)")):
            ax.set_xticks(range(len(connections)), [f"{c} conn." for c in connections])
            ax.set_yscale("log")
            ax.set_title(title)
        axes[0].legend(fontsize=8)
        with_downloads = [p for p in measured if p.downloads]
        axes[2].bar([p.name for p in with_downloads], [med(p.downloads) for p in with_downloads],
                    color=[f"C{i}" for i in range(len(with_downloads))])
        axes[2].set_title("10 MiB download (MiB/s)")
        fig.suptitle(f"nginx component reached four ways, {os.cpu_count()} cores, loopback (Scripts/perf.py)")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        return True

    def report(self, out, write_readme):
        os.makedirs(out, exist_ok=True)
        when = datetime.date.today().isoformat()
        head = (f"Measured {when} by `python3 Scripts/perf.py` on {os.cpu_count()} cores ({platform.machine()}), "
                f"loopback, release build; every process of every path on the same cores as wrk.\n")
        chart = os.path.join(out, "requests.png")
        has_chart = self.chart(chart)
        body = head + "\n" + self.targets() + "\n" + self.tables()
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write("# Performance\n\n" + body + ("\n![requests/s, p99 and download speed by path](requests.png)\n" if has_chart else ""))
        print("\n" + body)
        if write_readme:
            readme = os.path.join(ROOT, "README.md")
            text = open(readme).read()
            begin, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
            chart_link = f"\n![requests/s, p99 and download speed by path]({os.path.relpath(chart, ROOT)})\n" if has_chart else ""
            with open(readme, "w") as f:
                f.write(text[:begin] + "\n" + body + chart_link + text[end:])
