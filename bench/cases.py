"""Cases 1 to 6 of the benchmark: random reads (1), mirror writes (2), bounce
memory vs zero-copy (3), timeout precision (4), a mirror with a hung leg and
hedged reads (5), memory over a million faulty requests (6). Each logs its
progress, adds rows and targets to the report and its data to
self.results. A mixin of bench.Bench; case 7 is in cpu_cases.py."""

import json
import os
import re
import shutil
import subprocess
import time

from common import MIB, TARGETS, fmt_iops, fmt_ns, fmt_range, log


class Cases:
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
                    lambda x: x["iops"], rounds=2 * c["rounds"] if qd in (1, 32) else None)
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
                if qd == 1:
                    r["qd1"] = self.case1_qd1(dk, dev, label, r)
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

    def case1_qd1(self, dk, dev, label, pages):
        """QD1 four ways: library pages and the caller's own buffer, with the threads
        free and with both processes pinned to one CPU (`taskset`), where the threads'
        placement (wake-ups, the loop worker, the completion softirq) no longer
        differs between libdmio and fio. `pages` is the unpinned library-pages pair.
        Unpinned, both tools switch between two speeds from run to run on a VM, so those
        pairs run twice the rounds."""
        c = self.cfg
        cpu = (os.cpu_count() or 1) - 1
        res = {"pages": {k: pages[k] for k in ("libdmio", "fio", "ratio")}}
        for key, opt, pin, what in (("own", None, None, "own buffer (DM_IO_VM, private memory)"),
                                    ("pages_pinned", "--pages", cpu, f"library pages, pinned to CPU {cpu}"),
                                    ("own_pinned", None, cpu, f"own buffer, pinned to CPU {cpu}")):
            zl = f"{label} {key.replace('_', ' ')}"
            z = self.pair(
                1, zl,
                lambda: self.randread(zl, dev, 4096, 1, *([opt] if opt else []), pin=pin),
                lambda: self.fio(zl, [dev], "randread", 4096, 1, c["size"], c["secs"], c["warmup"], pin=pin),
                lambda x: x["iops"], rounds=2 * c["rounds"] if pin is None else None)
            res[key] = {k: z[k] for k in ("libdmio", "fio", "ratio", "libdmio_runs", "fio_runs")}
            d, f = z["libdmio_detail"], z["fio_detail"]
            self.row(1, f"4 KiB randread QD1, {what} (IOPS)", dk, fmt_iops(z["libdmio"]), fmt_iops(z["fio"]),
                     z["ratio"], f"p99 {fmt_ns(d['lat_ns']['p99'])} vs {fmt_ns(f['lat_ns']['p99'])}"
                     + ("; fio pinned to the same CPU" if pin is not None else "; one copy per read"))
        for key, tkey, what in (("pages", "qd1", "library pages"), ("pages_pinned", "qd1", "library pages, pinned"),
                                ("own", "qd1_own", "own buffer"), ("own_pinned", "qd1_own", "own buffer, pinned")):
            x = res[key]
            self.target(1, f"4 KiB randread QD1 on {dk}, libdmio/fio IOPS ({what})", x["ratio"] >= TARGETS[tkey],
                        f"{x['ratio']:.2f}x", f">= {TARGETS[tkey]}x",
                        f"(libdmio {fmt_iops(x['libdmio'])}, fio {fmt_iops(x['fio'])} IOPS)")
        return res

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
