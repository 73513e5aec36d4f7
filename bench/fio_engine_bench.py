#!/usr/bin/env python3
"""fio over libdmio: the same fio job file run with ioengine=io_uring and with
ioengine=external:build/libdmio-fio.so, in the same run (fio-engine/README.md).

Cases, 4 KiB, O_DIRECT, time based, norandommap:
  randread QD1, QD32, QD128   on the RAM loop (root) and on a disk file
  mirror write QD32, 2 legs   io_uring writes both files in one job with 64
                              writes in flight (filename=a:b, as bench case 2);
                              the engine writes the file and one dmio_legs leg
                              in one dm_io per write, 32 in flight. Compared
                              as device writes per second.

The job file is written once per case; its [global] section is shared and
only the engine's lines differ (ioengine=, and for the mirror how the legs are
named). The two engines alternate A B B A (`rounds` times) and the table shows
medians; fio's own IOPS and mean completion latency are reported for both.
Writes JSON to the results directory. Informative: no target (issue 22 sets
none for this comparison).
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BS = 4096
MIB = 1 << 20


def job_file(tmp, name, engine, files, rw, qd, secs, ramp, size, legs=None):
    lines = ["[global]", "direct=1", "bs=%d" % BS, "norandommap", "randrepeat=0", "time_based",
             "runtime=%dms" % int(secs * 1000), "ramp_time=%dms" % int(ramp * 1000), "size=%d" % size,
             "group_reporting", "", "[%s]" % name, "rw=%s" % rw]
    if engine == "io_uring":
        lines += ["ioengine=io_uring", "filename=%s" % ":".join(files), "iodepth=%d" % (qd * len(files))]
        if len(files) > 1:
            lines += ["file_service_type=roundrobin"]
    else:
        lines += ["ioengine=external:%s" % engine, "filename=%s" % files[0], "iodepth=%d" % qd]
        if len(files) > 1:
            lines += ["dmio_legs=%s" % ":".join(files[1:])]
    path = os.path.join(tmp, "%s-%s.fio" % (name, "uring" if engine == "io_uring" else "dmio"))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def run(tmp, jobfile, secs):
    out = jobfile + ".json"
    p = subprocess.run(["fio", "--output-format=json", "--output=" + out, jobfile], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=secs + 120)
    text = open(out).read() if os.path.exists(out) else ""
    if p.returncode != 0 or "{" not in text:
        raise RuntimeError("fio failed: %s\n%s\n%s" % (jobfile, p.stdout[-1500:], text[-1500:]))
    # The engine prints its summary lines (dmio: ...) into fio's output before the JSON.
    dmio_lines = [ln for ln in text[:text.index("{")].splitlines() if ln.startswith("dmio:")]
    job = json.loads(text[text.index("{"):])["jobs"][0]
    d = job["read"] if job["read"]["io_bytes"] else job["write"]
    return {"iops": d["iops"], "clat_mean_us": d["clat_ns"]["mean"] / 1000.0, "dmio": dmio_lines}


def pair(rounds, a, b):
    va, vb = [], []
    for i in range(rounds):
        if i % 2 == 0:
            va.append(a())
            vb.append(b())
        else:
            vb.append(b())
            va.append(a())
    return va, vb


def fill(path, size):
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(os.urandom(MIB))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default=os.path.join(ROOT, "build", "libdmio-fio.so"))
    ap.add_argument("--smoke", action="store_true", help="tiny run: checks that every case runs")
    ap.add_argument("--out", help="results directory")
    ap.add_argument("--no-loop", action="store_true", help="no RAM loop device even as root")
    args = ap.parse_args()
    if not shutil.which("fio"):
        sys.exit("fio engine bench: fio is missing (make deps installs it)")
    if not os.path.exists(args.engine):
        sys.exit("fio engine bench: %s is missing (make fio-engine)" % args.engine)
    engine = os.path.abspath(args.engine)
    rounds, secs, ramp, size = (1, 0.3, 0.1, 32 * MIB) if args.smoke else (2, 3.0, 0.5, 256 * MIB)
    started = datetime.datetime.now(datetime.timezone.utc)
    tmp = tempfile.mkdtemp(prefix="dmio-fio-engine-bench-", dir="/var/tmp")
    loops, shm_files = [], []
    rows = []
    try:
        disk = [os.path.join(tmp, "disk-%d.img" % i) for i in range(2)]
        for p in disk:
            fill(p, size)
        devices = [("disk", disk)]
        if os.geteuid() == 0 and not args.no_loop and shutil.which("losetup"):
            try:
                for i in range(2):
                    p = "/dev/shm/dmio-fio-engine-bench-%d-%d.img" % (os.getpid(), i)
                    shm_files.append(p)
                    fill(p, size)
                    loops.append(subprocess.run(["losetup", "-f", "--show", "--direct-io=on", p],
                                                capture_output=True, text=True, check=True).stdout.strip())
                devices.insert(0, ("RAM loop", loops))
            except (subprocess.CalledProcessError, OSError) as e:
                print("fio engine bench: no RAM loop device (%s); disk only" % e)
        for devname, devs in devices:
            cases = [("randread", 1, devs[:1]), ("randread", 32, devs[:1]), ("randread", 128, devs[:1]),
                     ("randwrite", 32, devs[:2])]
            for rw, qd, files in cases:
                name = "%s-qd%d" % (rw, qd) if len(files) == 1 else "mirror2-qd%d" % qd
                ju = job_file(tmp, name, "io_uring", files, rw, qd, secs, ramp, size)
                jd = job_file(tmp, name, engine, files, rw, qd, secs, ramp, size)
                vd, vu = pair(rounds, lambda: run(tmp, jd, secs), lambda: run(tmp, ju, secs))
                # Device writes per second for the mirror: each engine request writes both legs.
                mult_d = len(files) if len(files) > 1 else 1
                d_iops = statistics.median(r["iops"] * mult_d for r in vd)
                u_iops = statistics.median(r["iops"] for r in vu)
                label = ("%s %s QD%d" % (devname, rw, qd)) if len(files) == 1 else \
                    "%s mirror write, 2 legs, QD%d (device writes/s)" % (devname, qd)
                row = {"case": label, "device": devname, "rw": rw, "qd": qd, "legs": len(files),
                       "dmio_engine": d_iops, "io_uring": u_iops, "ratio": d_iops / u_iops,
                       "dmio_runs": [r["iops"] * mult_d for r in vd], "io_uring_runs": [r["iops"] for r in vu],
                       "dmio_clat_mean_us": statistics.median(r["clat_mean_us"] for r in vd),
                       "io_uring_clat_mean_us": statistics.median(r["clat_mean_us"] for r in vu),
                       "dmio_summary": vd[-1]["dmio"]}
                rows.append(row)
                print("  %-52s libdmio-fio %8.0f / io_uring %8.0f = %.2fx  (clat %.1f / %.1f us)"
                      % (label, d_iops, u_iops, d_iops / u_iops, row["dmio_clat_mean_us"],
                         row["io_uring_clat_mean_us"]), flush=True)
    finally:
        for d in loops:
            subprocess.run(["losetup", "-d", d], check=False)
        for p in shm_files:
            if os.path.exists(p):
                os.unlink(p)
        shutil.rmtree(tmp, ignore_errors=True)
    print("fio over libdmio: the same job file, ioengine=external:libdmio-fio.so vs ioengine=io_uring, "
          "4 KiB, O_DIRECT, %d x %g s each (median; informative, no target)" % (rounds, secs))
    out = args.out or os.path.join(HERE, "results")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "fio-engine-%s.json" % started.strftime("%Y%m%d-%H%M%S"))
    with open(path, "w") as fh:
        json.dump({"started": started.isoformat(), "smoke": args.smoke, "rounds": rounds, "secs": secs,
                   "rows": rows}, fh, indent=1)
    print("fio engine bench: results in %s" % path)


if __name__ == "__main__":
    main()
