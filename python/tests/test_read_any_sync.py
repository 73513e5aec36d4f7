"""SYNC hedged reads (DM_IO_READ_ANY) through the raw C ABI: dm_io returns 0
when one region delivered the data, even though the others ended CANCELLED
or ERROR (a regression test for a bug found while writing the binding)."""

from __future__ import annotations

import ctypes

import dmio
from dmio import ffi


def _sync_read_any(client: dmio.Client, legs, buf: dmio.Buffer) -> int:
    lib = ffi.load()
    ctrl = ffi.dm_io_control()
    ctrl.memory.type = ffi.DM_IO_VM
    ctrl.memory.ptr.vma = buf.address
    ctrl.rw = ffi.DM_IO_READ | ffi.DM_IO_READ_ANY | ffi.DM_IO_SYNC
    ctrl.client = client.handle
    regs = (ffi.dm_io_region * len(legs))(*[(d.handle, 0, 8) for d in legs])
    return lib.dm_io(ctypes.byref(ctrl), len(legs), regs, None)


def test_sync_read_any_first_leg_ok_returns_0(client: dmio.Client, open_device) -> None:
    # Leg A answers: the data is delivered, leg B is CANCELLED unstarted.
    a, b = open_device("a"), open_device("b")
    buf = dmio.Buffer(4096)
    assert _sync_read_any(client, [a, b], buf) == 0


def test_sync_read_any_failover_returns_0(client: dmio.Client, open_device) -> None:
    # Leg A fails with EIO, leg B delivers the data.
    a, b = open_device("a", faults="error reads errno=EIO"), open_device("b")
    with open(b.path, "r+b") as f:
        f.write(b"B" * 4096)
    buf = dmio.Buffer(4096)
    rc = _sync_read_any(client, [a, b], buf)
    assert bytes(buf) == b"B" * 4096  # the data did arrive
    assert rc == 0
