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

# This file holds the run (setup, the cases in order, noisy-machine retries,
# the output files) and the command line. The parts it is made of, mixins of
# the Bench class: fio_runner.py (running the driver, fio and the reference
# loop; ABBA pairs), devices.py (the disk files and RAM-backed loop devices),
# cases.py (cases 1-6), cpu_cases.py (case 7, CPU per IO), client_cases.py (case
# 8, many clients), container_cases.py (case 9, io_uring refused), report.py (table,
# targets, plot, README, metadata); common.py holds what they share.

import argparse
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import time

from cases import Cases
from client_cases import ClientCases
from container_cases import ContainerCases
from common import (FULL, HERE, ROOT, SMOKE, children_cpu, cpu_busy, log, machine_delta,
                    machine_snapshot)
from cpu_cases import CpuCases
from devices import Devices
from fio_runner import Runner
from report import Report


class Bench(Runner, Devices, Cases, CpuCases, ClientCases, ContainerCases, Report):
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
        self.cases = set(args.cases.split(",")) if args.cases else {str(i) for i in range(1, 10)}
        self.rows = []        # the results table
        self.targets = []     # PASS / FALLS SHORT lines
        self.results = {}     # everything, for the JSON file
        self.runs = 0
        self.t_start = time.time()
        self.devices = {}
        self.noisy_cases = []
        self.busy_starts = 0  # timed runs started on a busy machine (Runner.quiet_start)

    # ------------------------------------------------------------ plumbing

    def cleanup(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # keep cleaning up
                log(f"bench: cleanup: {e}")
        self.cleanups = []
        shutil.rmtree(self.tmp, ignore_errors=True)

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
        for i, fn in enumerate([self.case1, self.case2, self.case3, self.case4, self.case5, self.case6, self.case7,
                                  self.case8, self.case9], 1):
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
                                    noisy=noisy, noisy_cases=self.noisy_cases,
                                    busy_starts=self.busy_starts)
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
        full = not self.smoke and len(self.cases) == 9
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
