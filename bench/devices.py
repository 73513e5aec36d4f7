"""The devices the cases run on: files of random data on the project's disk
and, as root, loop devices over files in /dev/shm (the RAM-backed "shm"
device; the disk files stand in when there are none). A mixin of
bench.Bench."""

import os
import shutil
import subprocess

from common import MIB, clear_status, log, status


class Devices:
    def fill(self, path, size):
        with open(path, "wb") as f:
            for _ in range(size // MIB):
                f.write(os.urandom(MIB))
            f.flush()
            os.fsync(f.fileno())

    def setup_devices(self):
        size = self.cfg["size"]
        tag = f"{size // MIB}M"
        disk = []
        for i in range(3):
            p = os.path.join(self.data, f"disk-{tag}-{i}.img")
            if not os.path.exists(p) or os.path.getsize(p) != size:
                status(f"  writing {p} ({size // MIB} MiB of random data)")
                self.fill(p, size)
            disk.append(p)
        clear_status()
        # findmnt names ext4 as such (statfs's magic says only "ext2/ext3").
        fs = (subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", self.data], capture_output=True,
                             text=True).stdout.strip() if shutil.which("findmnt") else "") or \
            subprocess.run(["stat", "-f", "-c", "%T", self.data], capture_output=True, text=True).stdout.strip()
        src = subprocess.run(["df", "--output=source", self.data], capture_output=True, text=True).stdout.split()[-1]
        self.devices["disk"] = {"kind": "disk-file", "paths": disk,
                                "desc": f"files on the project's disk ({src}, {fs}), O_DIRECT"}
        why = None
        if self.args.no_loop:
            why = "--no-loop"
        elif os.geteuid() != 0:
            why = "not root"
        elif not shutil.which("losetup"):
            why = "no losetup"
        elif not os.path.isdir("/dev/shm"):
            why = "no /dev/shm"
        loops = []
        if why is None:
            try:
                for i in range(3):
                    p = f"/dev/shm/dmio-bench-{os.getpid()}-{i}.img"
                    self.cleanups.append(lambda p=p: os.path.exists(p) and os.unlink(p))
                    status(f"  writing {p}")
                    self.fill(p, size)
                    dev = subprocess.run(["losetup", "-f", "--show", "--direct-io=on", p],
                                         capture_output=True, text=True, check=True).stdout.strip()
                    self.cleanups.append(lambda d=dev: subprocess.run(["losetup", "-d", d], check=True))
                    loops.append(dev)
                clear_status()
            except (subprocess.CalledProcessError, OSError) as e:
                why = f"losetup failed: {getattr(e, 'stderr', '') or e}".strip()
        if why is None:
            dio = []
            for d in loops:
                try:
                    with open(f"/sys/block/{os.path.basename(d)}/loop/dio") as f:
                        dio.append(f.read().strip() == "1")
                except OSError:
                    dio.append(False)
            self.devices["shm"] = {"kind": "shm-loop", "paths": loops,
                                   "desc": f"loop devices ({', '.join(loops)}) over files in /dev/shm, "
                                           f"loop direct IO {'on' if all(dio) else 'off'}, O_DIRECT"}
        else:
            self.devices["shm"] = dict(self.devices["disk"])
            self.devices["shm"]["desc"] += f" (no loop device over /dev/shm: {why})"
            self.devices["shm"]["fallback"] = True
        for k, v in self.devices.items():
            log(f"  device {k}: {v['desc']}")

    def fast(self):
        """The RAM-backed device, or the disk files when there is none."""
        return "disk" if self.devices["shm"].get("fallback") else "shm"
