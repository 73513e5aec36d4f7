#!/usr/bin/env python3
"""make bench: libdmio side by side with fio, in one run, as ratios.

Every comparison runs libdmio (bench/dmio-bench.c, built against the staged
install) and fio (io_uring engine, same file, block size, queue depth and
O_DIRECT) back to back, in ABBA order (libdmio, fio, fio, libdmio) so that
drift of a shared machine hits both alike, and reports the ratio of the
means. Targets are printed as PASS / FALLS SHORT lines; they are not tests.

  python3 bench/bench.py --driver build/bench/dmio-bench [--smoke] [--cases 1,4]

Results: a JSON file per run plus latest.json, and latency-cdf.png, in
bench/results/ (the smoke run writes to build/bench-smoke/ instead), and the
table in bench/README.md (full runs of every case only).
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MIB = 1 << 20
TTY = sys.stdout.isatty()

FULL = dict(
    secs=4.0, warmup=0.5, rounds=2, size=256 * MIB, qds=[1, 32, 128],
    big_bs=128 * 1024, big_qd=8,
    timeouts_n=10000, timeout_ms=200, timeout_spread=800, burst_timeout=500,
    mirror_n=10000, mirror_timeout=10, healthy_n=30000, waitall_secs=2.0,
    hedge_secs=3.0, memory_n=1000000, cg_counts=(5000, 25000), probe_secs=30,
    profile_secs=3.0,
)
SMOKE = dict(
    secs=0.3, warmup=0.1, rounds=1, size=32 * MIB, qds=[1, 32, 128],
    big_bs=128 * 1024, big_qd=8,
    timeouts_n=1000, timeout_ms=50, timeout_spread=100, burst_timeout=100,
    mirror_n=500, mirror_timeout=10, healthy_n=1000, waitall_secs=0.3,
    hedge_secs=0.3, memory_n=20000, cg_counts=(300, 1300), probe_secs=10,
    profile_secs=0,
)

TARGETS = {
    "qd32": 0.95,       # case 1: >= 0.95x fio IOPS at QD32
    "mirror": 0.90,     # case 2: >= 0.90x fio aggregate
    "bounce": 0.90,     # case 3: bounce >= 0.90x zero-copy (libdmio's own DM_IO_ZERO_COPY)
    "timer_p99_ms": 1.0,  # case 4: p99 of (notify - deadline) <= 1 ms
    "mirror_slack_ms": 2.0,  # case 5: p99.9 <= timeout + 2 ms
    "cpu": 1.5,         # case 7: <= 1.5x fio instructions per IO
}


def log(msg=""):
    print(msg, flush=True)


def status(msg):
    """A transient line on a terminal (overwritten by the next output)."""
    if TTY:
        sys.stdout.write("\r\033[K" + msg)
        sys.stdout.flush()


def clear_status():
    if TTY:
        sys.stdout.write("\r\033[K")
        sys.stdout.flush()


def fmt_iops(v):
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def fmt_range(xs, fmt=fmt_iops):
    """The lowest and highest of several runs' values, as "low-high"."""
    return f"{fmt(min(xs))}-{fmt(max(xs))}"


def fmt_ns(v):
    if v is None:
        return "-"
    if v >= 1e9:
        return f"{v / 1e9:.2f} s"
    if v >= 1e6:
        return f"{v / 1e6:.2f} ms"
    return f"{v / 1e3:.0f} us"


def cpu_busy():
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def kthreads_cpu():
    """CPU seconds per kernel thread (kworkers doing our loop IO, ksoftirqd...)."""
    hz = os.sysconf("SC_CLK_TCK")
    tot = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if pid == "2" or st[1] == "2":  # kthreadd and its children
            tot[pid] = (int(st[11]) + int(st[12])) / hz
    return tot


def machine_snapshot():
    """Counters to tell how much CPU other users took while a case ran."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return {"t": time.time(), "tasks": (v[0] + v[1] + v[2]) / hz, "irq": (v[5] + v[6]) / hz,
            "steal": (v[7] if len(v) > 7 else 0) / hz, "kthreads": kthreads_cpu(), "ours": children_cpu()}


def machine_delta(a, b):
    """Average cores over the interval: ours, kernel threads, others (user processes not ours), steal."""
    wall = max(b["t"] - a["t"], 1e-3)
    d = {k: (b[k] - a[k]) / wall for k in ("tasks", "irq", "steal", "ours")}
    # Per thread, so that a kworker exiting meanwhile does not count negative.
    d["kthreads"] = sum(max(0.0, v - a["kthreads"].get(pid, 0.0)) for pid, v in b["kthreads"].items()) / wall
    d["others"] = max(0.0, d["tasks"] - d["kthreads"] - d["ours"])
    d["wall"] = wall
    return d


class Bench:
    def __init__(self, args):
        self.args = args
        self.cfg = dict(SMOKE if args.smoke else FULL)
        self.smoke = args.smoke
        self.driver = os.path.abspath(args.driver)
        self.ref_bin = os.path.abspath(args.ref) if args.ref else None
        self.out = os.path.abspath(args.out or (
            os.path.join(ROOT, "build", "bench-smoke") if args.smoke else os.path.join(HERE, "results")))
        os.makedirs(self.out, exist_ok=True)
        self.data = os.path.join(ROOT, "build", "bench", "data")
        os.makedirs(self.data, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix="dmio-bench-")
        self.cleanups = []
        self.cases = set(args.cases.split(",")) if args.cases else {str(i) for i in range(1, 8)}
        self.rows = []        # the results table
        self.targets = []     # PASS / FALLS SHORT lines
        self.results = {}     # everything, for the JSON file
        self.runs = 0
        self.t_start = time.time()
        self.devices = {}
        self.noisy_cases = []

    # ------------------------------------------------------------ plumbing

    def cleanup(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # keep cleaning up
                log(f"bench: cleanup: {e}")
        self.cleanups = []
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_json(self, cmd, label, env=None, timeout=600):
        """Runs a driver; its stderr (live progress on a terminal) passes through."""
        e = dict(os.environ)
        if env:
            e.update(env)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, env=e, timeout=timeout, text=True)
        if p.returncode != 0:
            # 1: it ran but saw IO errors or missing notifications; 2: could not run.
            raise RuntimeError(f"{label}: exit {p.returncode}: {' '.join(cmd)}\n{p.stdout[-1000:]}")
        try:
            return json.loads(p.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"{label}: no JSON from {' '.join(cmd)}: {p.stdout[:500]}")

    def dmio(self, mode, label, *opts, env=None):
        cmd = [self.driver, mode, "--label", label] + [str(o) for o in opts]
        return self.run_json(cmd, label, env=env)

    def randread(self, label, dev, bs, qd, *extra):
        """libdmio random reads for the configured time (`extra`: more driver options)."""
        c = self.cfg
        return self.dmio("rand", label, "--dev", dev, "--rw", "read", "--bs", bs, "--qd", qd,
                         "--secs", c["secs"], "--warmup", c["warmup"], "--span", c["size"], *extra)

    def fio(self, label, files, rw, bs, qd, span, secs=None, warmup=None, number_ios=None,
            valgrind=None):
        """fio, io_uring engine, O_DIRECT, random offsets without a random map."""
        out = os.path.join(self.tmp, "fio.json")
        cmd = ["fio", "--name=bench", "--filename=" + ":".join(files), "--ioengine=io_uring",
               "--direct=1", f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}", "--norandommap",
               "--randrepeat=0", f"--size={span * len(files)}", "--lat_percentiles=1",
               "--output-format=json+", f"--output={out}"]
        if len(files) > 1:
            cmd.append("--file_service_type=roundrobin")
        if number_ios:
            cmd += [f"--number_ios={number_ios}", "--thread"]
        else:
            cmd += ["--time_based", f"--runtime={int(secs * 1000)}ms",
                    f"--ramp_time={int(warmup * 1000)}ms"]
        if valgrind:
            cmd = valgrind + cmd
        else:
            status(f"  {label}: fio running ({secs:.1f} s)")
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           timeout=900)
        clear_status()
        if p.returncode != 0:
            raise RuntimeError(f"fio failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
        with open(out) as f:
            txt = f.read()
        # fio may print notes before the JSON object.
        d = json.loads(txt[txt.index("{"):])
        return self.fio_summary(d, rw, len(files))

    @staticmethod
    def fio_summary(d, rw, nfiles):
        j = d["jobs"][0]
        r = j["write" if "write" in rw else "read"]
        lat = r["lat_ns"]
        pct = lat.get("percentile", {})

        def p(k):
            v = pct.get(k)
            return int(v) if v is not None else None

        ios = r["total_ios"]
        secs = r["runtime"] / 1000.0 if r["runtime"] else 0
        cpu_s = (j["usr_cpu"] + j["sys_cpu"]) / 100.0 * secs
        bins = sorted((int(k), v) for k, v in lat.get("bins", {}).items())
        return {
            "tool": "fio", "version": d.get("fio version"), "rw": rw, "files": nfiles,
            "iops": r["iops"], "requests": ios, "secs": secs,
            "cpu": {"usr_pct": j["usr_cpu"], "sys_pct": j["sys_cpu"],
                    "us_per_request": cpu_s / ios * 1e6 if ios else None,
                    "cores": cpu_s / secs if secs else None},
            "lat_ns": {"n": lat.get("N"), "min": lat.get("min"), "mean": lat.get("mean"),
                       "p50": p("50.000000"), "p90": p("90.000000"), "p99": p("99.000000"),
                       "p999": p("99.900000"), "p9999": p("99.990000"), "max": lat.get("max"),
                       "buckets": bins},
        }

    def progress(self, case, label, tool, summary, t0):
        self.runs += 1
        clear_status()
        log(f"  [{self.runs:3d}] case {case} {label:<34} {tool:<8} {summary}  ({time.time() - t0:.1f} s)")

    def pair(self, case, label, run_dmio, run_fio, metric, rounds=None, names=("libdmio", "fio")):
        """ABBA: libdmio, fio, fio, libdmio (per round pair); returns both lists.
        `names`: what the two sides are called in the progress lines."""
        rounds = rounds or self.cfg["rounds"]
        order = ["d", "f"] if rounds == 1 else ["d", "f", "f", "d"] * (rounds // 2)
        res = {"d": [], "f": []}
        for who in order:
            t0 = time.time()
            r = run_dmio() if who == "d" else run_fio()
            res[who].append(r)
            lat = r.get("lat_ns", {})
            self.progress(case, label, names[0] if who == "d" else names[1],
                          f"{fmt_iops(metric(r))} IOPS  p50 {fmt_ns(lat.get('p50'))}  p99 {fmt_ns(lat.get('p99'))}", t0)
        mean = lambda xs: sum(xs) / len(xs)
        d = mean([metric(r) for r in res["d"]])
        f = mean([metric(r) for r in res["f"]])
        spread = lambda xs: (min(map(metric, xs)), max(map(metric, xs)))
        return {"libdmio": d, "fio": f, "ratio": d / f if f else 0,
                "libdmio_runs": [metric(r) for r in res["d"]], "fio_runs": [metric(r) for r in res["f"]],
                "libdmio_spread": spread(res["d"]), "fio_spread": spread(res["f"]),
                "libdmio_detail": res["d"][0], "fio_detail": res["f"][0]}

    def ref(self, label, devs, bs, qd, copy, rw="read", independent=False):
        """The bare io_uring loop (uring-ref.c): reads with or without one copy
        per read, or writes to every device in `devs` as mirror requests (or,
        `independent`, each write restarted on its own, as fio does)."""
        c = self.cfg
        cmd = [self.ref_bin, "--bs", str(bs), "--qd", str(qd), "--secs", str(c["secs"]),
               "--warmup", str(c["warmup"]), "--span", str(c["size"]), "--rw", rw]
        for d in [devs] if isinstance(devs, str) else devs:
            cmd += ["--dev", d]
        cmd += (["--copy"] if copy else []) + (["--independent"] if independent else [])
        status(f"  {label}: reference loop running ({c['secs']:.1f} s)")
        r = self.run_json(cmd, label)
        clear_status()
        return r

    def ref_pair(self, case, label, run_a, run_b, metric, names):
        """Two variants of the reference loop, ABBA; None without --ref."""
        if not self.ref_bin:
            log("  reference loop: SKIPPED (no --ref given; `make bench` passes it)")
            return None
        return self.pair(case, label, run_a, run_b, metric, names=names)

    def ref_split(self, case, label, dev, bs, qd, dmio_value, copies=True):
        """Splits libdmio's gap to fio in two: what one copy per read costs (the
        bare loop with and without it, ABBA), and what the library costs beyond
        that (libdmio / the loop with the copy, or without it when libdmio's
        reads do not copy: `copies`). None without --ref."""
        r = self.ref_pair(case, label, lambda: self.ref(label, dev, bs, qd, True),
                          lambda: self.ref(label, dev, bs, qd, False), lambda x: x["iops"], ("ref+copy", "ref"))
        if r is None:
            return None
        base = r["libdmio"] if copies else r["fio"]
        out = {"ref": r["fio"], "ref_copy": r["libdmio"], "copy_over_nocopy": r["ratio"],
               "libdmio_copies": copies, "libdmio_over_ref": dmio_value / base if base else None,
               "ref_runs": r["fio_runs"], "ref_copy_runs": r["libdmio_runs"]}
        log(f"  reference ({label}): a bare io_uring loop with libdmio's system calls, zero-copy "
            f"{fmt_iops(out['ref'])} IOPS; with one copy per read, as bounce memory does, "
            f"{fmt_iops(out['ref_copy'])} ({out['copy_over_nocopy']:.2f}x); "
            f"libdmio = {out['libdmio_over_ref']:.2f}x the loop {'with' if copies else 'without'} the copy")
        return out

    def ref_mirror(self, case, label, devs, qd, dmio_value):
        """Splits libdmio's mirror-write ratio to fio in two: what waiting for
        every leg costs (the bare loop writing mirror requests vs the same loop
        restarting each write on its own, as fio does, ABBA), and what the
        library costs beyond that (libdmio / the mirror loop). None without --ref."""
        run = lambda indep: self.ref(label, devs, 4096, qd, False, rw="write", independent=indep)
        r = self.ref_pair(case, label, lambda: run(False), lambda: run(True), lambda x: x["regions_per_s"],
                          ("ref mirror", "ref independent"))
        if r is None:
            return None
        out = {"ref_independent": r["fio"], "ref_mirror": r["libdmio"], "mirror_over_independent": r["ratio"],
               "libdmio_over_ref_mirror": dmio_value / r["libdmio"] if r["libdmio"] else None,
               "ref_mirror_runs": r["libdmio_runs"], "ref_independent_runs": r["fio_runs"]}
        log(f"  reference ({label}): a bare io_uring loop with libdmio's system calls writing mirror "
            f"requests, {fmt_iops(out['ref_mirror'])} writes/s; restarting each write on its own, as fio "
            f"does, {fmt_iops(out['ref_independent'])} (mirror/independent {out['mirror_over_independent']:.2f}x); "
            f"libdmio = {out['libdmio_over_ref_mirror']:.2f}x the mirror loop")
        return out

    @staticmethod
    def ref_mirror_note(x):
        return (f"; bare loop: mirror {fmt_iops(x['ref_mirror'])}/s = {x['mirror_over_independent']:.2f}x "
                f"independent writes, libdmio/mirror loop {x['libdmio_over_ref_mirror']:.2f}x") if x else ""

    @staticmethod
    def ref_note(x):
        return (f"; bare loop {fmt_iops(x['ref'])}, +copy {x['copy_over_nocopy']:.2f}x, "
                f"libdmio/loop{'+copy' if x['libdmio_copies'] else ''} {x['libdmio_over_ref']:.2f}x") if x else ""

    def row(self, case, what, device, dmio, fio, ratio, note=""):
        self.rows.append({"case": case, "what": what, "device": device, "libdmio": dmio,
                          "fio": fio, "ratio": ratio, "note": note})

    def target(self, case, what, ok, value, goal, note=""):
        t = {"case": case, "what": what, "pass": bool(ok), "value": value, "goal": goal, "note": note}
        self.targets.append(t)
        log(f"  TARGET case {case}: {what}: {value} (target {goal}) -> "
            f"{'PASS' if ok else 'FALLS SHORT'}{'  ' + note if note else ''}")

    # ------------------------------------------------------------ devices

    def fill(self, path, size):
        with open(path, "wb") as f:
            for _ in range(size // MIB):
                f.write(os.urandom(MIB))
            f.flush()
            os.fsync(f.fileno())

    def setup_devices(self):
        size = self.cfg["size"]
        tag = f"{size // MIB}M"
        disk = []
        for i in range(3):
            p = os.path.join(self.data, f"disk-{tag}-{i}.img")
            if not os.path.exists(p) or os.path.getsize(p) != size:
                status(f"  writing {p} ({size // MIB} MiB of random data)")
                self.fill(p, size)
            disk.append(p)
        clear_status()
        # findmnt names ext4 as such (statfs's magic says only "ext2/ext3").
        fs = (subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", self.data], capture_output=True,
                             text=True).stdout.strip() if shutil.which("findmnt") else "") or \
            subprocess.run(["stat", "-f", "-c", "%T", self.data], capture_output=True, text=True).stdout.strip()
        src = subprocess.run(["df", "--output=source", self.data], capture_output=True, text=True).stdout.split()[-1]
        self.devices["disk"] = {"kind": "disk-file", "paths": disk,
                                "desc": f"files on the project's disk ({src}, {fs}), O_DIRECT"}
        why = None
        if self.args.no_loop:
            why = "--no-loop"
        elif os.geteuid() != 0:
            why = "not root"
        elif not shutil.which("losetup"):
            why = "no losetup"
        elif not os.path.isdir("/dev/shm"):
            why = "no /dev/shm"
        loops = []
        if why is None:
            try:
                for i in range(3):
                    p = f"/dev/shm/dmio-bench-{os.getpid()}-{i}.img"
                    self.cleanups.append(lambda p=p: os.path.exists(p) and os.unlink(p))
                    status(f"  writing {p}")
                    self.fill(p, size)
                    dev = subprocess.run(["losetup", "-f", "--show", "--direct-io=on", p],
                                         capture_output=True, text=True, check=True).stdout.strip()
                    self.cleanups.append(lambda d=dev: subprocess.run(["losetup", "-d", d], check=True))
                    loops.append(dev)
                clear_status()
            except (subprocess.CalledProcessError, OSError) as e:
                why = f"losetup failed: {getattr(e, 'stderr', '') or e}".strip()
        if why is None:
            dio = []
            for d in loops:
                try:
                    with open(f"/sys/block/{os.path.basename(d)}/loop/dio") as f:
                        dio.append(f.read().strip() == "1")
                except OSError:
                    dio.append(False)
            self.devices["shm"] = {"kind": "shm-loop", "paths": loops,
                                   "desc": f"loop devices ({', '.join(loops)}) over files in /dev/shm, "
                                           f"loop direct IO {'on' if all(dio) else 'off'}, O_DIRECT"}
        else:
            self.devices["shm"] = dict(self.devices["disk"])
            self.devices["shm"]["desc"] += f" (no loop device over /dev/shm: {why})"
            self.devices["shm"]["fallback"] = True
        for k, v in self.devices.items():
            log(f"  device {k}: {v['desc']}")

    def fast(self):
        """The RAM-backed device, or the disk files when there is none."""
        return "disk" if self.devices["shm"].get("fallback") else "shm"

    # --------------------------------------------------------------- cases

    def case1(self):
        c = self.cfg
        log("\n== case 1: 4 KiB random read, one region, async with notify (resubmitted from notify)."
            "\n   Each request reads into a page list of dm_io_page_alloc pages (the proposal's memory):"
            "\n   with io_uring such reads run in the pages, and a cancel still ends them at once."
            "\n   At QD32 the same reads into the caller's own buffer (DM_IO_VM: through private"
            "\n   memory, one copy per read) and with DM_IO_ZERO_COPY are shown too.")
        out = []
        for dk in ["disk", "shm"]:
            if dk == "shm" and self.devices["shm"].get("fallback"):
                continue
            dev = self.devices[dk]["paths"][0]
            for qd in c["qds"]:
                label = f"randread 4k QD{qd} {dk}"
                r = self.pair(
                    1, label,
                    lambda: self.randread(label, dev, 4096, qd, "--pages"),
                    lambda: self.fio(label, [dev], "randread", 4096, qd, c["size"], c["secs"], c["warmup"]),
                    lambda x: x["iops"], rounds=2 * c["rounds"] if qd == 32 else None)
                r.update(device=dk, qd=qd, memory="library pages (DM_IO_PAGE_LIST)")
                out.append(r)
                ref = self.ref_split(1, label, dev, 4096, qd, r["libdmio"], copies=False) if qd == 32 else None
                r["reference"] = ref
                d, f = r["libdmio_detail"], r["fio_detail"]
                self.row(1, f"4 KiB randread QD{qd}, library pages (IOPS)", dk, fmt_iops(r["libdmio"]),
                         fmt_iops(r["fio"]), r["ratio"],
                         f"p99 {fmt_ns(d['lat_ns']['p99'])} vs {fmt_ns(f['lat_ns']['p99'])}; "
                         f"CPU/IO {d['cpu']['us_per_request']:.1f} vs {f['cpu']['us_per_request']:.1f} us"
                         + self.ref_note(ref))
                if qd == 32:
                    # For comparison: the caller's own buffer (through private
                    # memory), and the opt-in DM_IO_ZERO_COPY.
                    for key, opt, what, note in (
                            ("bounce", None, "own buffer (DM_IO_VM, private memory)",
                             "one copy per read; a cancel ends the read at once"),
                            ("zero_copy", "--zero-copy", "DM_IO_ZERO_COPY",
                             "opt-in: no private memory; a cancel waits for the IO")):
                        zl = f"{label} {key.replace('_', '-')}"
                        z = self.pair(
                            1, zl,
                            lambda: self.randread(zl, dev, 4096, qd, *([opt] if opt else [])),
                            lambda: self.fio(zl, [dev], "randread", 4096, qd, c["size"], c["secs"], c["warmup"]),
                            lambda x: x["iops"])
                        r[key] = {k: z[k] for k in ("libdmio", "fio", "ratio", "libdmio_runs", "fio_runs")}
                        self.row(1, f"4 KiB randread QD32, {what} (IOPS)", dk, fmt_iops(z["libdmio"]),
                                 fmt_iops(z["fio"]), z["ratio"], note)
                    self.target(1, f"4 KiB randread QD32 on {dk}, libdmio/fio IOPS (library pages)",
                                r["ratio"] >= TARGETS["qd32"], f"{r['ratio']:.2f}x", f">= {TARGETS['qd32']}x",
                                f"({len(r['libdmio_runs'])} runs each: libdmio {fmt_range(r['libdmio_runs'])}, "
                                f"fio {fmt_range(r['fio_runs'])} IOPS; own buffer through private memory "
                                f"{r['bounce']['ratio']:.2f}x)")
        self.results["case1"] = out

    def case2(self):
        c = self.cfg
        log("\n== case 2: 4 KiB random mirror writes to 2 and 3 regions at QD32 "
            "(fio: one job writing the same files, iodepth 32 x legs)")
        out = []
        for dk in ["disk", "shm"]:
            if dk == "shm" and self.devices["shm"].get("fallback"):
                continue
            for legs in (2, 3):
                devs = self.devices[dk]["paths"][:legs]
                label = f"mirror write 4k x{legs} QD32 {dk}"
                devopts = []
                for d in devs:
                    devopts += ["--dev", d]
                r = self.pair(
                    2, label,
                    lambda: self.dmio("rand", label, *devopts, "--rw", "write", "--bs", 4096, "--qd", 32,
                                      "--secs", c["secs"], "--warmup", c["warmup"], "--span", c["size"]),
                    lambda: self.fio(label, devs, "randwrite", 4096, 32 * legs, c["size"], c["secs"], c["warmup"]),
                    lambda x: x.get("regions_per_s", x["iops"]))
                r.update(device=dk, legs=legs)
                out.append(r)
                ref = self.ref_mirror(2, label, devs, 32, r["libdmio"])
                r["reference"] = ref
                d = r["libdmio_detail"]
                self.row(2, f"4 KiB mirror write x{legs} QD32 (device writes/s)", dk, fmt_iops(r["libdmio"]),
                         fmt_iops(r["fio"]), r["ratio"],
                         f"{fmt_iops(d['iops'])} mirror writes/s; p99 {fmt_ns(d['lat_ns']['p99'])} (all legs)"
                         + self.ref_mirror_note(ref))
                self.target(2, f"mirror x{legs} on {dk}, libdmio/fio aggregate writes", r["ratio"] >= TARGETS["mirror"],
                            f"{r['ratio']:.2f}x", f">= {TARGETS['mirror']}x",
                            f"({self.ref_mirror_note(ref).removeprefix('; ')})" if ref else "")
        self.results["case2"] = out

    def memcpy_ns(self, bs, slots):
        return self.dmio("memcpy", f"memcpy {bs}", "--bs", bs, "--qd", slots)["ns_per_copy"]

    def perf_share(self, cmd, label):
        """Share of the process's CPU samples in memcpy/memmove or libdmio's own copy loop
        (`memory::copy`), perf cpu-clock."""
        if not shutil.which("perf"):
            return None, "perf not installed"
        data = os.path.join(self.tmp, "perf.data")
        p = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999", "-o", data, "--"] + cmd,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            return None, f"perf record failed: {p.stderr.strip()[-200:]}"
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "sym",
                              "--percent-limit", "0"], capture_output=True, text=True).stdout
        share = 0.0
        for line in rep.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+\[.\]\s+(\S+)", line)
            if m and re.search(r"mem(cpy|move)|memory::copy", m.group(2)):
                share += float(m.group(1))
        return share, json.loads(p.stdout) if p.stdout.strip().startswith("{") else None

    def case3(self):
        c = self.cfg
        bs, qd = c["big_bs"], c["big_qd"]
        dk = self.fast()
        dev = self.devices[dk]["paths"][0]
        log(f"\n== case 3: reads through private (bounce) memory vs zero-copy: {bs // 1024} KiB random reads QD{qd}."
            "\n   libdmio's default: every read lands in private memory and is copied out. The target"
            "\n   compares it with libdmio's own zero-copy path (DM_IO_ZERO_COPY) on the same device;"
            "\n   fio (zero-copy too) is shown beside it. The memcpy share is reported.")
        label = f"randread {bs // 1024}k QD{qd} {dk}"
        r = self.pair(
            3, label,
            lambda: self.randread(label, dev, bs, qd),
            lambda: self.fio(label, [dev], "randread", bs, qd, c["size"], c["secs"], c["warmup"]),
            lambda x: x["iops"])
        ref = self.ref_split(3, label, dev, bs, qd, r["libdmio"])
        r["reference"] = ref
        # Bounce memory against libdmio's own zero-copy path (DM_IO_ZERO_COPY).
        zl = label + " zero-copy"
        z = self.pair(
            3, zl,
            lambda: self.randread(label, dev, bs, qd),
            lambda: self.randread(zl, dev, bs, qd, "--zero-copy"),
            lambda x: x["iops"], rounds=2 * c["rounds"], names=("bounce", "zero-copy"))
        r["zero_copy"] = {"bounce": z["libdmio"], "zero_copy": z["fio"], "bounce_over_zero_copy": z["ratio"],
                          "bounce_runs": z["libdmio_runs"], "zero_copy_runs": z["fio_runs"]}
        ns = self.memcpy_ns(bs, qd)
        d = r["libdmio_detail"]
        core_share = r["libdmio"] * ns / 1e9          # fraction of one core spent copying
        cpu_share = core_share / d["cpu"]["cores"] if d["cpu"]["cores"] else None
        perf_pct = None
        if not self.smoke:
            perf_pct, _ = self.perf_share(
                [self.driver, "rand", "--dev", dev, "--rw", "read", "--bs", str(bs), "--qd", str(qd),
                 "--secs", "2", "--warmup", "0.2", "--span", str(c["size"])], label)
        ns4 = self.memcpy_ns(4096, 32)
        q32 = [x for x in self.results.get("case1", []) if x["qd"] == 32 and x["device"] == dk]
        r.update(device=dk, bs=bs, qd=qd, memcpy_ns_per_read=ns, memcpy_core_share=core_share,
                 memcpy_cpu_share_est=cpu_share, memcpy_perf_pct=perf_pct, memcpy_4k_ns=ns4)
        mb = lambda x: f"{x * bs / MIB:.0f} MiB/s"
        note = (f"memcpy {ns / 1000:.1f} us per {bs // 1024} KiB read = {core_share * 100:.1f} % of a core"
                + (f", {cpu_share * 100:.0f} % of libdmio's CPU (estimate)" if cpu_share else "")
                + (f"; perf: {perf_pct:.1f} % of samples in memcpy" if perf_pct is not None else "")
                + self.ref_note(ref))
        self.row(3, f"{bs // 1024} KiB randread QD{qd}, libdmio bounce vs fio (MiB/s)", dk,
                 mb(r["libdmio"]), mb(r["fio"]), r["ratio"], note)
        self.row(3, f"{bs // 1024} KiB randread QD{qd}, libdmio bounce vs libdmio DM_IO_ZERO_COPY (MiB/s)", dk,
                 mb(z["libdmio"]), mb(z["fio"]), z["ratio"], "the fio column here is libdmio with DM_IO_ZERO_COPY")
        log(f"  libdmio's own zero-copy (DM_IO_ZERO_COPY): {mb(z['fio'])}; bounce / zero-copy {z['ratio']:.2f}x")
        if q32 and "bounce" in q32[0]:
            s4 = q32[0]["bounce"]["libdmio"] * ns4 / 1e9
            r["memcpy_4k_core_share_qd32"] = s4
            log(f"  4 KiB QD32 ({dk}): memcpy {ns4:.0f} ns per read = {s4 * 100:.1f} % of a core at "
                f"{fmt_iops(q32[0]['bounce']['libdmio'])} IOPS (own buffer, through private memory)")
        log(f"  {note}")
        self.target(3, f"{bs // 1024} KiB randread on {dk}, bounce / zero-copy (libdmio default / DM_IO_ZERO_COPY)",
                    z["ratio"] >= TARGETS["bounce"], f"{z['ratio']:.2f}x", f">= {TARGETS['bounce']}x",
                    f"({len(z['libdmio_runs'])} runs each: bounce {fmt_range(z['libdmio_runs'], mb)}, zero-copy "
                    f"{fmt_range(z['fio_runs'], mb)}; bounce vs fio {r['ratio']:.2f}x)")
        self.results["case3"] = r

    def case4(self):
        c = self.cfg
        dev = self.devices["disk"]["paths"][0]
        n = c["timeouts_n"]
        log(f"\n== case 4: timeout precision: {n} timed reads in flight, held by fault injection (\"hang\")")
        out = {}
        for variant, opts in (("spread", ["--timeout", c["timeout_ms"], "--spread", c["timeout_spread"]]),
                              ("burst", ["--timeout", c["burst_timeout"]])):
            t0 = time.time()
            label = f"timeouts {variant} n={n}"
            r = self.dmio("timeouts", label, "--dev", dev, "--n", n, *opts)
            h = r["lateness_ns"]
            # The machine's timer floor in the same run (one sleeping probe per CPU).
            pr = r.get("sleep_probe_oversleep_ns")
            self.progress(4, label, "libdmio", f"notify - deadline p50 {fmt_ns(h['p50'])} p99 {fmt_ns(h['p99'])} "
                                               f"max {fmt_ns(h['max'])}", t0)
            out[variant] = r
            desc = (f"deadlines {c['timeout_ms']}..{c['timeout_ms'] + c['timeout_spread']} ms" if variant == "spread"
                    else f"all {c['burst_timeout']} ms (submitted in {r['submit_secs'] * 1000:.0f} ms)")
            self.row(4, f"timeout lateness, {n} held requests, {desc}", "held",
                     f"p50 {fmt_ns(h['p50'])} / p99 {fmt_ns(h['p99'])} / p99.9 {fmt_ns(h['p999'])} / max {fmt_ns(h['max'])}",
                     "-", None, f"{r['timeout_notifications']} TIMEOUT, {r['early']} early, "
                                f"{r['stats']['late_completions']} late OK after release"
                                + (f"; machine floor, a plain 2 ms sleep overslept by p99 {fmt_ns(pr['p99'])} / "
                                   f"max {fmt_ns(pr['max'])} (same run)" if pr else ""))
            p99ms = h["p99"] / 1e6
            self.target(4, f"timer lateness p99, {variant} deadlines", p99ms <= TARGETS["timer_p99_ms"],
                        f"{p99ms:.3f} ms", f"<= {TARGETS['timer_p99_ms']} ms",
                        f"(same run: a plain 2 ms sleep overslept by p99 {pr['p99'] / 1e6:.3f} ms)" if pr else "")
        self.results["case4"] = out

    def case5(self):
        c = self.cfg
        dk = self.fast()
        devs = self.devices[dk]["paths"]
        T = c["mirror_timeout"]
        log(f"\n== case 5: 2-leg mirror writes, timeout {T} ms, second leg hung (\"hang writes\"), QD32")
        out = {}
        runs = (("timed", ["--n", c["mirror_n"], "--timeout", T]),
                ("healthy", ["--n", c["healthy_n"], "--timeout", T, "--healthy"]),
                ("wait-all", ["--wait-all", "--secs", c["waitall_secs"]]))
        for variant, opts in runs:
            t0 = time.time()
            label = f"mirror {variant}"
            r = self.dmio("mirror", label, "--dev", devs[0], "--dev", devs[1], "--qd", 32, *opts)
            h = r["lat_ns"]
            self.progress(5, label, "libdmio", f"acked {r['acked_in_run']}/{r['requests_submitted']} "
                                               f"p50 {fmt_ns(h['p50'])} p99.9 {fmt_ns(h['p999'])}", t0)
            out[variant] = r
        t, hl, wa = out["timed"], out["healthy"], out["wait-all"]
        h = t["lat_ns"]
        self.row(5, f"mirror write, leg 2 hung, timeout {T} ms: ack latency", dk,
                 f"p50 {fmt_ns(h['p50'])} / p99 {fmt_ns(h['p99'])} / p99.9 {fmt_ns(h['p999'])}", "-", None,
                 f"{t['acked_in_run']} writes acked at {t['acks_per_s']:.0f}/s; {t['late_ok']} hung legs OK after release")
        hh = hl["lat_ns"]
        self.row(5, "mirror write, both legs healthy (same harness)", dk,
                 f"p50 {fmt_ns(hh['p50'])} / p99 {fmt_ns(hh['p99'])} / p99.9 {fmt_ns(hh['p999'])}", "-", None, "")
        self.row(5, "mirror write, leg 2 hung, waiting for all legs", dk,
                 f"{wa['acked_in_run']} of {wa['requests_submitted']} done in {wa['run_secs']:.1f} s", "-", None,
                 f"p50/p99/p99.9 > {wa['run_secs']:.1f} s: never finish while the leg hangs "
                 f"(they end {fmt_ns(wa['lat_ns']['p50'])} after submission, when it is released)")
        # Where the tail comes from: the good leg itself, how late TIMEOUT
        # came, and the machine's own floor (a probe thread per CPU sleeping
        # 2 ms at a time in the same run: no TIMEOUT can be more punctual
        # than its wake-up).
        g, tl, pr = t.get("good_leg_ns"), t.get("timeout_late_ns"), t.get("sleep_probe_oversleep_ns")
        floor = ""
        if g and tl and pr:
            self.row(5, "  where the hung-leg tail comes from (p99 / p99.9 / max)", dk,
                     f"TIMEOUT after its deadline: {fmt_ns(tl['p99'])} / {fmt_ns(tl['p999'])} / {fmt_ns(tl['max'])}",
                     "-", None,
                     f"good leg's own write: {fmt_ns(g['p99'])} / {fmt_ns(g['p999'])} / {fmt_ns(g['max'])}; "
                     f"machine floor, a plain 2 ms sleep overslept by: {fmt_ns(pr['p99'])} / {fmt_ns(pr['p999'])} / "
                     f"{fmt_ns(pr['max'])} (same run)")
            floor = (f"(same run: TIMEOUT came p99.9 {fmt_ns(tl['p999'])} after its deadline; a plain 2 ms sleep on this "
                     f"machine overslept by up to {fmt_ns(pr['max'])}, p99.9 {fmt_ns(pr['p999'])})")
        slack = h["p999"] / 1e6 - T
        self.target(5, f"hung-leg mirror write p99.9 vs timeout {T} ms", slack <= TARGETS["mirror_slack_ms"],
                    f"{h['p999'] / 1e6:.2f} ms (timeout + {slack:.2f} ms)", f"<= timeout + {TARGETS['mirror_slack_ms']} ms",
                    floor)
        # Hedged reads: first leg with an occasional injected delay.
        size = c["size"]
        delayed = size // 512 // 50  # 2 % of the sectors
        spec = f"delay read=20ms sectors=0-{delayed - 1}"
        log(f"   hedged reads: leg 1 \"{spec}\" (2 % of reads delayed 20 ms), 4 KiB, QD8; "
            "plain read of leg 1 vs DM_IO_READ_ANY(leg 1, leg 2) with a 2 ms hedge")
        hedge = {}
        for variant, opts in (("plain", ["--plain"]), ("hedged", ["--hedge", 2])):
            t0 = time.time()
            label = f"hedge {variant}"
            r = self.dmio("hedge", label, "--dev", devs[0], "--dev", devs[1], "--qd", 8, "--secs", c["hedge_secs"],
                          "--warmup", c["warmup"], "--faults", spec, "--span", size, *opts)
            hh = r["lat_ns"]
            self.progress(5, label, "libdmio", f"{fmt_iops(r['iops'])} IOPS p50 {fmt_ns(hh['p50'])} "
                                               f"p99 {fmt_ns(hh['p99'])} p99.9 {fmt_ns(hh['p999'])}", t0)
            hedge[variant] = r
        p, q = hedge["plain"]["lat_ns"], hedge["hedged"]["lat_ns"]
        self.row(5, "hedged read (READ_ANY, 2 ms hedge) vs plain read, 2 % of leg-1 reads +20 ms", dk,
                 f"p50 {fmt_ns(q['p50'])} / p99 {fmt_ns(q['p99'])} / p99.9 {fmt_ns(q['p999'])}",
                 f"plain: {fmt_ns(p['p50'])} / {fmt_ns(p['p99'])} / {fmt_ns(p['p999'])}",
                 None, f"{hedge['hedged']['stats']['hedges']} hedges; "
                       f"IOPS {fmt_iops(hedge['hedged']['iops'])} vs {fmt_iops(hedge['plain']['iops'])}; "
                       f"memory waits {hedge['hedged']['stats']['memory_waits']}")
        out["hedge"] = hedge
        self.results["case5"] = out

    def case6(self):
        c = self.cfg
        dk = self.fast()
        devs = self.devices[dk]["paths"]
        n = c["memory_n"]
        log(f"\n== case 6: memory: RSS over {n} requests with faults (mirror writes with a failing leg, "
            "timed reads that time out, hedged reads, cancelled reads)")
        t0 = time.time()
        r = self.dmio("memory", f"memory n={n}", "--dev", devs[0], "--dev", devs[1], "--qd", 32, "--n", n,
                      "--span", c["size"])
        rss = r["rss_kib"]
        st = r["stats"]
        bound = st["private_bytes_bound"] / 1024
        growth = rss["after_requests"] - rss["after_warmup"]
        self.progress(6, f"memory n={n}", "libdmio", f"RSS {rss['after_warmup']} -> {rss['after_requests']} KiB "
                                                     f"(bound {bound:.0f} KiB)", t0)
        self.row(6, f"RSS before/after {n} requests with faults (KiB)", dk,
                 f"{rss['after_warmup']} -> {rss['after_requests']} (+{growth})", "-", None,
                 f"private bound {bound:.0f} KiB, high water {st['private_bytes_high_water'] / 1024:.0f} KiB; "
                 f"client created +{rss['client_created'] - rss['start']} KiB; "
                 f"{st['errors']} errors, {st['timeouts']} timeouts, {st['cancelled']} cancelled; "
                 f"{r['requests'] / r['secs']:.0f} req/s")
        self.target(6, f"RSS growth over {n} requests vs the private-memory bound",
                    growth <= bound, f"+{growth} KiB", f"<= {bound:.0f} KiB (bound)")
        self.results["case6"] = r

    def callgrind(self, cmd, env=None):
        out = os.path.join(self.tmp, "cg.out")
        vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        e = dict(os.environ)
        e.update(env or {})
        p = subprocess.run(vg + cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, text=True,
                           timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"callgrind failed: {p.stderr[-1500:]}")
        return self.cg_read(out)

    @staticmethod
    def cg_read(out):
        """Total Ir and Ir per function (self cost, inlined code merged into its function)."""
        with open(out) as f:
            total = next(int(l.split()[1]) for l in f if l.startswith("summary:") or l.startswith("totals:"))
        ann = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", out],
                             capture_output=True, text=True).stdout
        fns = {}
        for line in ann.splitlines():
            m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)", line)
            if not m or "PROGRAM TOTALS" in m.group(2):
                continue
            name = re.sub(r"\s*\[[^\]]*\]$", "", m.group(2))
            name = name.split(":", 1)[1] if ":" in name else name
            fns[name] = fns.get(name, 0) + int(m.group(1).replace(",", ""))
        return total, fns

    @staticmethod
    def cg_category(f):
        for pat, kind in ((r"malloc|free|__rdl_alloc|__rust_alloc|__rust_dealloc|realloc|arena|drop_slow", "allocation (malloc/free)"),
                          (r"crossbeam", "crossbeam channels"),
                          (r"mem(cpy|move|set)|memory::copy", "memcpy (bounce copy)"),
                          (r"[Hh]ash|sip", "HashMap hashing"),
                          (r"[Mm]utex|futex|Condvar|pthread_mutex|lock_contended", "locks"),
                          (r"registry|handle::", "handle registry"),
                          (r"^(rand_submit|rand_notify|hist_|now_ns|main)", "benchmark driver"),
                          (r"dmio|io_uring|Vec<T>|vec_deque|IntoIter|raw_vec", "libdmio logic (incl. Vec plumbing)"),
                          (r"^(get_io_u|__get_io_u|put_io_u|io_u_|td_|add_\w*sample|fio_|ntime|utime)|^0x", "fio")):
            if re.search(pat, f):
                return kind
        return "other (libc, syscall wrappers, clock)"

    def probe_uring_under_valgrind(self, dev):
        """Runs the io_uring engine under callgrind; True if it makes progress and ends."""
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.tmp}/probe.out", self.driver, "rand",
               "--dev", dev, "--qd", "32", "--count", "200"]
        e = dict(os.environ, DMIO_ENGINE="uring", DMIO_URING_WAIT="poll")
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=e)
        last, still, t0 = -1, 0.0, time.time()
        try:
            while p.poll() is None and time.time() - t0 < self.cfg["probe_secs"]:
                time.sleep(0.5)
                try:
                    with open(f"/proc/{p.pid}/stat") as f:
                        ticks = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])
                except OSError:
                    continue
                still = still + 0.5 if ticks == last else 0.0
                last = ticks
                status(f"  probing the io_uring engine under valgrind: {time.time() - t0:.0f} s")
                if still >= 3.0 and time.time() - t0 > 4:
                    break  # no CPU used for 3 s: every thread blocked
            ok = p.poll() == 0
            return ok, "ran to completion" if ok else (
                f"no progress (0 CPU for {still:.0f} s) even with DMIO_URING_WAIT=poll" if still >= 3 else
                f"did not finish in {self.cfg['probe_secs']} s")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            clear_status()

    def case7(self):
        c = self.cfg
        dk = self.fast()
        dev = self.devices[dk]["paths"][0]
        n1, n2 = c["cg_counts"]
        log(f"\n== case 7: CPU per IO: userspace instructions per 4 KiB random read at QD32 (callgrind), "
            f"counted as (Ir({n2}) - Ir({n1})) / {n2 - n1} to cancel start-up")
        out = {}
        if not shutil.which("valgrind"):
            log("  valgrind not installed: skipped")
            return
        vg_ver = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
        ok, why = self.probe_uring_under_valgrind(dev)
        engine = "uring" if ok else "threads"
        log(f"  io_uring engine under {vg_ver}: {why}; callgrind counts the "
            f"{'io_uring' if ok else 'thread-pool (DMIO_ENGINE=threads)'} engine")
        out["uring_under_valgrind"] = {"ok": ok, "why": why, "valgrind": vg_ver}
        counts = {}
        for tool in ("libdmio", "fio"):
            tot, per_fn = [], []
            for n in (n1, n2):
                t0 = time.time()
                if tool == "libdmio":
                    ir, fns = self.callgrind([self.driver, "rand", "--dev", dev, "--rw", "read", "--bs", "4096",
                                              "--qd", "32", "--count", str(n), "--span", str(c["size"])],
                                             env={"DMIO_ENGINE": engine, "DMIO_URING_WAIT": "poll"})
                else:
                    out_json = os.path.join(self.tmp, "fio-cg.json")
                    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.tmp}/cg.out"]
                    cmd = ["fio", "--name=bench", f"--filename={dev}", "--ioengine=io_uring", "--direct=1",
                           "--rw=randread", "--bs=4096", "--iodepth=32", "--norandommap", "--randrepeat=0",
                           f"--size={c['size']}", f"--number_ios={n}", "--thread", "--output-format=json",
                           f"--output={out_json}"]
                    p = subprocess.run(vg + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                       timeout=900)
                    if p.returncode:
                        raise RuntimeError(f"fio under callgrind failed: {p.stderr[-1000:]}")
                    ir, fns = self.cg_read(f"{self.tmp}/cg.out")
                tot.append(ir)
                per_fn.append(fns)
                self.progress(7, f"callgrind {n} reads", tool, f"{ir / 1e6:.1f} M instructions", t0)
            per = (tot[1] - tot[0]) / (n2 - n1)
            # Per function, the same difference: instructions per IO, start-up cancelled.
            fn_io = {k: (per_fn[1].get(k, 0) - per_fn[0].get(k, 0)) / (n2 - n1) for k in per_fn[1]}
            top = sorted(fn_io.items(), key=lambda kv: -kv[1])[:60]
            counts[tool] = {"ir": tot, "per_io": per, "top_functions_per_io": top}
            with open(os.path.join(self.out, f"callgrind-{tool}.txt"), "w") as f:
                f.write(f"# {tool}: userspace instructions per 4 KiB read at QD32 (callgrind, self cost),\n"
                        f"# (Ir({n2} reads) - Ir({n1} reads)) / {n2 - n1}; total {per:.0f} per IO"
                        + (f"; libdmio engine: {engine}" if tool == "libdmio" else "") + "\n")
                cats = {}
                for k, v in fn_io.items():
                    cats[self.cg_category(k)] = cats.get(self.cg_category(k), 0) + v
                f.write("# by kind:\n")
                for k, v in sorted(cats.items(), key=lambda kv: -kv[1]):
                    if v > 0:
                        f.write(f"#{v:9.1f}  {v / per * 100:5.1f}%  {k}\n")
                f.write("# by function (self):\n")
                for k, v in top:
                    f.write(f"{v:9.1f}  {v / per * 100:5.1f}%  {k}\n")
            counts[tool]["by_kind"] = cats
        ratio = counts["libdmio"]["per_io"] / counts["fio"]["per_io"]
        out.update(counts=counts, engine=engine, ratio=ratio)
        eng = "io_uring engine" if ok else "thread-pool engine"
        self.row(7, f"userspace instructions per 4 KiB read, QD32 (callgrind; libdmio {eng})", dk,
                 f"{counts['libdmio']['per_io']:.0f}", f"{counts['fio']['per_io']:.0f}", ratio,
                 "kernel instructions not counted" + (
                     "; DMIO_URING_WAIT=poll (valgrind 3.19 stops every thread while one waits in io_uring_enter)"
                     if ok else "; the io_uring engine did not run under valgrind"))
        self.target(7, f"instructions per IO, libdmio ({eng}) / fio (io_uring)", ratio <= TARGETS["cpu"],
                    f"{ratio:.2f}x", f"<= {TARGETS['cpu']}x")
        # The io_uring engine: perf stat -e instructions needs a hardware PMU.
        ps = subprocess.run(["perf", "stat", "-x,", "-e", "instructions:u", "true"], capture_output=True,
                            text=True) if shutil.which("perf") else None
        pmu = bool(ps and ps.returncode == 0 and "not supported" not in ps.stderr and "<not" not in ps.stderr)
        out["perf_instructions_available"] = pmu
        q32 = [x for x in self.results.get("case1", []) if x["qd"] == 32 and x["device"] == dk]
        if q32:
            d, f = q32[0]["libdmio_detail"]["cpu"], q32[0]["fio_detail"]["cpu"]
            cr = d["us_per_request"] / f["us_per_request"]
            out["cpu_time_per_io_uring"] = {"libdmio_us": d["us_per_request"], "fio_us": f["us_per_request"],
                                            "ratio": cr}
            self.row(7, "CPU time per 4 KiB read, QD32, io_uring engine (user+sys, us)", dk,
                     f"{d['us_per_request']:.2f}", f"{f['us_per_request']:.2f}", cr,
                     "getrusage of the libdmio process vs fio's job CPU (from case 1); "
                     + ("" if pmu else "no hardware PMU here, so no `perf stat -e instructions`"))
            log(f"  io_uring engine: {'perf stat -e instructions is available' if pmu else 'no PMU: perf stat -e instructions unavailable'};"
                f" CPU time per IO (case 1, QD32, {dk}): libdmio {d['us_per_request']:.2f} us vs fio "
                f"{f['us_per_request']:.2f} us = {cr:.2f}x")
        if c["profile_secs"] and shutil.which("perf"):
            self.profile(dev)
            out["profile_by_kind"] = [[k[0], k[1], v] for k, v in getattr(self, "profile_kinds", [])]
            ps = self.perf_stat_per_io(dev)
            if ps:
                out["per_io_events"] = ps
                d, f = ps["libdmio"], ps["fio"]
                for ev, what in (("context-switches", "context switches"), ("raw_syscalls:sys_enter", "system calls"),
                                 ("task-clock", "CPU time (us, all threads)")):
                    if ev in d and ev in f:
                        self.row(7, f"{what} per 4 KiB read, QD32 (perf stat)", dk, f"{d[ev]:.2f}", f"{f[ev]:.2f}",
                                 d[ev] / f[ev] if f[ev] else None, "whole process, io_uring engine")
        self.results["case7"] = out

    def perf_stat_per_io(self, dev):
        """Context switches, wake-ups, system calls and CPU time per IO (perf stat, software events)."""
        events = "task-clock,context-switches,raw_syscalls:sys_enter"
        secs = self.cfg["profile_secs"]
        res = {}
        for tool in ("libdmio", "fio"):
            if tool == "libdmio":
                cmd = [self.driver, "rand", "--dev", dev, "--qd", "32", "--secs", str(secs), "--warmup", "0",
                       "--span", str(self.cfg["size"])]
            else:
                out = os.path.join(self.tmp, "fio-stat.json")
                cmd = ["fio", "--name=bench", f"--filename={dev}", "--ioengine=io_uring", "--direct=1",
                       "--rw=randread", "--bs=4096", "--iodepth=32", "--norandommap", "--randrepeat=0",
                       f"--size={self.cfg['size']}", "--time_based", f"--runtime={int(secs * 1000)}ms",
                       "--output-format=json", f"--output={out}"]
            t0 = time.time()
            p = subprocess.run(["perf", "stat", "-x,", "-e", events, "--"] + cmd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
            if p.returncode:
                log(f"  perf stat failed: {p.stderr[-300:]}")
                return None
            if tool == "libdmio":
                ios = json.loads(p.stdout)["stats"]["requests"]
            else:
                with open(out) as f:
                    txt = f.read()
                ios = json.loads(txt[txt.index("{"):])["jobs"][0]["read"]["total_ios"]
            vals = {}
            for line in p.stderr.splitlines():
                parts = line.split(",")
                if len(parts) >= 3 and parts[0].replace(".", "").isdigit():
                    vals[parts[2]] = float(parts[0]) / ios * (1000.0 if parts[2] == "task-clock" else 1.0)
            res[tool] = vals
            self.progress(7, "perf stat per IO, QD32", tool,
                          ", ".join(f"{k.split(':')[-1]} {v:.2f}" for k, v in vals.items()), t0)
        return res

    def profile(self, dev):
        """Where the CPU goes in a QD32 4 KiB read run (perf, cpu-clock): per thread and per symbol."""
        data = os.path.join(self.tmp, "perf-qd32.data")
        cmd = [self.driver, "rand", "--dev", dev, "--qd", "32", "--secs", str(self.cfg["profile_secs"]),
               "--warmup", "0.2", "--span", str(self.cfg["size"])]
        p = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999", "-g", "-o", data, "--"] + cmd,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode:
            log(f"  perf record failed: {p.stderr[-300:]}")
            return
        path = os.path.join(self.out, "profile-qd32.txt")
        with open(path, "w") as f:
            for sort, extra, lim in (("comm", "--no-children", "0.5"), ("comm,dso", "--no-children", "0.5"),
                                     ("comm,sym", "--no-children", "0.5"), ("comm,sym", "--children", "2")):
                f.write(f"### perf report {extra} --sort {sort} (cpu-clock samples, 4 KiB randread QD32, {dev})\n")
                rep = subprocess.run(["perf", "report", "-i", data, "--stdio", extra, "-g", "none",
                                      "--sort", sort, "--percent-limit", lim],
                                     capture_output=True, text=True).stdout
                f.write("\n".join(l for l in rep.splitlines() if l.strip() and not l.startswith("#")) + "\n\n")
            kinds = self.perf_kinds(data)
            f.write("### by kind (self samples per thread): what fio also pays (IO submission in the kernel)\n"
                    "### vs what it does not (thread hand-offs: sleep, wake-up, yield; channels; allocation)\n")
            for (comm, kind), v in kinds:
                f.write(f"{v:6.2f}%  {comm:13s} {kind}\n")
        self.profile_kinds = kinds
        log(f"  perf profile of the QD32 run: {os.path.relpath(path, ROOT)}")

    def perf_kinds(self, data):
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
                              "--sort", "comm,dso,sym", "--percent-limit", "0"], capture_output=True, text=True).stdout
        kinds = {}
        for line in rep.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(\S+)\s+\[(.)\]\s+(.*)", line)
            if not m:
                continue
            v, comm, typ, sym = float(m.group(1)), m.group(2), m.group(4), m.group(5).strip()
            if typ == "k":
                kind = ("kernel: sleep / wake-up / yield (thread hand-offs)"
                        if re.search(r"finish_task_switch|schedule|sched_yield|futex|try_to_wake|wake_up|eventfd|"
                                     r"enqueue|dequeue|pick_next|update_curr|irqentry_exit|reschedule|ttwu", sym)
                        else "kernel: IO submission / completion, other system calls")
            else:
                kind = "user: " + self.cg_category(sym)
            kinds[(comm, kind)] = kinds.get((comm, kind), 0) + v
        return sorted(kinds.items(), key=lambda kv: -kv[1])

    # --------------------------------------------------------------- output

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

    def run(self):
        mode = "smoke run" if self.smoke else "full run"
        log(f"libdmio benchmark ({mode}): libdmio vs fio, ratios; results in {os.path.relpath(self.out, ROOT)}/")
        self.results["meta"] = self.meta()
        g = self.results["meta"]["git"]
        log(f"  libdmio {self.results['meta']['libdmio']}, commit {g['commit']} ({g['subject'][:70]})"
            + (f"; uncommitted library changes: {' '.join(x.split()[-1] for x in g['library_sources_modified'])}"
               if g["library_sources_modified"] else ""))
        la = self.results["meta"]["load_start"]
        noisy = la[0] >= 1.0
        log(f"  load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} on {os.cpu_count()} CPUs"
            + ("  -> NOISY: other work is running, ratios are less reliable" if noisy else ""))
        busy0, tot0 = cpu_busy()
        ch0, t0 = children_cpu(), time.time()
        self.setup_devices()
        self.results["meta"]["devices"] = self.devices
        self.results["meta"]["machine_per_case"] = {}
        for i, fn in enumerate([self.case1, self.case2, self.case3, self.case4, self.case5, self.case6, self.case7], 1):
            if str(i) not in self.cases:
                continue
            # A case disturbed by other users is run again, once, if the run stays near 6 min
            # (not in the smoke run).
            tries = 1 if self.smoke else 2
            for attempt in range(1, tries + 1):
                t_case = time.time()
                nrows, ntargets = len(self.rows), len(self.targets)
                m0 = machine_snapshot()
                fn()
                m = machine_delta(m0, machine_snapshot())
                m["attempt"] = attempt
                self.results["meta"]["machine_per_case"][str(i)] = m
                busy = m["others"] > 0.25 or m["steal"] > 0.1
                log(f"  machine during case {i}: other users' processes {m['others']:.2f} cores, steal {m['steal']:.2f}"
                    f" (benchmark {m['ours']:.2f}, kernel threads {m['kthreads']:.2f})"
                    + ("  -> NOISY" if busy else ""))
                if not busy:
                    break
                if attempt < tries and (time.time() - self.t_start) + (time.time() - t_case) < 360:
                    log(f"  case {i} was disturbed: running it again (attempt {attempt + 1} of {tries})")
                    del self.rows[nrows:]
                    del self.targets[ntargets:]
                    time.sleep(5)
                else:
                    self.noisy_cases.append(i)
                    break
        # How busy the machine was beyond this benchmark (includes kernel IO threads).
        busy1, tot1 = cpu_busy()
        wall = time.time() - t0
        hz = os.sysconf("SC_CLK_TCK")
        all_cores = (busy1 - busy0) / hz / wall
        ours = (children_cpu() - ch0) / wall
        noisy = noisy or bool(self.noisy_cases)
        self.results["meta"].update(duration_s=time.time() - self.t_start, load_end=os.getloadavg(),
                                    cpu_cores_busy_all=all_cores, cpu_cores_benchmark=ours,
                                    noisy=noisy, noisy_cases=self.noisy_cases)
        if self.noisy_cases:
            log(f"\n  NOISY: other users took CPU during case(s) {', '.join(map(str, self.noisy_cases))}")
        log(f"\n  machine: {all_cores:.2f} cores busy on average during the run, of which the benchmark's "
            f"processes {ours:.2f} (the rest: other users, kernel IO threads, interrupts)")
        table = self.table()
        targets = self.target_lines()
        self.results["table"] = self.rows
        self.results["targets"] = self.targets
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        json_path = os.path.join(self.out, f"bench-{stamp}.json" if not self.smoke else "smoke.json")
        with open(json_path, "w") as f:
            json.dump(self.results, f, separators=(",", ":"), default=str)
        full = not self.smoke and len(self.cases) == 7
        if full:
            shutil.copyfile(json_path, os.path.join(self.out, "latest.json"))
        # A partial run (--cases) leaves latest.json and the published plot
        # of the last full run alone.
        png_dir = self.out if full or self.smoke else os.path.join(ROOT, "build", "bench")
        os.makedirs(png_dir, exist_ok=True)
        png = self.plot(os.path.join(png_dir, "latency-cdf.png"))
        log("\n" + table + "\n\nTargets:\n" + "\n".join(targets))
        log(f"\nJSON: {os.path.relpath(json_path, ROOT)}" + (f"  plot: {os.path.relpath(png, ROOT)}" if png else ""))
        if full and png:
            self.update_readme(table, targets, png, os.path.join(self.out, "latest.json"))
            log("bench/README.md updated with this table")
        log(f"done in {time.time() - self.t_start:.0f} s" + ("  (NOISY machine)" if noisy else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--driver", required=True)
    ap.add_argument("--ref", help="the bare io_uring reference loop (uring-ref), to split the gaps to fio")
    ap.add_argument("--smoke", action="store_true", help="tiny run of every case (make test)")
    ap.add_argument("--cases", help="comma-separated case numbers (default: all)")
    ap.add_argument("--out", help="results directory")
    ap.add_argument("--no-loop", action="store_true", help="no loop devices over /dev/shm (disk files only)")
    args = ap.parse_args()
    for tool in ("fio",):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not installed (Debian: apt-get install {tool})")
    b = Bench(args)

    def on_signal(sig, _):
        raise SystemExit(128 + sig)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        b.run()
    finally:
        b.cleanup()


if __name__ == "__main__":
    main()
