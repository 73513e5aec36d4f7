#!/usr/bin/env python3
"""The nbdkit plugin against nbdkit's own file plugin, side by side in one run.

fio's nbd engine (4 KiB random IO, QD32, over a unix socket) runs the same
job through `nbdkit file` and through `nbdkit dmio` on the same files:

  case N1  one leg, random read and random write:   dmio / file >= 0.90x
  case N2  two legs, random write:                  2 legs / 1 leg >= 0.80x
  case N3  two legs, leg 1 hung (writes held), deadline 10 ms:
           client write p99.9 <= deadline + 2 ms

Each measurement alternates the contenders (A B A B ...) and reports the
median. Devices: a tmpfs file (both plugins use the page cache) and a file
on the disk (/var/tmp: the dmio plugin uses O_DIRECT, nbdkit file the page
cache, so the disk row shows what a mirror costs there, not a like-for-like
ratio). Writes results as JSON (--out) and prints a table.
"""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

QD = 32
BS = 4096


class Server:
    """nbdkit on a unix socket in `tmp`, stopped on exit of the with-block."""

    def __init__(self, tmp, args):
        self.tmp, self.args = tmp, args
        self.sock = os.path.join(tmp, "bench.sock")
        self.pidfile = os.path.join(tmp, "bench.pid")

    def __enter__(self):
        for f in (self.sock, self.pidfile):
            if os.path.exists(f):
                os.unlink(f)
        subprocess.run(["nbdkit", "-U", self.sock, "-P", self.pidfile] + self.args, check=True,
                       stderr=open(os.path.join(self.tmp, "nbdkit.log"), "a"))
        for _ in range(100):
            if os.path.exists(self.sock) and os.path.exists(self.pidfile):
                break
            time.sleep(0.05)
        self.pid = int(open(self.pidfile).read())
        return self

    def __exit__(self, *exc):
        try:
            os.kill(self.pid, 15)
        except ProcessLookupError:
            return
        for _ in range(200):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(self.pid, 9)

    @property
    def uri(self):
        return "nbd+unix:///?socket=" + self.sock


RAMP = 1


def fio(uri, rw, secs, size, tmp):
    """One fio nbd job; returns (IOPS, p99.9 completion latency in ms)."""
    out = os.path.join(tmp, "fio.json")
    subprocess.run(["fio", "--name=b", "--thread", "--ioengine=nbd", "--uri=" + uri, "--rw=" + rw,
                    "--bs=%d" % BS, "--iodepth=%d" % QD, "--size=%d" % size, "--runtime=%g" % secs,
                    "--ramp_time=%d" % RAMP, "--time_based", "--output-format=json", "--output=" + out],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=secs + 60)
    text = open(out).read()
    d = json.loads(text[text.index("{"):])["jobs"][0][rw[4:]]  # the nbd engine prints a line first
    return d["iops"], d["clat_ns"]["percentile"]["99.900000"] / 1e6


def wait_in_sync(status, secs=120):
    for _ in range(secs * 10):
        try:
            s = json.load(open(status))
            if all(l["state"] == "in_sync" for l in s["legs"]):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError("legs not in sync after %d s" % secs)


CASES = ("n1r", "n1w", "n2", "n3")


def run_device(name, directory, plugin, rounds, secs, size, cases=CASES):
    tmp = tempfile.mkdtemp(prefix="dmio-nbdkit-bench-", dir=directory)
    try:
        a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        with open(a, "wb") as f:
            f.write(os.urandom(size))
        shutil.copyfile(a, b)
        # On the disk, O_DIRECT writes over pages still dirty from the files'
        # creation write those back first (one leg ran at 7.7k instead of 33k
        # writes/s): the rows start with the files on the disk.
        os.sync()
        st = os.path.join(tmp, "st.json")
        file_srv = ["file", "file=" + a]
        dmio1 = [plugin, "leg=" + a, "timeout=100"]
        dmio2 = [plugin, "leg=" + a, "leg=" + b, "timeout=100", "resync-rate=0", "status=" + st]
        res = {"device": name, "dir": directory}

        def one(args, rw, sync=False):
            with Server(tmp, args) as s:
                if sync:
                    wait_in_sync(st)
                return fio(s.uri, rw, secs, size, tmp)

        def alternate(contenders, rw):
            # A B A B: the contenders alternate, rounds times.
            vals = [[] for _ in contenders]
            for _ in range(rounds):
                for k, (args, sync) in enumerate(contenders):
                    vals[k].append(one(args, rw, sync))
            return [(statistics.median(v[0] for v in vs), vs) for vs in vals]

        for case, rw in (("n1r", "randread"), ("n1w", "randwrite")):
            if case not in cases:
                continue
            (fi, f_vals), (di, d_vals) = alternate([(file_srv, False), (dmio1, False)], rw)
            res["n1_" + rw] = {"file_iops": fi, "dmio_iops": di, "ratio": di / fi,
                               "file_runs": f_vals, "dmio_runs": d_vals}
        if "n2" in cases:
            if "n1_randwrite" in res:
                vals = [one(dmio2, "randwrite", True) for _ in range(rounds)]
                w2, w1 = statistics.median(v[0] for v in vals), res["n1_randwrite"]["dmio_iops"]
            else:  # no N1 write rows to compare with: one leg and two legs alternate
                (w1, v1), (w2, vals) = alternate([(dmio1, False), (dmio2, True)], "randwrite")
                res.setdefault("runs", {})["dmio1_randwrite"] = v1
            res.setdefault("runs", {})["dmio2_randwrite"] = vals
            res["n2"] = {"two_legs_iops": w2, "one_leg_iops": w1, "ratio": w2 / w1}
        if "n3" in cases:
            hung = [plugin, "leg=" + a, "leg=" + b, "timeout=10", "resync-rate=0", "fail-after=600000",
                    "status=" + st, "fault=1:hang writes"]
            vals = [one(hung, "randwrite") for _ in range(rounds)]
            res.setdefault("runs", {})["dmio2_hung_randwrite"] = vals
            res["n3"] = {"deadline_ms": 10, "p999_ms": statistics.median(v[1] for v in vals)}
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny run: checks that every case runs")
    ap.add_argument("--out", help="results directory")
    ap.add_argument("--cases", default=",".join(CASES),
                    help="comma-separated subset of %s (default: all; n2 alone alternates one and two legs)"
                    % ",".join(CASES))
    ap.add_argument("--devices", default="tmpfs,disk", help="comma-separated subset of tmpfs,disk")
    ap.add_argument("--rounds", type=int, help="rounds per contender (default 3, smoke 1)")
    ap.add_argument("--secs", type=float, help="seconds per fio run (default 5, smoke 1)")
    args = ap.parse_args()
    cases = args.cases.split(",")
    if not cases or any(c not in CASES for c in cases):
        sys.exit("nbdkit bench: --cases takes a comma-separated subset of " + ",".join(CASES))
    for tool in ("nbdkit", "fio"):
        if not shutil.which(tool):
            sys.exit("nbdkit bench: %s is missing (make deps installs it)" % tool)
    global RAMP
    rounds, secs, size = (1, 1, 16 << 20) if args.smoke else (3, 5, 256 << 20)
    rounds = args.rounds or rounds
    secs = args.secs or secs
    devices = {"tmpfs": ("RAM (tmpfs)", "/dev/shm"), "disk": ("disk", os.environ.get("DMIO_BENCH_DIR", "/var/tmp"))}
    wanted = args.devices.split(",")
    if any(d not in devices for d in wanted):
        sys.exit("nbdkit bench: --devices takes a comma-separated subset of tmpfs,disk")
    if args.smoke:
        RAMP, wanted = 0, wanted[:1]
    started = datetime.datetime.now(datetime.timezone.utc)
    results = [run_device(*devices[d], args.plugin, rounds, secs, size, cases) for d in wanted]
    print("nbdkit plugin vs nbdkit file, fio nbd engine, 4 KiB QD%d, %d x %g s each (median)" % (QD, rounds, secs))
    ok = True
    for r in results:
        for rw in ("randread", "randwrite"):
            if "n1_" + rw not in r:
                continue
            n1 = r["n1_" + rw]
            good = n1["ratio"] >= 0.90
            ok &= good or r["device"] == "disk"
            print("  N1 %-12s %-9s dmio %7.0f / file %7.0f IOPS = %.2fx (target >= 0.90x%s)" % (
                r["device"], rw, n1["dmio_iops"], n1["file_iops"], n1["ratio"],
                ": PASS" if good else (": FAIL" if r["device"] != "disk" else ", informative")))
        n2 = r.get("n2")
        if n2:
            ok &= n2["ratio"] >= 0.80
            print("  N2 %-12s 2 legs %7.0f / 1 leg %7.0f write IOPS = %.2fx (target >= 0.80x: %s)" % (
                r["device"], n2["two_legs_iops"], n2["one_leg_iops"], n2["ratio"],
                "PASS" if n2["ratio"] >= 0.80 else "FAIL"))
        n3 = r.get("n3")
        if n3:
            good = n3["p999_ms"] <= n3["deadline_ms"] + 2
            ok &= good
            print("  N3 %-12s leg 1 hung: write p99.9 %.2f ms (target <= %d + 2 ms: %s)" % (
                r["device"], n3["p999_ms"], n3["deadline_ms"], "PASS" if good else "FAIL"))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "nbdkit-%s.json" % started.strftime("%Y%m%d-%H%M%S"))
    with open(path, "w") as f:
        json.dump({"started": started.isoformat(), "smoke": args.smoke, "rounds": rounds, "secs": secs,
                   "cases": cases, "commit": commit(),
                   "results": results, "all_targets_passed": ok}, f, indent=1)
    print("nbdkit bench: results in %s; targets %s" % (path, "all passed" if ok else "NOT all passed"))
    # A smoke run only proves the cases run; the targets are for the full run.


if __name__ == "__main__":
    main()
