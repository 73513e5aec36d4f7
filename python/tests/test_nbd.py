"""NBD exports as devices (``Device("nbd://...")``) against servers written by
others, over TCP on 127.0.0.1 and over unix sockets: nbdkit (memory and file
plugins), qemu-nbd and nbd-server. Data written by libdmio is read back by
``nbdcopy`` (or from the export's backing file), and data put there by
others is read by libdmio. The servers are Debian packages (``make deps``
installs them); a missing one fails its test with its name."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

import dmio
from dmio import Op, State

from conftest import pattern

SIZE = 8 << 20
BYTES = 256 * 1024
WAIT = 10.0


def need(tool: str, package: str) -> None:
    assert shutil.which(tool), f"{tool} is not installed: apt-get install {package} (make deps does it)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(probe, what: str) -> None:
    t0 = time.monotonic()
    while not probe():
        assert time.monotonic() - t0 < 10, f"{what}: not listening after 10 s"
        time.sleep(0.02)


def tcp_up(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def unix_up(path: Path) -> bool:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(path))
        s.close()
        return True
    except OSError:
        return False


SERVERS = [
    ("nbdkit-memory", "unix"),
    ("nbdkit-memory", "tcp"),
    ("nbdkit-file", "unix"),
    ("nbdkit-file", "tcp"),
    ("qemu-nbd", "unix"),
    ("qemu-nbd", "tcp"),
    ("nbd-server", "unix"),
    ("nbd-server", "tcp"),
]


# nbd-server -d serves one connection: what others write to it is checked
# through its backing file in test_libdmio_writes_others_read.
COPY_IN = [p for p in SERVERS if p[0] != "nbd-server"]


def ids(ps):
    return [f"{s}-{t}" for s, t in ps]


@pytest.fixture
def export(request, tmp_path: Path) -> Iterator[Tuple[str, str, Path]]:
    """Starts a server; yields (URI, server name, backing file or None-like path)."""
    server, transport = request.param
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(SIZE)
    sock = tmp_path / "nbd.sock"
    port = free_port()
    procs: List[subprocess.Popen] = []
    if server.startswith("nbdkit"):
        need("nbdkit", "nbdkit")
        where = ["-U", str(sock)] if transport == "unix" else ["-i", "127.0.0.1", "-p", str(port)]
        plugin = ["memory", str(SIZE)] if server == "nbdkit-memory" else ["file", str(img)]
        procs.append(subprocess.Popen(["nbdkit", "-f", "--exit-with-parent", *where, *plugin]))
        export_name = ""
    elif server == "qemu-nbd":
        need("qemu-nbd", "qemu-utils")
        where = ["-k", str(sock)] if transport == "unix" else ["-b", "127.0.0.1", "-p", str(port)]
        procs.append(
            subprocess.Popen(
                ["qemu-nbd", *where, "-f", "raw", "-x", "disk", "--persistent", "--shared=8", str(img)]
            )
        )
        export_name = "disk"
    else:
        need("nbd-server", "nbd-server")
        conf = tmp_path / "config"
        if transport == "unix":
            generic = f"unixsock = {sock}\n"
        else:
            generic = f"listenaddr = 127.0.0.1\nport = {port}\n"
        conf.write_text(f"[generic]\n{generic}[disk]\nexportname = {img}\nflush = true\nfua = true\n")
        # -d: one connection, in the foreground; the check reads the file.
        procs.append(subprocess.Popen(["nbd-server", "-d", "-C", str(conf)]))
        export_name = "disk"
    if transport == "unix":
        if server == "nbd-server":
            wait_listening(sock.exists, server)
        else:
            wait_listening(lambda: unix_up(sock), server)
        uri = f"nbd+unix:///{export_name}?socket={sock}"
    else:
        if server == "nbd-server":
            # A probe would use up its one connection: wait for the port in
            # /proc/net/tcp instead.
            wait_listening(lambda: f":{port:04X} 00000000:0000 0A" in Path("/proc/net/tcp").read_text(), server)
        else:
            wait_listening(lambda: tcp_up(port), server)
        uri = f"nbd://127.0.0.1:{port}/{export_name}"
    try:
        yield uri, server, img
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.parametrize("export", SERVERS, ids=ids(SERVERS), indirect=True)
def test_libdmio_writes_others_read(export, tmp_path: Path) -> None:
    uri, server, img = export
    data = pattern(BYTES, 7)
    with dmio.Client(2, 4, 64 * 1024) as cl, dmio.Device(uri) as dev:
        assert dev.sectors == SIZE // 512
        req = cl.io(Op.WRITE, [(dev, 2048, BYTES // 512)], data, timeout_ms=5000)
        assert req.wait(WAIT)
        assert [s.state for s in req.result()] == [State.OK]
        assert cl.read(dev, 2048, BYTES // 512) == data
        # What others wrote: the file under the export (file-backed
        # servers), read by libdmio.
        if server != "nbdkit-memory":
            other = pattern(4096, 9)
            with open(img, "r+b") as f:
                f.seek(SIZE - 4096)
                f.write(other)
                f.flush()
            assert cl.read(dev, (SIZE - 4096) // 512, 8) == other
    if server == "nbd-server":
        with open(img, "rb") as f:
            f.seek(2048 * 512)
            assert f.read(BYTES) == data
        return
    need("nbdcopy", "libnbd-bin")
    out = tmp_path / "copy.img"
    subprocess.run(["nbdcopy", uri, str(out)], check=True, timeout=60)
    with open(out, "rb") as f:
        f.seek(2048 * 512)
        assert f.read(BYTES) == data


@pytest.mark.parametrize("export", COPY_IN, ids=ids(COPY_IN), indirect=True)
def test_others_write_libdmio_reads(export, tmp_path: Path) -> None:
    uri, server, img = export
    need("nbdcopy", "libnbd-bin")
    src = tmp_path / "src.img"
    data = pattern(SIZE, 11)
    src.write_bytes(data)
    subprocess.run(["nbdcopy", str(src), uri], check=True, timeout=60)
    with dmio.Client(1, 4, 1 << 20) as cl, dmio.Device(uri, read_only=True) as dev:
        got = cl.read(dev, 0, SIZE // 512)
    assert got == data
