"""Running the tools: the libdmio driver (dmio-bench), fio and the bare
io_uring reference loop (uring-ref), each as a subprocess whose JSON is
read back, and the ABBA pairing of two of them (libdmio, fio, fio, libdmio)
that every ratio comes from. A mixin of bench.Bench."""

import json
import os
import subprocess
import time
from statistics import fmean as mean

from common import clear_status, fmt_iops, fmt_ns, log, settle, status


class Runner:
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

    @staticmethod
    def pinned(cmd, pin):
        """`cmd` run on CPU `pin` alone (all its threads), or as it is for None."""
        return cmd if pin is None else ["taskset", "-c", str(pin)] + cmd

    def dmio(self, mode, label, *opts, env=None, pin=None):
        cmd = [self.driver, mode, "--label", label] + [str(o) for o in opts]
        return self.run_json(self.pinned(cmd, pin), label, env=env)

    def randread(self, label, dev, bs, qd, *extra, env=None, pin=None):
        """libdmio random reads for the configured time (`extra`: more driver options;
        `pin`: a CPU the whole process runs on)."""
        c = self.cfg
        return self.dmio("rand", label, "--dev", dev, "--rw", "read", "--bs", bs, "--qd", qd,
                         "--secs", c["secs"], "--warmup", c["warmup"], "--span", c["size"], *extra, env=env,
                         pin=pin)

    def fio(self, label, files, rw, bs, qd, span, secs=None, warmup=None, number_ios=None,
            valgrind=None, ioengine="io_uring", numjobs=1, no_uring=False, pin=None):
        """fio, O_DIRECT, random offsets without a random map; its io_uring engine
        unless `ioengine` says otherwise (`numjobs` threads, reported as one group);
        `no_uring`: under the seccomp filter that refuses io_uring (bench/no-uring.c);
        `pin`: a CPU fio runs on."""
        out = os.path.join(self.tmp, "fio.json")
        cmd = ["fio", "--name=bench", "--filename=" + ":".join(files), f"--ioengine={ioengine}",
               "--direct=1", f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}", "--norandommap",
               "--randrepeat=0", f"--size={span * len(files)}", "--lat_percentiles=1",
               "--output-format=json+", f"--output={out}"]
        if len(files) > 1:
            cmd.append("--file_service_type=roundrobin")
        if numjobs and numjobs > 1:
            # One result for all jobs (jobs[0] then sums their IOPS).
            cmd += [f"--numjobs={numjobs}", "--group_reporting", "--thread"]
        if number_ios:
            cmd += [f"--number_ios={number_ios}", "--thread"]
        else:
            cmd += ["--time_based", f"--runtime={int(secs * 1000)}ms",
                    f"--ramp_time={int(warmup * 1000)}ms"]
        if no_uring:
            cmd = [os.path.join(os.path.dirname(self.driver), "no-uring")] + cmd
        cmd = self.pinned(cmd, pin)
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

    def quiet_start(self, case, label):
        """Before a timed run: waits (bounded) for the machine to go quiet, so one run does
        not measure the teardown of the previous one. A start on a busy machine is logged
        and counted in the results' meta (`busy_starts`)."""
        waited, quiet = settle()
        if not quiet:
            self.busy_starts += 1
            log(f"  *** case {case} {label}: machine still busy after {waited:.0f} s; timing anyway ***")
        elif waited > 1.0:
            log(f"  (case {case} {label}: waited {waited:.1f} s for the machine to go quiet)")

    def progress(self, case, label, tool, summary, t0):
        self.runs += 1
        clear_status()
        log(f"  [{self.runs:3d}] case {case} {label:<34} {tool:<8} {summary}  ({time.time() - t0:.1f} s)")

    def pair(self, case, label, run_dmio, run_fio, metric, rounds=None, names=("libdmio", "fio"), keep_all=False):
        """ABBA: libdmio, fio, fio, libdmio (per round pair); returns both lists.
        `names`: what the two sides are called in the progress lines. `keep_all`: also
        every run's whole result (libdmio_all, fio_all), not only the first's."""
        rounds = rounds or self.cfg["rounds"]
        order = ["d", "f"] if rounds == 1 else ["d", "f", "f", "d"] * (rounds // 2)
        res = {"d": [], "f": []}
        for who in order:
            self.quiet_start(case, label)
            t0 = time.time()
            r = run_dmio() if who == "d" else run_fio()
            res[who].append(r)
            lat = r.get("lat_ns", {})
            self.progress(case, label, names[0] if who == "d" else names[1],
                          f"{fmt_iops(metric(r))} IOPS  p50 {fmt_ns(lat.get('p50'))}  p99 {fmt_ns(lat.get('p99'))}", t0)
        d = mean([metric(r) for r in res["d"]])
        f = mean([metric(r) for r in res["f"]])
        spread = lambda xs: (min(map(metric, xs)), max(map(metric, xs)))
        return {"libdmio": d, "fio": f, "ratio": d / f if f else 0,
                "libdmio_runs": [metric(r) for r in res["d"]], "fio_runs": [metric(r) for r in res["f"]],
                "libdmio_spread": spread(res["d"]), "fio_spread": spread(res["f"]),
                "libdmio_detail": res["d"][0], "fio_detail": res["f"][0],
                **({"libdmio_all": res["d"], "fio_all": res["f"]} if keep_all else {})}

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
