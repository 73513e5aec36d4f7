"""Devices: block devices or regular files opened for dm_io, with fault injection."""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Optional, Union

from . import ffi
from ._types import _Closable, SECTOR_SIZE, _call_error

__all__ = ["Device"]

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


class Device(_Closable):
    """A block device or regular file opened for dm_io (``struct block_device``).

    ``Device(path)`` opens it read-write with O_DIRECT where the file system
    allows it (the page cache otherwise, e.g. on tmpfs); ``read_only=True``
    makes writes fail with ``EBADF``; ``buffered=True`` uses the page cache.
    ``faults`` sets an initial fault-injection spec (see :meth:`set_faults`).
    ``path`` may also be an NBD URI (``nbd://HOST[:PORT]/EXPORT`` or
    ``nbd+unix:///EXPORT?socket=PATH``; see ``dm_io_bdev_open`` in
    ``dm_io.h`` for its parameters and errors).
    Regions on a device must be aligned to its :attr:`block_size`.

    Use it as a context manager, or call :meth:`close`. Closing while IO
    runs on the device is safe: that IO keeps the file open until it ends.
    Raises :class:`dmio.Error` when the open fails (``errno`` from open(2),
    ``EINVAL`` for a bad fault spec, ``ENOTBLK``...).
    """

    def __init__(
        self,
        path: PathLike,
        faults: Optional[str] = None,
        read_only: bool = False,
        buffered: bool = False,
    ) -> None:
        """Opens ``path``; see the class documentation."""
        self._lib = ffi.load()
        self._lock = threading.Lock()
        self._ptr: Optional[int] = None
        self.path: str = os.fsdecode(path)
        """The path the device was opened from (``"fd:N"`` for :meth:`from_fd`)."""
        self.read_only: bool = read_only
        """Whether the device was opened read-only."""
        self.faults: str = ""
        """The fault spec set last (``""`` when healthy)."""
        flags = (ffi.DM_IO_BDEV_RDONLY if read_only else 0) | (
            ffi.DM_IO_BDEV_BUFFERED if buffered else 0
        )
        out = ctypes.c_void_p()
        bpath = os.fsencode(path)
        if faults is not None and flags == 0:
            rc = self._lib.dm_io_bdev_open_faulty(bpath, faults.encode(), ctypes.byref(out))
            if rc < 0:
                raise _call_error(rc, f"dm_io_bdev_open_faulty({self.path!r})")
            self.faults = faults
        else:
            rc = self._lib.dm_io_bdev_open(bpath, flags, ctypes.byref(out))
            if rc < 0:
                raise _call_error(rc, f"dm_io_bdev_open({self.path!r})")
        self._ptr = out.value
        if faults is not None and flags != 0:
            try:
                self.set_faults(faults)
            except BaseException:
                self.close()
                raise

    @classmethod
    def from_fd(cls, fd: int, read_only: bool = False, buffered: bool = False) -> "Device":
        """Opens an already open descriptor (``dm_io_bdev_open_fd``).

        The descriptor is duplicated: the caller keeps and closes ``fd``.
        O_DIRECT is used if ``fd`` has it.
        """
        self = cls.__new__(cls)
        self._lib = ffi.load()
        self._lock = threading.Lock()
        self._ptr = None
        self.path = f"fd:{fd}"
        self.read_only = read_only
        self.faults = ""
        flags = (ffi.DM_IO_BDEV_RDONLY if read_only else 0) | (
            ffi.DM_IO_BDEV_BUFFERED if buffered else 0
        )
        out = ctypes.c_void_p()
        rc = self._lib.dm_io_bdev_open_fd(fd, flags, ctypes.byref(out))
        if rc < 0:
            raise _call_error(rc, f"dm_io_bdev_open_fd({fd})")
        self._ptr = out.value
        return self

    @property
    def handle(self) -> int:
        """The C ``struct block_device *`` as an int (raises ValueError once closed)."""
        p = self._ptr
        if p is None:
            raise ValueError(f"device {self.path!r} is closed")
        return p

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._ptr is None

    @property
    def sectors(self) -> int:
        """Size of the device in 512-byte sectors."""
        return int(self._lib.dm_io_bdev_sectors(self.handle))

    @property
    def size(self) -> int:
        """Size of the device in bytes."""
        return self.sectors * SECTOR_SIZE

    @property
    def block_size(self) -> int:
        """Logical block size in bytes; region sectors and counts must be multiples of it."""
        return int(self._lib.dm_io_bdev_block_size(self.handle))

    @property
    def is_direct(self) -> bool:
        """True when IO uses O_DIRECT, False when it goes through the page cache."""
        rc = self._lib.dm_io_bdev_is_direct(self.handle)
        if rc < 0:
            raise _call_error(rc, "dm_io_bdev_is_direct")
        return bool(rc)

    def set_faults(self, spec: Optional[str]) -> None:
        """Replaces the injected faults, for IO started from now on.

        Rules are separated by ``;`` or newlines: ``delay 50ms`` or
        ``delay read=50ms write=200ms``; ``error [reads|writes]
        [sectors=A-B] [errno=EIO]``; ``hang [reads|writes] [sectors=A-B]``
        (IO is held until the spec changes); ``flakey up=5s down=1s
        [drop_writes]``. ``""``, ``"none"`` or ``None`` clears all faults
        (and releases held IO). Raises :class:`dmio.Error` (``EINVAL``) for
        a bad spec.
        """
        spec = spec or ""
        rc = self._lib.dm_io_bdev_set_faults(self.handle, spec.encode())
        if rc < 0:
            raise _call_error(rc, "dm_io_bdev_set_faults")
        self.faults = spec

    def close(self) -> None:
        """Closes the device (idempotent). IO still running keeps the file open until it ends."""
        with self._lock:
            p, self._ptr = self._ptr, None
        if p is not None:
            self._lib.dm_io_bdev_close(p)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.sectors} sectors"
        extra = f" faults={self.faults!r}" if self.faults else ""
        return f"<dmio.Device {self.path!r} {state}{extra}>"
