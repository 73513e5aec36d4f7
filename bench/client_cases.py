"""Case 8 of the benchmark: many clients in one process (issue 19, the
shared engine). 8a: 1,000 clients created and destroyed (threads, RSS
against their pools, time). 8b: 64 clients at QD4 on one device against one
client at QD256 and against fio with 64 jobs at QD4. 8c: the same 64 clients
with one client's device hung, deadline 10 ms: first a fault rule holding
every read in the library, then a really hung device (a loop device over a
FUSE file whose reads the daemon holds, so they are stuck in the kernel):
the other 63 keep their throughput, the hung client's TIMEOUTs come on time.
A mixin of bench.Bench."""

import os
import subprocess
import time
from statistics import fmean as mean

from common import MIB, ROOT, TARGETS, fmt_iops, fmt_ns, fmt_range, log

# The really hung device: c-tests/fixtures/hungdev.sh and the hangfs daemon it
# mounts (built by bench/Makefile through c-tests/fixtures/hungdev.mk).
HUNGDEV_SH = os.path.join(ROOT, "c-tests", "fixtures", "hungdev.sh")
HANGFS = os.path.join(ROOT, "build", "fixtures", "hangfs")


class ClientCases:
    def hung_fuse_unavailable(self):
        """Why the really hung loop+FUSE device cannot be set up here, or None."""
        if os.geteuid() != 0:
            return "not root (a FUSE mount and a loop device need root)"
        if not os.path.exists("/dev/fuse"):
            return "/dev/fuse is missing (no FUSE in this kernel or container)"
        if not (os.path.exists("/dev/loop-control") or os.path.exists("/dev/loop0")):
            return "no loop devices (/dev/loop-control is missing)"
        if not os.access(HANGFS, os.X_OK):
            return f"{os.path.relpath(HANGFS, ROOT)} is not built (libfuse3-dev missing? `make deps` installs it)"
        return None

    def hungdev_cleanup(self, tmpdir):
        """Tears down any hung device a driver left in `tmpdir` (it died before its
        own teardown, and its watcher did not get to it): releases the held IO,
        detaches the loop device, unmounts, stops the daemon. Bounded."""
        if not os.path.isdir(tmpdir):
            return
        for d in sorted(os.listdir(tmpdir)):
            if d.startswith("hungdev."):
                path = os.path.join(tmpdir, d)
                log(f"bench: cleanup: tearing down the hung device left in {path}")
                try:
                    subprocess.run(["bash", HUNGDEV_SH, "down", path, "--rm"], timeout=60, check=False)
                except subprocess.TimeoutExpired:
                    log(f"bench: cleanup: hungdev.sh down {path} did not finish in 60 s")

    def hung_client(self, dk, nc, qd, tmo, multi, rounds, fuse):
        """One of the nc clients reads a hung device with deadline tmo ms (each TIMEOUT
        resubmits), ABBA against none hung: IOPS per other client, and how late the hung
        client's TIMEOUTs came. `fuse`: the device is a loop device over the hangfs FUSE
        daemon holding every read (c-tests/fixtures/hungdev.h); else a fault rule ("hang")."""
        what = "a loop device over a FUSE file whose reads hang" if fuse else "a fault rule (hang)"
        name = "hung FUSE device" if fuse else "hung fault rule"
        late_goal = TARGETS["hung_late_p99_ms"]
        if fuse:
            why = self.hung_fuse_unavailable()
            if why:
                msg = f"case 8: the hung loop+FUSE device CANNOT RUN here: {why}"
                log(f"\n  *** {msg} ***\n")
                self.row(8, f"{nc} clients x QD{qd}, one client on {what}: IOPS per other client", dk,
                         "NOT RUN", "-", None, why)
                self.target(8, f"{nc - 1} clients beside a {name} / none hung", False, "NOT RUN",
                            f">= {TARGETS['hung_clients']}x", why)
                if os.environ.get("CI") == "true":
                    raise RuntimeError(msg)
                return {"not_run": why}
            tmpdir = os.path.join(self.tmp, "hungdev")
            os.makedirs(tmpdir, exist_ok=True)
            self.cleanups.append(lambda: self.hungdev_cleanup(tmpdir))
            env, extra = {"TMPDIR": tmpdir}, ("--hung-fuse",)
        else:
            env, extra = None, ()
        hl = f"{nc} clients, 1 on {'hung FUSE' if fuse else 'hung fault'} {dk}"
        per = lambda x: x["iops"] / (x["clients"] - x["hung"])
        hung = self.pair(8, hl, lambda: multi(hl, "--hung", 1, "--timeout", tmo, *extra, env=env), lambda: multi(hl),
                         per, names=("1 hung", "none"), keep_all=True, rounds=rounds)
        h = hung["libdmio_detail"]
        # Every run, not only the first: the worst TIMEOUT p99 and max, all early ones; the
        # slowest other client of each run (the mean hides a client that stopped while the
        # rest took its share of the device); reads of other clients that never ended.
        runs, base = hung["libdmio_all"], hung["fio_all"]
        p99 = max(r["timeout_late_ns"]["p99"] or 0 for r in runs)
        worst = max(r["timeout_late_ns"]["max"] or 0 for r in runs)
        early = sum(r["early_timeouts"] for r in runs)
        touts = sum(r["timeouts"] for r in runs)
        slow_h = mean([r["iops_per_client_min"] for r in runs])
        slow_n = mean([r["iops_per_client_min"] for r in base])
        slow = slow_h / slow_n if slow_n else 0
        stalled = max(r.get("stalled_clients", 0) for r in runs)
        stalled_reads = sum(r.get("stalled_reads", 0) for r in runs)
        stuck = ""
        if fuse:
            stuck = (f"; stuck in the kernel at the end of a run: {h['loop_inflight']} reads in the loop device, "
                     f"{h['fuse_held']} of them held by the FUSE daemon; destroy of all {nc} clients "
                     f"{h['destroy_s'] * 1e3:.1f} ms; after the release the kernel finished them in "
                     f"{h['release_drain_s'] * 1e3:.0f} ms")
        stall_note = (f"; STALLED: up to {stalled} of the other {nc - 1} clients had reads that never ended "
                      f"({stalled_reads} reads in {len(runs)} runs, cancelled at destroy)" if stalled else "")
        self.row(8, f"{nc} clients x QD{qd}, one client on {what}: IOPS per other client", dk,
                 fmt_iops(hung["libdmio"]), fmt_iops(hung["fio"]), hung["ratio"],
                 f"the fio column is the same {nc} clients with none hung; slowest other client "
                 f"{fmt_iops(slow_h)} vs {fmt_iops(slow_n)} ({slow:.2f}x){stall_note}; hung client: {touts} "
                 f"TIMEOUTs ({tmo} ms, {len(runs)} runs), {early} early, late by p99 {fmt_ns(p99)} / max "
                 f"{fmt_ns(worst)} (worst run){stuck}")
        goal = TARGETS["hung_clients"]
        on_time = p99 <= late_goal * 1e6 and early == 0
        self.target(8, f"{nc - 1} clients beside a {name} / none hung, IOPS per client (mean and slowest) on {dk}; "
                       f"hung client's TIMEOUTs on time",
                    hung["ratio"] >= goal and slow >= goal and not stalled and on_time,
                    f"mean {hung['ratio']:.2f}x, slowest {slow:.2f}x, {stalled} clients stalled; TIMEOUTs late by "
                    f"p99 {fmt_ns(p99)}, {early} early",
                    f">= {goal}x both, none stalled; p99 <= {late_goal} ms after the deadline, none early",
                    f"({fmt_range(hung['libdmio_runs'])} vs {fmt_range(hung['fio_runs'])} IOPS per client; "
                    f"max lateness {fmt_ns(worst)})")
        del hung["libdmio_all"], hung["fio_all"]
        hung["all_runs"] = {"timeouts": touts, "early": early, "late_p99_ns_worst": p99, "late_max_ns_worst": worst,
                            "slowest_client_iops": slow_h, "slowest_client_iops_none_hung": slow_n,
                            "slowest_ratio": slow, "stalled_clients_max": stalled, "stalled_reads": stalled_reads,
                            "late_p99_goal_ms": late_goal}
        return hung

    def case8(self):
        c = self.cfg
        log("\n== case 8: many clients in one process, sharing the engine threads")
        out = {}
        n = c["clients_n"]
        r = self.dmio("clients", f"clients n={n}", "--n", n, "--qd", 1, "--bs", 4096)
        cpus = r["cpus"]
        limit = 2 + 2 * cpus
        rss_goal = r["pools_kib"] + 16 * 1024
        both = r["create_s"] + r["destroy_s"]
        out["clients"] = r
        self.row(8, f"{n} clients (1 x 1 x 4 KiB each): threads / RSS / create + destroy", "-",
                 f"{r['threads_with']} threads, {r['rss_with_kib']} KiB, {both * 1e3:.0f} ms", "-", None,
                 f"pools {r['pools_kib']} KiB; RSS before {r['rss_before_kib']} KiB, after destroy "
                 f"{r['rss_after_kib']} KiB; create {r['create_s'] * 1e3:.1f} ms, destroy "
                 f"{r['destroy_s'] * 1e3:.1f} ms; threads after destroy {r['threads_after']}")
        self.target(8, f"{n} clients: threads", r["threads_with"] <= limit, f"{r['threads_with']}",
                    f"<= 2 + 2 x {cpus} CPUs = {limit}")
        self.target(8, f"{n} clients: RSS vs their pools + 16 MiB", r["rss_with_kib"] <= rss_goal,
                    f"{r['rss_with_kib']} KiB", f"<= {rss_goal} KiB")
        self.target(8, f"{n} clients: create + destroy", both < 0.1, f"{both * 1e3:.0f} ms", "< 100 ms")

        dk = self.fast()
        dev = self.devices[dk]["paths"][0]
        secs, warm = c["secs"], c["warmup"]
        nc, qd = c["multi_clients"], 4

        # The pairs whose two sides run alike (64 clients against one client, hung
        # against none hung, about 1.0x, target 0.95x or 0.9x) alternate four times as
        # often with runs half as long: this VM's speed drifts by +-20 % over seconds
        # (the CPU time per read with it), and more, shorter alternations average it
        # out where a few long runs do not.
        close_secs, close_rounds = secs / 2, 4 * c["rounds"]

        def multi(label, *extra, env=None, secs=secs):
            return self.dmio("multi", label, "--dev", dev, "--n", nc, "--qd", qd, "--bs", 4096,
                             "--secs", secs, "--warmup", warm, "--span", c["size"], *extra, env=env)

        label = f"{nc} clients QD{qd} {dk}"
        # 64 clients against one client at the same total depth: both in one process
        # (`dmio-bench alt`), alternating in 0.2 s phases, the usual time per side per run.
        alts = []
        for _ in range(c["rounds"]):
            self.quiet_start(8, label)
            t0 = time.time()
            a = self.dmio("alt", label, "--dev", dev, "--n", nc, "--qd", qd, "--bs", 4096,
                          "--secs", secs, "--warmup", warm, "--span", c["size"])
            alts.append(a)
            self.progress(8, label, "alt", f"{nc}xQD{qd} {fmt_iops(a['iops'])} / 1xQD{nc * qd} "
                          f"{fmt_iops(a['one_iops'])} IOPS = {a['ratio']:.3f}x over {a['pairs']} phase pairs "
                          f"(pairs {a['pair_ratio_min']:.2f}..{a['pair_ratio_max']:.2f})", t0)
        one = {"libdmio": mean([a["iops"] for a in alts]), "fio": mean([a["one_iops"] for a in alts]),
               "libdmio_runs": [a["iops"] for a in alts], "fio_runs": [a["one_iops"] for a in alts],
               "alt": alts}
        one["ratio"] = one["libdmio"] / one["fio"]
        vs_fio = self.pair(8, label, lambda: multi(label),
                           lambda: self.fio(label, [dev], "randread", 4096, qd, c["size"], secs, warm,
                                            numjobs=nc),
                           lambda x: x["iops"], names=(f"{nc}xQD{qd}", f"fio {nc}j"))
        out["multi"] = {"vs_one": one, "vs_fio": vs_fio}
        d = vs_fio["libdmio_detail"]
        self.row(8, f"4 KiB randread, {nc} clients x QD{qd} vs 1 client x QD{nc * qd} (IOPS)", dk,
                 fmt_iops(one["libdmio"]), fmt_iops(one["fio"]), one["ratio"],
                 f"the fio column is one libdmio client, in the same process, alternating in "
                 f"{alts[0]['phase_s']:.1f} s phases ({sum(a['pairs'] for a in alts)} pairs; single pairs "
                 f"{min(a['pair_ratio_min'] for a in alts):.2f}..{max(a['pair_ratio_max'] for a in alts):.2f}x); "
                 f"CPU per read {mean([a['us_per_request'] for a in alts]):.2f} vs "
                 f"{mean([a['one_us_per_request'] for a in alts]):.2f} us; per client (fio pair) "
                 f"{fmt_iops(d['iops_per_client_min'])}..{fmt_iops(d['iops_per_client_max'])}; {d['threads']} threads")
        self.row(8, f"4 KiB randread, {nc} clients x QD{qd} vs fio {nc} jobs x QD{qd} (IOPS)", dk,
                 fmt_iops(vs_fio["libdmio"]), fmt_iops(vs_fio["fio"]), vs_fio["ratio"])
        self.target(8, f"{nc} clients x QD{qd} / 1 client x QD{nc * qd} on {dk}", one["ratio"] >= 0.95,
                    f"{one['ratio']:.2f}x", ">= 0.95x",
                    f"({fmt_range(one['libdmio_runs'])} vs {fmt_range(one['fio_runs'])} IOPS)")
        self.target(8, f"{nc} clients x QD{qd} / fio {nc} jobs x QD{qd} on {dk}", vs_fio["ratio"] >= 0.95,
                    f"{vs_fio['ratio']:.2f}x", ">= 0.95x",
                    f"({fmt_range(vs_fio['libdmio_runs'])} vs {fmt_range(vs_fio['fio_runs'])} IOPS)")

        # One client hung: first by a fault rule holding its reads in the library, then on a
        # really hung device (its reads stuck in the kernel). Each ABBA against none hung.
        tmo = 10
        close = lambda *a, **k: multi(*a, **k, secs=close_secs)
        out["hung"] = self.hung_client(dk, nc, qd, tmo, close, close_rounds, fuse=False)
        out["hung_fuse"] = self.hung_client(dk, nc, qd, tmo, close, close_rounds, fuse=True)
        self.results["case8"] = out
