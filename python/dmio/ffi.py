"""Low-level ctypes binding of ``dm_io.h``: library loading, structs, prototypes.

This module mirrors the C ABI exactly (64-bit Linux, LP64). It is what the
high-level API in :mod:`dmio` is built on, and is public for callers that
need something the high-level API does not offer (``DM_IO_BVEC`` or
``DM_IO_PAGE_LIST`` memory, for example). Nothing here is loaded at import
time: :func:`load` opens the shared library on first use.

Library search order (the first that exists and loads wins):

1. the ``DMIO_LIBRARY`` environment variable, a path to ``libdmio.so.0``
   (when set, nothing else is tried);
2. the build tree, ``<repo>/build/libdmio.so.0``, found relative to this
   file when the package runs from the libdmio source tree;
3. ``ctypes.util.find_library("dmio")``;
4. ``libdmio.so.0`` through the dynamic linker's default search path.

Opaque C types (``struct dm_io_client``, ``struct block_device``,
``struct dm_io_handle``, ``struct page``) are passed as ``c_void_p``: Python
sees them as plain integers (or ``None`` for NULL). The library validates
every such pointer and rejects stale ones with ``-EINVAL``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    Union,
    c_char_p,
    c_int,
    c_size_t,
    c_uint,
    c_uint64,
    c_ulong,
    c_void_p,
)
from pathlib import Path
from typing import List, Optional, Tuple

__all__ = [
    "LibraryNotFound",
    "load",
    "library_path",
    "last_error",
    "bio_vec",
    "dm_io_page_list",
    "dm_io_memory_ptr",
    "dm_io_memory",
    "dm_io_region_state",
    "dm_io_notify_fn",
    "dm_io_control",
    "dm_io_region",
    "dm_io_stats",
    "sector_t",
]

# ---------------------------------------------------------------------------
# Constants of dm_io.h
# ---------------------------------------------------------------------------

#: Version of the header this binding mirrors: major (must match the library).
DM_IO_VERSION_MAJOR = 0
#: Version of the header this binding mirrors: minor.
DM_IO_VERSION_MINOR = 1
#: Version of the header this binding mirrors: patch.
DM_IO_VERSION_PATCH = 0
#: Size in bytes of a ``struct page``.
DM_IO_PAGE_SIZE = 4096
#: Bytes per sector (``sector_t`` unit).
DM_IO_SECTOR_SIZE = 512
#: ``rw``: read from the one region into memory.
DM_IO_READ = 0
#: ``rw``: write memory to every region (mirror).
DM_IO_WRITE = 1
#: ``rw`` flag: ``dm_io`` returns only when every region is final.
DM_IO_SYNC = 16
#: ``rw`` flag (writes): flush the device cache before writing.
DM_IO_FLUSH = 32
#: ``rw`` flag (writes): write through (RWF_DSYNC).
DM_IO_FUA = 64
#: ``rw`` flag (reads): hedged read of mirror legs, first OK wins.
DM_IO_READ_ANY = 128
#: ``flags``: at the deadline, unfinished regions end CANCELLED instead of TIMEOUT.
DM_IO_CANCEL_ON_TIMEOUT = 1
DM_IO_ZERO_COPY = 2
DM_IO_RETURN_ON_TIMEOUT = 4
#: ``dm_io_bdev_open`` flag: open read-only.
DM_IO_BDEV_RDONLY = 1
#: ``dm_io_bdev_open`` flag: use the page cache instead of O_DIRECT.
DM_IO_BDEV_BUFFERED = 2
#: ``dm_io_stats.engine``: the io_uring reactor.
DM_IO_ENGINE_URING = 1
#: ``dm_io_stats.engine``: the thread-pool engine.
DM_IO_ENGINE_THREADS = 2
#: ``dm_io_stats.engine``: the Linux native AIO engine.
DM_IO_ENGINE_AIO = 3

# enum dm_io_state
DM_IO_OK = 0
DM_IO_TIMEOUT = 1
DM_IO_CANCELLED = 2
DM_IO_ERROR = 3

# enum dm_io_mem_type
DM_IO_PAGE_LIST = 0
DM_IO_BVEC = 1
DM_IO_VM = 2

#: ``typedef uint64_t sector_t``.
sector_t = c_uint64

# ---------------------------------------------------------------------------
# Structures (field for field as in dm_io.h)
# ---------------------------------------------------------------------------


class bio_vec(Structure):
    """``struct bio_vec``: ``bv_len`` bytes at ``bv_offset`` in ``bv_page``."""

    _fields_ = [
        ("bv_page", c_void_p),  # struct page *
        ("bv_len", c_uint),
        ("bv_offset", c_uint),
    ]


class dm_io_page_list(Structure):
    """``struct dm_io_page_list``: ``page`` then ``next``, NULL-terminated."""


dm_io_page_list._fields_ = [
    ("next", POINTER(dm_io_page_list)),
    ("page", c_void_p),  # struct page *
]


class dm_io_memory_ptr(Union):
    """``union dm_io_memory_ptr``: the memory pointer, by ``dm_io_memory.type``."""

    _fields_ = [
        ("vma", c_void_p),
        ("bv", POINTER(bio_vec)),
        ("pl", POINTER(dm_io_page_list)),
    ]


class dm_io_memory(Structure):
    """``struct dm_io_memory``: the caller's memory of a request."""

    _fields_ = [
        ("type", c_int),  # enum dm_io_mem_type
        ("ptr", dm_io_memory_ptr),
        ("offset", c_uint),
    ]


class dm_io_region_state(Structure):
    """``struct dm_io_region_state``: what notify is told about one region."""

    _fields_ = [
        ("index", c_uint),
        ("state", c_int),  # enum dm_io_state
        ("error_code", c_int),
        ("hdl", c_void_p),  # struct dm_io_handle *
    ]


#: ``typedef void (*dm_io_notify_fn)(struct dm_io_region_state *, void *)``.
dm_io_notify_fn = CFUNCTYPE(None, POINTER(dm_io_region_state), c_void_p)


class dm_io_control(Structure):
    """``struct dm_io_control``: one request's parameters."""

    _fields_ = [
        ("memory", dm_io_memory),
        ("rw", c_int),
        ("notify", dm_io_notify_fn),
        ("context", c_void_p),
        ("client", c_void_p),  # struct dm_io_client *
        ("timeout", c_ulong),
        ("flags", c_uint),
    ]


class dm_io_region(Structure):
    """``struct dm_io_region``: ``count`` sectors at ``sector`` of ``bdev``."""

    _fields_ = [
        ("bdev", c_void_p),  # struct block_device *
        ("sector", sector_t),
        ("count", sector_t),
    ]


class dm_io_stats(Structure):
    """``struct dm_io_stats``: a client's counters (``dm_io_client_stats``)."""

    _fields_ = [
        ("requests", c_uint64),
        ("regions", c_uint64),
        ("regions_in_flight", c_uint64),
        ("ok", c_uint64),
        ("timeouts", c_uint64),
        ("cancelled", c_uint64),
        ("errors", c_uint64),
        ("late_completions", c_uint64),
        ("private_bytes_in_use", c_uint64),
        ("private_bytes_high_water", c_uint64),
        ("private_bytes_bound", c_uint64),
        ("memory_waits", c_uint64),
        ("engine", c_uint),
        ("reserved", c_uint),
        ("hedges", c_uint64),
    ]


# ---------------------------------------------------------------------------
# Prototypes
# ---------------------------------------------------------------------------

_PVOID = POINTER(c_void_p)

#: name -> (restype, argtypes) of every function of dm_io.h.
PROTOTYPES = {
    "dm_io_client_create": (c_int, [c_uint, c_uint, c_uint, _PVOID]),
    "dm_io_client_destroy": (None, [c_void_p]),
    "dm_io": (c_int, [POINTER(dm_io_control), c_uint, POINTER(dm_io_region), _PVOID]),
    "dm_io_handle_get": (c_void_p, [c_void_p]),
    "dm_io_handle_put": (c_void_p, [c_void_p]),
    "dm_io_cancel_by_device": (c_int, [c_void_p, c_void_p]),
    "dm_io_cancel_by_handle": (c_int, [c_void_p, c_void_p]),
    "dm_io_client_stats": (c_int, [c_void_p, POINTER(dm_io_stats), c_size_t]),
    "dm_io_client_set_hedge": (c_int, [c_void_p, c_uint]),
    "dm_io_bdev_open": (c_int, [c_char_p, c_uint, _PVOID]),
    "dm_io_bdev_open_fd": (c_int, [c_int, c_uint, _PVOID]),
    "dm_io_bdev_open_faulty": (c_int, [c_char_p, c_char_p, _PVOID]),
    "dm_io_bdev_set_faults": (c_int, [c_void_p, c_char_p]),
    "dm_io_bdev_close": (None, [c_void_p]),
    "dm_io_bdev_sectors": (sector_t, [c_void_p]),
    "dm_io_bdev_block_size": (c_uint, [c_void_p]),
    "dm_io_bdev_is_direct": (c_int, [c_void_p]),
    "dm_io_page_alloc": (c_void_p, []),
    "dm_io_page_free": (None, [c_void_p]),
    "dm_io_page_address": (c_void_p, [c_void_p]),
    "dm_io_last_error": (c_char_p, []),
    "dm_io_version": (c_char_p, []),
}


class LibraryNotFound(ImportError):
    """libdmio (``libdmio.so.0``) could not be found or loaded.

    The message lists every place that was tried and why it failed, and how
    to fix it: build the library (``make all`` in the libdmio tree), install
    it (``make install``), or point ``DMIO_LIBRARY`` at ``libdmio.so.0``.
    """


_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[str] = None


def _build_tree_library() -> Path:
    """``<repo>/build/libdmio.so.0`` for a package inside ``<repo>/python/dmio``."""
    return Path(__file__).resolve().parent.parent.parent / "build" / "libdmio.so.0"


def _candidates() -> Tuple[List[str], bool]:
    """The paths/names to try, and whether they come from ``DMIO_LIBRARY``."""
    env = os.environ.get("DMIO_LIBRARY")
    if env:
        return [env], True
    out: List[str] = []
    tree = _build_tree_library()
    if tree.exists():
        out.append(str(tree))
    found = ctypes.util.find_library("dmio")
    if found:
        out.append(found)
    out.append("libdmio.so.0")
    return out, False


def _declare(lib: ctypes.CDLL) -> None:
    for name, (restype, argtypes) in PROTOTYPES.items():
        fn = getattr(lib, name)  # AttributeError for a missing symbol
        fn.restype = restype
        fn.argtypes = argtypes


def load() -> ctypes.CDLL:
    """Loads libdmio once (thread-safe) and returns the ``ctypes.CDLL``.

    Every function of ``dm_io.h`` has its ``argtypes`` and ``restype``
    declared. Raises :class:`LibraryNotFound` when no candidate loads, or
    when the library found has another major version than this binding.
    """
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        names, from_env = _candidates()
        tried: List[str] = []
        for name in names:
            try:
                lib = ctypes.CDLL(name)
            except OSError as e:
                tried.append(f"  {name}: {e}")
                continue
            try:
                _declare(lib)
            except AttributeError as e:
                tried.append(f"  {name}: not libdmio or too old ({e})")
                continue
            version = (lib.dm_io_version() or b"").decode("ascii", "replace")
            major = version.split(".")[0]
            if major != str(DM_IO_VERSION_MAJOR):
                tried.append(
                    f"  {name}: libdmio {version}, this package needs "
                    f"{DM_IO_VERSION_MAJOR}.x"
                )
                continue
            _lib, _lib_path = lib, name
            return lib
        where = "DMIO_LIBRARY" if from_env else "the build tree, find_library('dmio') and the default path"
        raise LibraryNotFound(
            f"libdmio could not be loaded (searched {where}):\n"
            + "\n".join(tried)
            + "\nBuild it with `make all` in the libdmio source tree (it gives "
            "build/libdmio.so.0), install it with `make install`, or set "
            "DMIO_LIBRARY to the path of libdmio.so.0, e.g. "
            "DMIO_LIBRARY=/path/to/libdmio/build/libdmio.so.0",
            name="libdmio",
        )


def library_path() -> str:
    """The path or name libdmio was loaded from (loads it if needed)."""
    load()
    assert _lib_path is not None
    return _lib_path


def last_error() -> str:
    """``dm_io_last_error()``: this thread's last failure message ('' if none)."""
    msg = load().dm_io_last_error()
    return msg.decode("utf-8", "replace") if msg else ""
