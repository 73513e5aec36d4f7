"""What every part of the benchmark shares: paths, the run configurations
(FULL and SMOKE), the targets, progress output, number formatting, and the
counters that tell how busy the machine was during a case."""

import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MIB = 1 << 20
TTY = sys.stdout.isatty()

FULL = dict(
    secs=4.0, warmup=0.5, rounds=2, size=256 * MIB, qds=[1, 32, 128],
    big_bs=128 * 1024, big_qd=8,
    timeouts_n=10000, timeout_ms=200, timeout_spread=800, burst_timeout=500,
    mirror_n=10000, mirror_timeout=10, healthy_n=30000, waitall_secs=2.0,
    hedge_secs=3.0, memory_n=1000000, cg_counts=(5000, 25000), probe_secs=30,
    profile_secs=3.0, clients_n=1000, multi_clients=64,
)
SMOKE = dict(
    secs=0.3, warmup=0.1, rounds=1, size=32 * MIB, qds=[1, 32, 128],
    big_bs=128 * 1024, big_qd=8,
    timeouts_n=1000, timeout_ms=50, timeout_spread=100, burst_timeout=100,
    mirror_n=500, mirror_timeout=10, healthy_n=1000, waitall_secs=0.3,
    hedge_secs=0.3, memory_n=20000, cg_counts=(300, 1300), probe_secs=10,
    profile_secs=0, clients_n=1000, multi_clients=64,
)

TARGETS = {
    "qd32": 0.95,       # case 1: >= 0.95x fio IOPS at QD32
    "qd1": 0.95,        # case 1: >= 0.95x fio IOPS at QD1, library pages, pinned and not (issue 22)
    "qd1_own": 0.85,    # case 1: >= 0.85x fio IOPS at QD1, the caller's own buffer (one copy)
    "mirror": 0.90,     # case 2: >= 0.90x fio aggregate
    "bounce": 0.90,     # case 3: bounce >= 0.90x zero-copy (libdmio's own DM_IO_ZERO_COPY)
    "timer_p99_ms": 1.0,  # case 4: p99 of (notify - deadline) <= 1 ms
    "mirror_slack_ms": 2.0,  # case 5: p99.9 <= timeout + 2 ms
    "cpu": 1.0,         # case 7: <= 1.0x fio instructions per IO (issue 22)
    "aio": 0.90,        # case 9: io_uring refused, AIO engine >= 0.90x fio libaio
    "threads": 0.85,    # case 9: thread-pool engine >= 0.85x fio psync, 32 threads
    "hung_clients": 0.90,  # case 8: the others beside a hung client >= 0.90x of none hung
    "hung_late_p99_ms": 2.0,  # case 8: ... and the hung client's TIMEOUTs late by p99 <= 2 ms, none early
}


def log(msg=""):
    print(msg, flush=True)


def status(msg):
    """A transient line on a terminal (overwritten by the next output)."""
    if TTY:
        sys.stdout.write("\r\033[K" + msg)
        sys.stdout.flush()


def clear_status():
    if TTY:
        sys.stdout.write("\r\033[K")
        sys.stdout.flush()


def fmt_iops(v):
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def fmt_range(xs, fmt=fmt_iops):
    """The lowest and highest of several runs' values, as "low-high"."""
    return f"{fmt(min(xs))}-{fmt(max(xs))}"


def fmt_ns(v):
    if v is None:
        return "-"
    if v >= 1e9:
        return f"{v / 1e9:.2f} s"
    if v >= 1e6:
        return f"{v / 1e6:.2f} ms"
    return f"{v / 1e3:.0f} us"


def cpu_busy():
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def settle(max_s=20.0, window_s=0.25, busy_below=0.10):
    """Waits until the machine is quiet: one `window_s` window in which all CPUs together
    were busy less than `busy_below` of the time (0.10 on 2 CPUs = 0.2 of one CPU), for at
    most `max_s`. The kernel tears io_uring rings down in `iou_exit` workers after their
    process exits; a timed run that starts while hundreds are being torn down measures them
    too. Dirty page cache is written back first (`sync`): a build that ran just before
    would otherwise be flushed by the kernel's writeback workers (ext4's unwritten-extent
    conversion included) up to 30 s later, in the middle of a timed run. Returns (seconds
    waited, quiet?)."""
    t0 = time.time()
    os.sync()
    while True:
        b0, t_0 = cpu_busy()
        time.sleep(window_s)
        b1, t_1 = cpu_busy()
        frac = (b1 - b0) / max(t_1 - t_0, 1)
        if frac < busy_below:
            return time.time() - t0, True
        if time.time() - t0 >= max_s:
            return time.time() - t0, False


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def kthreads_cpu():
    """CPU seconds per kernel thread (kworkers doing our loop IO, ksoftirqd...)."""
    hz = os.sysconf("SC_CLK_TCK")
    tot = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if pid == "2" or st[1] == "2":  # kthreadd and its children
            tot[pid] = (int(st[11]) + int(st[12])) / hz
    return tot


def machine_snapshot():
    """Counters to tell how much CPU other users took while a case ran."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return {"t": time.time(), "tasks": (v[0] + v[1] + v[2]) / hz, "irq": (v[5] + v[6]) / hz,
            "steal": (v[7] if len(v) > 7 else 0) / hz, "kthreads": kthreads_cpu(), "ours": children_cpu()}


def machine_delta(a, b):
    """Average cores over the interval: ours, kernel threads, others (user processes not ours), steal."""
    wall = max(b["t"] - a["t"], 1e-3)
    d = {k: (b[k] - a[k]) / wall for k in ("tasks", "irq", "steal", "ours")}
    # Per thread, so that a kworker exiting meanwhile does not count negative.
    d["kthreads"] = sum(max(0.0, v - a["kthreads"].get(pid, 0.0)) for pid, v in b["kthreads"].items()) / wall
    d["others"] = max(0.0, d["tasks"] - d["kthreads"] - d["ours"])
    d["wall"] = wall
    return d
