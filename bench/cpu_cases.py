"""Case 7 of the benchmark, CPU per IO: userspace instructions per read
under callgrind (libdmio and fio, start-up cancelled), CPU time, context
switches and system calls per IO (perf stat), and a perf profile of where
the CPU goes, by thread and by kind. A mixin of bench.Bench."""

import json
import os
import re
import shutil
import subprocess
import time

from common import ROOT, TARGETS, clear_status, log, status


class CpuCases:
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
