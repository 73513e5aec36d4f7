"""Case 9: where io_uring is refused, as in a default Docker or Kubernetes
container (issue 21). libdmio runs with the seccomp filter of
c-tests/engine_fallback.c (`dmio-bench --refuse-uring`: io_uring_setup fails
with EPERM), so it falls back to its Linux AIO engine, and is compared with
fio's `libaio` engine under the same filter (`bench/no-uring.c`): 4 KiB random reads at QD1 and QD32, and 2-leg mirror
writes at QD32 against fio writing the same files. Then the last resort,
the thread-pool engine (`DMIO_ENGINE=threads`), against fio's `psync` engine
with as many threads as the queue depth (32). A mixin of bench.Bench."""

from common import TARGETS, fmt_iops, fmt_ns, fmt_range, log


class ContainerCases:
    def engine_check(self, r, want, label):
        """Says loudly when libdmio ran on another engine than `want` (a library
        without the AIO engine falls back to threads): the rows and targets
        then name the engine it ran on."""
        got = (r.get("stats") or {}).get("engine") or r.get("engine")
        if got != want:
            log(f"  WARNING: {label}: libdmio ran on its {got} engine, not {want}")
        self.case9_engines.setdefault(label, set()).add(got)

    def engines_note(self, label, want):
        got = sorted(map(str, self.case9_engines.get(label, set())))
        return "" if got == [want] else f" (libdmio ran on: {', '.join(got)}!)"

    def case9(self):
        c = self.cfg
        dk = self.fast()
        devs = self.devices[dk]["paths"]
        log("\n== case 9: io_uring refused by a seccomp filter (as in default Docker/Kubernetes containers):"
            "\n   libdmio on its Linux AIO engine vs fio --ioengine=libaio; then libdmio's thread-pool"
            "\n   engine (DMIO_ENGINE=threads) vs fio --ioengine=psync with 32 threads. fio runs under the"
            "\n   same filter (bench/no-uring.c) in the AIO comparisons. Reads go into library pages"
            "\n   (dm_io_page_alloc, as in case 1; io_submit pins them, so they run in place); at QD32"
            "\n   the same reads into the caller's own buffer (DM_IO_VM, through private memory) too.")
        out = []
        self.case9_engines = {}
        for qd in (1, 32):
            label = f"aio randread 4k QD{qd} {dk}"

            def dm(label=label, qd=qd, pages=True):
                r = self.randread(label, devs[0], 4096, qd, "--refuse-uring", *(["--pages"] if pages else []))
                self.engine_check(r, "aio", label)
                return r
            r = self.pair(9, label, dm,
                          lambda label=label, qd=qd: self.fio(label, [devs[0]], "randread", 4096, qd, c["size"],
                                                              c["secs"], c["warmup"], ioengine="libaio", no_uring=True),
                          lambda x: x["iops"], rounds=2 * c["rounds"] if qd == 32 else None)
            r.update(device=dk, qd=qd, engine="aio", fio_engine="libaio", memory="library pages (DM_IO_PAGE_LIST)")
            out.append(r)
            d, f = r["libdmio_detail"], r["fio_detail"]
            self.row(9, f"io_uring refused: 4 KiB randread QD{qd}, library pages, AIO engine vs fio libaio (IOPS)", dk,
                     fmt_iops(r["libdmio"]), fmt_iops(r["fio"]), r["ratio"],
                     f"p99 {fmt_ns(d['lat_ns']['p99'])} vs {fmt_ns(f['lat_ns']['p99'])}; "
                     f"CPU/IO {d['cpu']['us_per_request']:.1f} vs {f['cpu']['us_per_request']:.1f} us"
                     + self.engines_note(label, "aio"))
            own = None
            if qd == 32:
                # For comparison: the caller's own buffer, through private memory.
                ol = f"{label} own-buffer"
                z = self.pair(9, ol, lambda ol=ol: dm(ol, 32, pages=False),
                              lambda ol=ol: self.fio(ol, [devs[0]], "randread", 4096, 32, c["size"], c["secs"],
                                                     c["warmup"], ioengine="libaio", no_uring=True),
                              lambda x: x["iops"])
                own = r["own_buffer"] = {k: z[k] for k in ("libdmio", "fio", "ratio", "libdmio_runs", "fio_runs")}
                self.row(9, "io_uring refused: 4 KiB randread QD32, own buffer (DM_IO_VM), AIO engine vs fio "
                         "libaio (IOPS)", dk, fmt_iops(z["libdmio"]), fmt_iops(z["fio"]), z["ratio"],
                         "one copy per read; a cancel ends the read at once" + self.engines_note(ol, "aio"))
            self.target(9, f"io_uring refused: 4 KiB randread QD{qd} on {dk}, libdmio (AIO) / fio libaio "
                        "(library pages)",
                        r["ratio"] >= TARGETS["aio"], f"{r['ratio']:.2f}x", f">= {TARGETS['aio']}x",
                        f"({len(r['libdmio_runs'])} runs each: libdmio {fmt_range(r['libdmio_runs'])}, "
                        f"fio {fmt_range(r['fio_runs'])} IOPS"
                        + (f"; own buffer through private memory {own['ratio']:.2f}x" if own else "") + ")"
                        + self.engines_note(label, "aio"))
        legs = 2
        label = f"aio mirror write 4k x{legs} QD32 {dk}"
        devopts = []
        for d in devs[:legs]:
            devopts += ["--dev", d]

        def dmw():
            r = self.dmio("rand", label, *devopts, "--rw", "write", "--bs", 4096, "--qd", 32, "--secs", c["secs"],
                          "--warmup", c["warmup"], "--span", c["size"], "--refuse-uring")
            self.engine_check(r, "aio", label)
            return r
        r = self.pair(9, label, dmw,
                      lambda: self.fio(label, devs[:legs], "randwrite", 4096, 32 * legs, c["size"], c["secs"],
                                       c["warmup"], ioengine="libaio", no_uring=True),
                      lambda x: x.get("regions_per_s", x["iops"]))
        r.update(device=dk, legs=legs, engine="aio", fio_engine="libaio")
        out.append(r)
        d = r["libdmio_detail"]
        self.row(9, f"io_uring refused: 4 KiB mirror write x{legs} QD32, AIO engine vs fio libaio (device writes/s)",
                 dk, fmt_iops(r["libdmio"]), fmt_iops(r["fio"]), r["ratio"],
                 f"{fmt_iops(d['iops'])} mirror writes/s; p99 {fmt_ns(d['lat_ns']['p99'])} (all legs)"
                 + self.engines_note(label, "aio"))
        self.target(9, f"io_uring refused: mirror x{legs} on {dk}, libdmio (AIO) / fio libaio device writes",
                    r["ratio"] >= TARGETS["aio"], f"{r['ratio']:.2f}x", f">= {TARGETS['aio']}x",
                    f"(libdmio {fmt_range(r['libdmio_runs'])}, fio {fmt_range(r['fio_runs'])} writes/s)"
                    + self.engines_note(label, "aio"))
        label = f"threads randread 4k QD32 {dk}"

        def dmt():
            r = self.randread(label, devs[0], 4096, 32, env={"DMIO_ENGINE": "threads"})
            self.engine_check(r, "threads", label)
            return r
        r = self.pair(9, label, dmt,
                      lambda: self.fio(label, [devs[0]], "randread", 4096, 1, c["size"], c["secs"], c["warmup"],
                                       ioengine="psync", numjobs=32),
                      lambda x: x["iops"], rounds=2 * c["rounds"])
        r.update(device=dk, qd=32, engine="threads", fio_engine="psync x32")
        out.append(r)
        d, f = r["libdmio_detail"], r["fio_detail"]
        self.row(9, "4 KiB randread QD32, thread-pool engine vs fio psync x32 threads (IOPS)", dk,
                 fmt_iops(r["libdmio"]), fmt_iops(r["fio"]), r["ratio"],
                 f"p99 {fmt_ns(d['lat_ns']['p99'])} vs {fmt_ns(f['lat_ns']['p99'])}; "
                 f"CPU/IO {d['cpu']['us_per_request']:.1f} vs {f['cpu']['us_per_request']:.1f} us")
        self.target(9, f"DMIO_ENGINE=threads: 4 KiB randread QD32 on {dk}, libdmio / fio psync x32",
                    r["ratio"] >= TARGETS["threads"], f"{r['ratio']:.2f}x", f">= {TARGETS['threads']}x",
                    f"({len(r['libdmio_runs'])} runs each: libdmio {fmt_range(r['libdmio_runs'])}, "
                    f"fio {fmt_range(r['fio_runs'])} IOPS)")
        self.results["case9"] = out
