"""Case 8 of the benchmark: many clients in one process (issue 19, the
shared engine). 8a: 1,000 clients created and destroyed (threads, RSS
against their pools, time). 8b: 64 clients at QD4 on one device against one
client at QD256 and against fio with 64 jobs at QD4. 8c: the same 64 clients
with one client's device hung (a fault rule holding every read, deadline
10 ms): the other 63 keep their throughput, the hung client's TIMEOUTs come
on time. A mixin of bench.Bench."""

import os

from common import MIB, TARGETS, fmt_iops, fmt_ns, fmt_range, log


class ClientCases:
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

        def multi(label, *extra):
            return self.dmio("multi", label, "--dev", dev, "--n", nc, "--qd", qd, "--bs", 4096,
                             "--secs", secs, "--warmup", warm, "--span", c["size"], *extra)

        label = f"{nc} clients QD{qd} {dk}"
        one = self.pair(8, label, lambda: multi(label),
                        lambda: self.randread(label, dev, 4096, nc * qd),
                        lambda x: x["iops"], names=(f"{nc}xQD{qd}", f"1xQD{nc * qd}"))
        vs_fio = self.pair(8, label, lambda: multi(label),
                           lambda: self.fio(label, [dev], "randread", 4096, qd, c["size"], secs, warm,
                                            numjobs=nc),
                           lambda x: x["iops"], names=(f"{nc}xQD{qd}", f"fio {nc}j"))
        out["multi"] = {"vs_one": one, "vs_fio": vs_fio}
        d = one["libdmio_detail"]
        self.row(8, f"4 KiB randread, {nc} clients x QD{qd} vs 1 client x QD{nc * qd} (IOPS)", dk,
                 fmt_iops(one["libdmio"]), fmt_iops(one["fio"]), one["ratio"],
                 f"the fio column is one libdmio client; per client {fmt_iops(d['iops_per_client_min'])}"
                 f"..{fmt_iops(d['iops_per_client_max'])}; {d['threads']} threads")
        self.row(8, f"4 KiB randread, {nc} clients x QD{qd} vs fio {nc} jobs x QD{qd} (IOPS)", dk,
                 fmt_iops(vs_fio["libdmio"]), fmt_iops(vs_fio["fio"]), vs_fio["ratio"])
        self.target(8, f"{nc} clients x QD{qd} / 1 client x QD{nc * qd} on {dk}", one["ratio"] >= 0.95,
                    f"{one['ratio']:.2f}x", ">= 0.95x",
                    f"({fmt_range(one['libdmio_runs'])} vs {fmt_range(one['fio_runs'])} IOPS)")
        self.target(8, f"{nc} clients x QD{qd} / fio {nc} jobs x QD{qd} on {dk}", vs_fio["ratio"] >= 0.95,
                    f"{vs_fio['ratio']:.2f}x", ">= 0.95x",
                    f"({fmt_range(vs_fio['libdmio_runs'])} vs {fmt_range(vs_fio['fio_runs'])} IOPS)")

        hl = f"{nc} clients, 1 hung {dk}"
        tmo = 10
        per = lambda x: x["iops"] / (x["clients"] - x["hung"])
        hung = self.pair(8, hl, lambda: multi(hl, "--hung", 1, "--timeout", tmo), lambda: multi(hl),
                         per, names=("1 hung", "none"))
        out["hung"] = hung
        h = hung["libdmio_detail"]
        late = h["timeout_late_ns"]
        self.row(8, f"{nc} clients x QD{qd}, one client's device hung: IOPS per other client", dk,
                 fmt_iops(hung["libdmio"]), fmt_iops(hung["fio"]), hung["ratio"],
                 f"the fio column is the same {nc} clients with none hung; hung client: {h['timeouts']} "
                 f"TIMEOUTs ({tmo} ms), {h['early_timeouts']} early, late by p99 {fmt_ns(late['p99'])} / "
                 f"max {fmt_ns(late['max'])}")
        self.target(8, f"{nc - 1} clients beside a hung one / none hung, IOPS per client on {dk}",
                    hung["ratio"] >= 0.9, f"{hung['ratio']:.2f}x", ">= 0.9x",
                    f"(hung client's TIMEOUTs late by p99 {fmt_ns(late['p99'])})")
        self.results["case8"] = out
