"""dmio: Python binding of libdmio, timed, cancellable, multi-region block IO.

libdmio implements the dm-io interface proposed on dm-devel in 2006 in
userspace: one request goes to N regions (for example the legs of a
mirror) with a deadline, and every region is notified at most once with
TIMEOUT, then exactly once with OK, CANCELLED or ERROR. After CANCELLED
the library never touches the request's memory again.

Quick start::

    import dmio

    with dmio.Client(devices=2) as cl, \\
         dmio.Device("/var/tmp/a.img") as a, \\
         dmio.Device("/var/tmp/b.img", faults="delay 300ms") as b:
        data = dmio.Buffer.from_bytes(b"x" * 4096)
        req = cl.io(dmio.Op.WRITE, [(a, 0, 8), (b, 0, 8)], data, timeout_ms=50)
        req.wait()
        for st in req.states:
            print(st.index, st.state.name, "after TIMEOUT" if st.timed_out else "")

The shared library is loaded on first use (see :mod:`dmio.ffi` for the
search order and ``DMIO_LIBRARY``); :class:`LibraryNotFound` (an
ImportError) says how to build or point to it.
"""

from __future__ import annotations

from . import ffi
from ._types import (
    PAGE_SIZE,
    SECTOR_SIZE,
    Engine,
    Error,
    Event,
    Op,
    Region,
    RegionState,
    State,
    Stats,
)
from .buffer import Buffer, BufferLike
from .client import Client, RegionLike
from .device import Device
from .ffi import LibraryNotFound, library_path
from .request import NotifyFn, Request

__version__ = "0.1.0"

# Public classes show (and pickle) as dmio.X, not dmio._types.X.
for _cls in (Buffer, Client, Device, Engine, Error, Event, LibraryNotFound, Op, Region,
             RegionState, Request, State, Stats):
    _cls.__module__ = __name__
del _cls

__all__ = [
    "Buffer",
    "BufferLike",
    "Client",
    "Device",
    "Engine",
    "Error",
    "Event",
    "LibraryNotFound",
    "NotifyFn",
    "Op",
    "PAGE_SIZE",
    "Region",
    "RegionLike",
    "RegionState",
    "Request",
    "SECTOR_SIZE",
    "State",
    "Stats",
    "ffi",
    "last_error",
    "library_path",
    "load_library",
    "version",
]


def load_library() -> None:
    """Loads libdmio now instead of on first use; raises :class:`LibraryNotFound`."""
    ffi.load()


def version() -> str:
    """The loaded library's version string (``dm_io_version()``), e.g. ``"0.1.0"``."""
    v = ffi.load().dm_io_version()
    return v.decode("ascii", "replace") if v else ""


def last_error() -> str:
    """``dm_io_last_error()``: this thread's last libdmio failure message."""
    return ffi.last_error()
