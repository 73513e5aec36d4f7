#!/usr/bin/env python3
"""NBD devices: libdmio against fio's own nbd engine (libnbd), same server, same run.

nbdkit's memory plugin serves one export, over a unix socket and over TCP on
127.0.0.1. On it, 4 KiB random reads and writes at QD1 and QD32:

  libdmio   dmio-bench rand --dev nbd+unix:///?socket=...  (notify resubmits)
  fio       fio --ioengine=nbd --uri=...                   (libnbd)

Targets (issue "NBD devices", section 6): QD32 >= 1.2x fio, QD1 >= 1.0x fio.
Also, informative: a two-leg mirror write at QD32 with one local leg (a file
in /dev/shm) and one NBD leg, against fio writing the NBD leg alone.

Each pair alternates the contenders (A B B A, `rounds` times) and reports
medians. Writes JSON to the results directory and prints a table.
"""
import argparse
import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BS = 4096


class Server:
    """nbdkit memory SIZE on a unix socket or TCP 127.0.0.1, stopped on exit."""

    def __init__(self, tmp, transport, size):
        self.tmp, self.transport, self.size = tmp, transport, size

    def __enter__(self):
        if self.transport == "unix":
            self.sock = os.path.join(self.tmp, "nbd.sock")
            where = ["-U", self.sock]
            self.uri = "nbd+unix:///?socket=" + self.sock
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            where = ["-i", "127.0.0.1", "-p", str(port)]
            self.uri = "nbd://127.0.0.1:%d/" % port
        self.p = subprocess.Popen(["nbdkit", "-f", "--exit-with-parent"] + where + ["memory", str(self.size)],
                                  stderr=subprocess.DEVNULL)
        for _ in range(200):
            if self.up():
                return self
            time.sleep(0.05)
        raise RuntimeError("nbdkit did not start")

    def up(self):
        try:
            if self.transport == "unix":
                s = socket.socket(socket.AF_UNIX)
                s.connect(self.sock)
            else:
                s = socket.create_connection(("127.0.0.1", int(self.uri.split(":")[2].rstrip("/"))), 0.2)
            s.close()
            return True
        except OSError:
            return False

    def __exit__(self, *exc):
        self.p.kill()
        self.p.wait()


def fio(uri, rw, qd, secs, ramp, span, tmp):
    out = os.path.join(tmp, "fio.json")
    subprocess.run(["fio", "--name=b", "--thread", "--ioengine=nbd", "--uri=" + uri, "--rw=" + rw,
                    "--bs=%d" % BS, "--iodepth=%d" % qd, "--size=%d" % span, "--runtime=%g" % secs,
                    "--ramp_time=%g" % ramp, "--time_based", "--norandommap", "--randrepeat=0",
                    "--output-format=json", "--output=" + out],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=secs + 120)
    text = open(out).read()
    d = json.loads(text[text.index("{"):])["jobs"][0][rw[4:]]  # the nbd engine prints a line first
    return d["iops"]


def dmio(driver, devs, rw, qd, secs, ramp, span):
    cmd = [driver, "rand", "--label", "nbd"]
    for d in devs:
        cmd += ["--dev", d]
    cmd += ["--rw", rw[4:], "--bs", str(BS), "--qd", str(qd), "--secs", str(secs), "--warmup", str(ramp),
            "--span", str(span)]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=secs + 120)
    if p.returncode != 0:
        raise RuntimeError("dmio-bench failed: %s\n%s" % (" ".join(cmd), p.stdout[-800:]))
    return json.loads(p.stdout)["iops"]


def pair(rounds, a, b):
    """A B B A ..., medians."""
    va, vb = [], []
    for i in range(rounds):
        if i % 2 == 0:
            va.append(a())
            vb.append(b())
        else:
            vb.append(b())
            va.append(a())
    return statistics.median(va), statistics.median(vb), va, vb


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--driver", required=True, help="build/bench/dmio-bench")
    ap.add_argument("--smoke", action="store_true", help="tiny run: checks that every case runs")
    ap.add_argument("--out", help="results directory")
    ap.add_argument("--transport", choices=("unix", "tcp"), action="append",
                    help="only this transport (repeatable; default both)")
    ap.add_argument("--qd", type=int, choices=(1, 32), action="append",
                    help="only this queue depth (repeatable; default both)")
    ap.add_argument("--rw", choices=("randread", "randwrite"), action="append",
                    help="only this direction (repeatable; default both)")
    ap.add_argument("--rounds", type=int, help="rounds per pair (default 4, smoke 1)")
    ap.add_argument("--secs", type=float, help="seconds per run (default 4, smoke 0.5)")
    ap.add_argument("--no-mirror", action="store_true", help="skip the informative mirror case")
    args = ap.parse_args()
    for tool in ("nbdkit", "fio"):
        if not shutil.which(tool):
            sys.exit("nbd bench: %s is missing (make deps installs it)" % tool)
    rounds, secs, ramp, size = (1, 0.5, 0, 64 << 20) if args.smoke else (4, 4, 1, 1 << 30)
    rounds = args.rounds or rounds
    secs = args.secs or secs
    started = datetime.datetime.now(datetime.timezone.utc)
    tmp = tempfile.mkdtemp(prefix="dmio-nbd-bench-")
    rows, ok = [], True
    try:
        for transport in args.transport or ("unix", "tcp"):
            with Server(tmp, transport, size) as s:
                # Written once, so reads do not read holes.
                fio(s.uri, "randwrite", 32, 1 if args.smoke else 3, 0, size, tmp)
                for rw in args.rw or ("randread", "randwrite"):
                    for qd in args.qd or (1, 32):
                        d, f, dv, fv = pair(rounds,
                                            lambda: dmio(args.driver, [s.uri], rw, qd, secs, ramp, size),
                                            lambda: fio(s.uri, rw, qd, secs, ramp, size, tmp))
                        target = 1.2 if qd == 32 else 1.0
                        good = d / f >= target
                        ok &= good
                        rows.append({"case": "%s %s QD%d" % (transport, rw, qd), "libdmio": d, "fio": f,
                                     "ratio": d / f, "target": target, "pass": good, "libdmio_runs": dv,
                                     "fio_runs": fv})
                if transport == "unix" and not args.no_mirror:
                    local = os.path.join("/dev/shm", "dmio-nbd-bench-%d" % os.getpid())
                    with open(local, "wb") as fh:
                        fh.truncate(size)
                    try:
                        d, f, dv, fv = pair(rounds,
                                            lambda: dmio(args.driver, [local, s.uri], "randwrite", 32, secs,
                                                         ramp, size),
                                            lambda: fio(s.uri, "randwrite", 32, secs, ramp, size, tmp))
                    finally:
                        os.unlink(local)
                    rows.append({"case": "unix mirror write QD32 (local + NBD leg) vs fio on the NBD leg alone",
                                 "libdmio": d, "fio": f, "ratio": d / f, "target": None, "pass": True,
                                 "libdmio_runs": dv, "fio_runs": fv})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("NBD devices: libdmio vs fio --ioengine=nbd, nbdkit memory, 4 KiB, %d x %g s each (median)"
          % (rounds, secs))
    for r in rows:
        tgt = ("target >= %.1fx: %s" % (r["target"], "PASS" if r["pass"] else "FAIL")) if r["target"] \
            else "informative"
        print("  %-70s libdmio %8.0f / fio %8.0f IOPS = %.2fx (%s)" % (r["case"], r["libdmio"], r["fio"],
                                                                      r["ratio"], tgt))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "nbd-%s.json" % started.strftime("%Y%m%d-%H%M%S"))
    with open(path, "w") as fh:
        json.dump({"started": started.isoformat(), "smoke": args.smoke, "rounds": rounds, "secs": secs,
                   "rows": rows, "all_targets_passed": ok}, fh, indent=1)
    print("nbd bench: results in %s; targets %s" % (path, "all passed" if ok else "NOT all passed"))


if __name__ == "__main__":
    main()
