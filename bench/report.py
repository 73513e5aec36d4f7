"""The report: the results table and the target lines, the latency plot,
the table written into bench/README.md after a full run, and the run's
metadata (versions, commit, host, load). A mixin of bench.Bench."""

import datetime
import os
import platform
import re
import subprocess
import sys

from common import HERE, ROOT, TARGETS, fmt_iops, log


class Report:
    def row(self, case, what, device, dmio, fio, ratio, note=""):
        self.rows.append({"case": case, "what": what, "device": device, "libdmio": dmio,
                          "fio": fio, "ratio": ratio, "note": note})

    def target(self, case, what, ok, value, goal, note=""):
        t = {"case": case, "what": what, "pass": bool(ok), "value": value, "goal": goal, "note": note}
        self.targets.append(t)
        log(f"  TARGET case {case}: {what}: {value} (target {goal}) -> "
            f"{'PASS' if ok else 'FALLS SHORT'}{'  ' + note if note else ''}")


    def table(self):
        lines = ["| case | measurement | device | libdmio | fio | ratio | notes |",
                 "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
            lines.append(f"| {r['case']} | {r['what']} | {r['device']} | {r['libdmio']} | {r['fio']} | {ratio} | {r['note']} |")
        return "\n".join(lines)

    def target_lines(self):
        return [f"- case {t['case']}: {t['what']}: {t['value']} (target {t['goal']}): "
                f"**{'PASS' if t['pass'] else 'FALLS SHORT'}**{' ' + t['note'] if t['note'] else ''}"
                for t in self.targets]

    def plot(self, path):
        try:
            import matplotlib
        except ImportError:
            if self.smoke:
                log("  matplotlib missing: no plot in the smoke run (make bench installs it)")
                return None
            log("  installing matplotlib (pip)")
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"], check=False)
            try:
                import matplotlib
            except ImportError:
                log("  matplotlib could not be installed: no plot")
                return None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def cdf(buckets):
            n = sum(c for _, c in buckets)
            xs, ys, acc = [], [], 0
            for v, cnt in sorted(buckets):
                acc += cnt
                xs.append(v / 1e3)
                ys.append(acc / n)
            return xs, ys

        fig, axes = plt.subplots(2, 2, figsize=(13, 9))
        ax = axes[0][0]
        for r in self.results.get("case1", []):
            if r["qd"] != 32:
                continue
            for tool, st in (("libdmio", "-"), ("fio", "--")):
                b = r[f"{tool}_detail"]["lat_ns"]["buckets"]
                if b:
                    ax.plot(*cdf(b), st, drawstyle="steps-post",
                            label=f"{tool} {r['device']} ({fmt_iops(r[tool])} IOPS)")
        ax.set_xscale("log")
        ax.set_title("case 1: 4 KiB random read, QD32, library pages: latency CDF")
        ax.set_xlabel("latency (us)")
        ax.set_ylabel("fraction of reads")
        ax.get_legend_handles_labels()[0] and ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)

        ax = axes[0][1]
        c5 = self.results.get("case5", {})
        if c5:
            T = self.cfg["mirror_timeout"]
            ax.plot(*cdf(c5["healthy"]["lat_ns"]["buckets"]), drawstyle="steps-post", label="both legs healthy")
            ax.plot(*cdf(c5["timed"]["lat_ns"]["buckets"]), drawstyle="steps-post",
                    label=f"leg 2 hung, timeout {T} ms (ack at TIMEOUT)")
            wa = c5["wait-all"]
            ax.axvline(wa["run_secs"] * 1e6, color="red", ls=":",
                       label=f"leg 2 hung, wait for all legs: 0 done in {wa['run_secs']:.1f} s (censored)")
            ax.axvline((T + TARGETS["mirror_slack_ms"]) * 1e3, color="grey", ls="--", lw=0.8,
                       label=f"target p99.9: timeout + {TARGETS['mirror_slack_ms']:.0f} ms")
        ax.set_xscale("log")
        ax.set_title("case 5: 2-leg mirror write, QD32: latency CDF")
        ax.set_xlabel("latency (us)")
        ax.get_legend_handles_labels()[0] and ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)

        ax = axes[1][0]
        if c5:
            for v, lab in (("plain", "plain read of leg 1"), ("hedged", "READ_ANY, 2 ms hedge")):
                xs, ys = cdf(c5["hedge"][v]["lat_ns"]["buckets"])
                ax.plot(xs, [max(1 - y, 1e-6) for y in ys], drawstyle="steps-post", label=lab)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title("case 5: hedged reads, 2 % of leg-1 reads delayed 20 ms")
        ax.set_xlabel("latency (us)")
        ax.set_ylabel("fraction of reads slower (1 - CDF)")
        ax.get_legend_handles_labels()[0] and ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)

        ax = axes[1][1]
        for v, r in self.results.get("case4", {}).items():
            ax.plot(*cdf(r["lateness_ns"]["buckets"]), drawstyle="steps-post",
                    label=f"{v} deadlines ({r['requests']} requests)")
        ax.axvline(TARGETS["timer_p99_ms"] * 1e3, color="grey", ls="--", lw=0.8, label="target p99: 1 ms")
        ax.set_xscale("log")
        ax.set_title("case 4: TIMEOUT notify time - deadline (held IO)")
        ax.set_xlabel("lateness (us)")
        ax.get_legend_handles_labels()[0] and ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)

        fig.suptitle(f"libdmio vs fio ({self.results['meta']['date']}, {self.results['meta']['host']['cpus']} CPUs"
                     f"{', NOISY' if self.results['meta'].get('noisy') else ''})")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path

    def update_readme(self, table, targets, png, json_path):
        readme = os.path.join(HERE, "README.md")
        with open(readme) as f:
            txt = f.read()
        m = self.results["meta"]
        block = "\n".join([
            "<!-- bench:begin (written by make bench) -->",
            f"Latest full run: {m['date']}, libdmio {m['libdmio']} (commit {m['git']['commit']}"
            f"{', with uncommitted library changes' if m['git']['library_sources_modified'] else ''}), "
            f"{m['fio']}, kernel {m['host']['kernel']}, "
            f"{m['host']['cpus']} CPUs, load average {m['load_start'][0]:.2f} at the start; {m['duration_s']:.0f} s. "
            + (f"**NOISY**: other users' processes took CPU during case(s) "
               f"{', '.join(map(str, m['noisy_cases'])) or '(load at start)'}." if m.get("noisy") else
               "Quiet: no other user's process took more than 0.25 cores during any case."),
            "",
            "Devices: " + "; ".join(f"**{k}** = {v['desc']}" for k, v in m["devices"].items()) + ".",
            "",
            table,
            "",
            "Targets:",
            "",
            *targets,
            "",
            f"Plot: `{os.path.relpath(png, ROOT)}` (latency CDFs). Data: `{os.path.relpath(json_path, ROOT)}`.",
            "",
            f"![latency CDFs]({os.path.relpath(png, HERE)})",
            "<!-- bench:end -->",
        ])
        new = re.sub(r"<!-- bench:begin.*?<!-- bench:end -->", lambda _: block, txt, flags=re.S)
        with open(readme, "w") as f:
            f.write(new)

    def meta(self):
        fio_v = subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip()
        model = ""
        try:
            with open("/proc/cpuinfo") as f:
                model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
        except OSError:
            pass
        lib = self.dmio("memcpy", "version", "--bs", 4096, "--qd", 1).get("version")
        git = lambda *a: subprocess.run(["git", "-C", ROOT] + list(a), capture_output=True, text=True).stdout.strip()
        dirty_src = git("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock", "build.rs")
        return {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"), "smoke": self.smoke,
                "libdmio": lib, "fio": fio_v,
                "git": {"commit": git("rev-parse", "--short", "HEAD"), "subject": git("log", "-1", "--format=%s"),
                        "library_sources_modified": dirty_src.splitlines()},
                "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": model},
                "load_start": os.getloadavg(), "config": self.cfg}
