"""Context managers, Buffer, and the low-level ABI mirror and library loading."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dmio
from dmio import Op, State, ffi

from conftest import pattern

REPO = Path(__file__).resolve().parents[2]


def test_context_managers_close(make_file) -> None:
    path = make_file("dev")
    with dmio.Client(2) as cl, dmio.Device(path, faults="hang") as dev:
        assert not cl.closed and not dev.closed
        assert dev.sectors == 2048 and dev.size == 1 << 20 and dev.block_size in (512, 1024, 2048, 4096)
        req = cl.io(Op.READ, [(dev, 0, 8)])
    # Leaving the block destroyed the client: the hung read ended CANCELLED
    # (ESHUTDOWN), notified before close() returned.
    assert cl.closed and dev.closed
    assert req.done and req.states[0].state is State.CANCELLED
    assert req.states[0].errno == errno.ESHUTDOWN
    with pytest.raises(dmio.Error) as ei:
        req.result()
    assert ei.value.errno == errno.ESHUTDOWN
    assert req.cancel() == 0
    for call in (lambda: cl.stats(), lambda: cl.read(dev, 0, 8), lambda: dev.sectors, lambda: dev.set_faults("")):
        with pytest.raises(ValueError):
            call()
    cl.close()
    dev.close()  # idempotent
    # A new client still works on the file.
    with dmio.Client(1) as cl2, dmio.Device(path, buffered=True) as d2:
        assert not d2.is_direct
        cl2.write(d2, 0, b"k" * 512)
        assert cl2.read(d2, 0, 1) == b"k" * 512
    with dmio.Device(path, read_only=True) as ro:
        assert ro.read_only


def test_device_from_fd(make_file) -> None:
    path = make_file("fd")
    fd = os.open(path, os.O_RDWR)
    try:
        with dmio.Client(1) as cl, dmio.Device.from_fd(fd) as dev:
            cl.write(dev, 8, b"f" * 1024)
            assert cl.read(dev, 8, 2) == b"f" * 1024
    finally:
        os.close(fd)


def test_bad_client_arguments() -> None:
    with pytest.raises(dmio.Error) as ei:
        dmio.Client(0)
    assert ei.value.errno == errno.EINVAL and "devices" in ei.value.strerror
    with pytest.raises(ValueError):
        dmio.Client(1, 1, -1)


def test_buffer() -> None:
    buf = dmio.Buffer(3 * 4096)
    assert isinstance(buf, mmap.mmap) and len(buf) == 3 * 4096
    assert buf.address % dmio.PAGE_SIZE == 0
    assert bytes(buf) == bytes(3 * 4096)
    mv = memoryview(buf)
    mv[4096:4100] = b"abcd"
    assert buf[4096:4100] == b"abcd" and bytes(buf)[4096:4100] == b"abcd"
    buf.fill(0xEE)
    assert bytes(mv[:2]) == b"\xee\xee"
    mv.release()
    b2 = dmio.Buffer.from_bytes(b"hello" * 100)
    assert len(b2) == 500 and bytes(b2) == b"hello" * 100
    with pytest.raises(ValueError):
        dmio.Buffer(0)
    buf.close()


def test_io_through_memoryview_slices(client: dmio.Client, open_device) -> None:
    dev = open_device("dev")
    buf = dmio.Buffer(4 * 4096)
    data = pattern(4096, 3)
    buf[4096:8192] = data
    client.io(Op.WRITE, [(dev, 8, 8)], memoryview(buf)[4096:8192]).result(10)
    out = dmio.Buffer(4 * 4096)
    client.io(Op.READ, [(dev, 8, 8)], memoryview(out)[8192:]).result(10)
    assert bytes(out[8192:12288]) == data and bytes(out[:8192]) == bytes(8192)
    # While a request uses a Buffer it cannot be closed.
    dev.set_faults("hang")
    req = client.io(Op.READ, [(dev, 8, 8)], out)
    with pytest.raises(BufferError):
        out.close()
    req.cancel()
    req.wait(10)
    out.close()


def test_struct_layout_matches_abi() -> None:
    # The numbers c-tests/abi_layout.c pins for 64-bit Linux.
    S = ctypes.sizeof
    assert S(ffi.dm_io_region) == 24 and ffi.dm_io_region.count.offset == 16
    assert S(ffi.dm_io_region_state) == 24 and ffi.dm_io_region_state.hdl.offset == 16
    assert ffi.dm_io_region_state.error_code.offset == 8
    assert S(ffi.dm_io_page_list) == 16 and ffi.dm_io_page_list.page.offset == 8
    assert S(ffi.bio_vec) == 16 and ffi.bio_vec.bv_offset.offset == 12
    assert S(ffi.dm_io_memory) == 24 and ffi.dm_io_memory.ptr.offset == 8
    assert ffi.dm_io_memory.offset.offset == 16
    assert S(ffi.dm_io_control) == 72
    offsets = {f: getattr(ffi.dm_io_control, f).offset for f, _ in ffi.dm_io_control._fields_}
    assert offsets == {
        "memory": 0, "rw": 24, "notify": 32, "context": 40, "client": 48, "timeout": 56, "flags": 64,
    }


STRUCTS = ["bio_vec", "dm_io_page_list", "dm_io_memory", "dm_io_region_state", "dm_io_control", "dm_io_region", "dm_io_stats"]


@pytest.mark.skipif(shutil.which("cc") is None or not (REPO / "include" / "dm_io.h").exists(),
                    reason="needs cc and the libdmio source tree")
def test_struct_layout_matches_header(tmp_path: Path) -> None:
    lines = ["#include <dm_io.h>", "#include <stdio.h>", "#include <stddef.h>", "int main(void) {"]
    for name in STRUCTS:
        cls = getattr(ffi, name)
        lines.append(f'printf("{name} %zu\\n", sizeof(struct {name}));')
        for field, _ in cls._fields_:
            lines.append(f'printf("{name}.{field} %zu\\n", offsetof(struct {name}, {field}));')
    lines += ['printf("union %zu\\n", sizeof(union dm_io_memory_ptr));', "return 0; }"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-I", str(REPO / "include"), str(src), "-o", str(exe)], check=True)
    got = dict(line.rsplit(" ", 1) for line in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines())
    for name in STRUCTS:
        cls = getattr(ffi, name)
        assert int(got[name]) == ctypes.sizeof(cls), name
        for field, _ in cls._fields_:
            assert int(got[f"{name}.{field}"]) == getattr(cls, field).offset, f"{name}.{field}"
    assert int(got["union"]) == ctypes.sizeof(ffi.dm_io_memory_ptr)


def test_raw_page_list_memory(client: dmio.Client, open_device) -> None:
    """The union and page-list structs work end to end through the raw binding."""
    lib = ffi.load()
    dev = open_device("dev")
    pages = [lib.dm_io_page_alloc() for _ in range(2)]
    try:
        nodes = (ffi.dm_io_page_list * 2)()
        nodes[0].page, nodes[1].page = pages
        nodes[0].next = ctypes.pointer(nodes[1])
        ctypes.memset(lib.dm_io_page_address(pages[0]), ord("P"), 4096)
        ctypes.memset(lib.dm_io_page_address(pages[1]), ord("Q"), 4096)
        ctrl = ffi.dm_io_control()
        ctrl.memory.type = ffi.DM_IO_PAGE_LIST
        ctrl.memory.ptr.pl = ctypes.pointer(nodes[0])
        ctrl.memory.offset = 2048
        ctrl.rw = ffi.DM_IO_WRITE | ffi.DM_IO_SYNC
        ctrl.client = client.handle
        reg = ffi.dm_io_region(dev.handle, 0, 8)
        assert lib.dm_io(ctypes.byref(ctrl), 1, ctypes.byref(reg), None) == 0
        assert client.read(dev, 0, 8) == b"P" * 2048 + b"Q" * 2048
    finally:
        for p in pages:
            lib.dm_io_page_free(p)


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60)


def test_library_not_found_message(env_with_package: dict) -> None:
    env = dict(env_with_package, DMIO_LIBRARY="/nonexistent/libdmio.so.0")
    p = _run(
        """
        import dmio
        try:
            dmio.version()
        except dmio.LibraryNotFound as e:
            assert isinstance(e, ImportError)
            print(e)
        """,
        env,
    )
    assert p.returncode == 0, p.stderr
    assert "/nonexistent/libdmio.so.0" in p.stdout
    assert "DMIO_LIBRARY" in p.stdout and "make all" in p.stdout
    # Uncaught: a clear error on first use.
    p = _run("import dmio; dmio.Client(1)", env)
    assert p.returncode != 0 and "LibraryNotFound" in p.stderr and "make all" in p.stderr
    # A library that is not libdmio.
    env["DMIO_LIBRARY"] = "libc.so.6"
    p = _run("import dmio; dmio.load_library()", env)
    assert p.returncode != 0 and "not libdmio" in p.stderr


def test_dmio_library_env(env_with_package: dict) -> None:
    lib = REPO / "build" / "libdmio.so.0"
    if not lib.exists():
        pytest.skip("no build tree")
    env = dict(env_with_package, DMIO_LIBRARY=str(lib))
    p = _run("import dmio; print(dmio.library_path(), dmio.version())", env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(lib), dmio.version()]
