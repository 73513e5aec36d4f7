#!/usr/bin/env python3
"""Interleaved A/B of two library builds against fio, 4 KiB random reads.

    ab_libs.py --dev /dev/loopN --a DIR_A --b DIR_B [--c DIR_C] [--rounds 4] [--secs 3] [--out F.json]

DIR_A and DIR_B each hold a build's `libdmio.so.0`; build/bench/dmio-bench runs
with LD_LIBRARY_PATH set to each (it has a RUNPATH, which LD_LIBRARY_PATH
overrides). Each round runs every configuration (QD1 own buffer / library pages,
unpinned and pinned to the last CPU; QD32 own buffer and library pages) as
A, B(, C), fio in one round and in the reverse order in the next, so slow drifts of the VM's
CPU speed hit every side alike. Prints per-run IOPS and CPU per IO (libdmio:
the driver's getrusage; fio: its usr/sys CPU share), and the means. Run it
under `flock -x /tmp/dmio-cpu.lock`.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "build", "bench", "dmio-bench")
SPAN = 256 << 20


def pinned(cmd, pin):
    return cmd if pin is None else ["taskset", "-c", str(pin)] + cmd


def dmio(lib, dev, qd, pages, pin, secs, warmup):
    cmd = [DRIVER, "rand", "--dev", dev, "--rw", "read", "--bs", "4096", "--qd", str(qd),
           "--secs", str(secs), "--warmup", str(warmup), "--span", str(SPAN)] + (["--pages"] if pages else [])
    env = dict(os.environ, LD_LIBRARY_PATH=lib)
    p = subprocess.run(pinned(cmd, pin), env=env, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        sys.exit("dmio-bench failed: %s\n%s" % (p.stdout[-500:], p.stderr[-500:]))
    r = json.loads(p.stdout)
    return r["iops"], r["cpu"]["us_per_request"]


def fio(dev, qd, pin, secs, warmup):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = ["fio", "--name=ab", "--filename=" + dev, "--ioengine=io_uring", "--direct=1", "--rw=randread",
               "--bs=4096", "--iodepth=%d" % qd, "--norandommap", "--randrepeat=0", "--size=%d" % SPAN,
               "--time_based", "--runtime=%dms" % (secs * 1000), "--ramp_time=%dms" % (warmup * 1000),
               "--output-format=json", "--output=" + f.name]
        subprocess.run(pinned(cmd, pin), check=True, stdout=subprocess.DEVNULL, timeout=120)
        j = json.load(open(f.name))["jobs"][0]
    iops = j["read"]["iops"]
    cpu = (j["usr_cpu"] + j["sys_cpu"]) / 100.0  # of one CPU
    return iops, cpu * 1e6 / iops if iops else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dev", required=True)
    ap.add_argument("--a", required=True, help="directory of build A's libdmio.so.0")
    ap.add_argument("--b", required=True, help="directory of build B's libdmio.so.0")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--secs", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--c", help="directory of a third build, C (optional)")
    ap.add_argument("--configs", default="qd1_own,qd1_pages,qd1_own_pinned,qd1_pages_pinned,qd32_pages,qd32_own")
    ap.add_argument("--out")
    args = ap.parse_args()
    cpu = (os.cpu_count() or 1) - 1
    configs = {
        "qd1_own": (1, False, None), "qd1_pages": (1, True, None),
        "qd1_own_pinned": (1, False, cpu), "qd1_pages_pinned": (1, True, cpu),
        "qd32_pages": (32, True, None), "qd32_own": (32, False, None),
    }
    names = args.configs.split(",")
    libs = {"A": args.a, "B": args.b}
    if args.c:
        libs["C"] = args.c
    sides = list(libs) + ["fio"]
    res = {n: {w: [] for w in sides} for n in names}
    for rnd in range(args.rounds):
        for n in names:
            qd, pages, pin = configs[n]
            order = sides if rnd % 2 == 0 else sides[::-1]
            for who in order:
                if who == "fio":
                    v = fio(args.dev, qd, pin, args.secs, args.warmup)
                else:
                    v = dmio(libs[who], args.dev, qd, pages, pin, args.secs, args.warmup)
                res[n][who].append(v)
                print("round %d %-17s %-3s %9.0f IOPS %6.2f us CPU/IO" % (rnd, n, who, v[0], v[1]), flush=True)
    print()
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
    summary = {}
    for n in names:
        m = {w: (mean([x[0] for x in res[n][w]]), mean([x[1] for x in res[n][w]])) for w in sides}
        f = m["fio"][0] or 1.0
        summary[n] = s = {"fio_iops": m["fio"][0], "fio_cpu_us": m["fio"][1]}
        line = "%-17s" % n
        for w in libs:
            s[w + "_iops"], s[w + "_ratio"], s[w + "_cpu_us"] = m[w][0], m[w][0] / f, m[w][1]
            line += "  %s %8.0f (%.2fx, %.2f us CPU/IO)" % (w, m[w][0], m[w][0] / f, m[w][1])
        print(line + "  fio %8.0f (%.2f us)" % (m["fio"][0], m["fio"][1]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": res, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
