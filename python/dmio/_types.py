"""Enums, small value types and the exception of the dmio package."""

from __future__ import annotations

from types import TracebackType

import enum
import errno as _errno
import os
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, Optional, TYPE_CHECKING, Tuple, Type, TypeVar

from . import ffi

if TYPE_CHECKING:  # pragma: no cover
    from .device import Device
    from .request import Request

SECTOR_SIZE: int = ffi.DM_IO_SECTOR_SIZE
"""Bytes per sector: regions are counted in 512-byte sectors."""

PAGE_SIZE: int = ffi.DM_IO_PAGE_SIZE
"""The library's page size (and the alignment of :class:`dmio.Buffer`)."""


class State(enum.IntEnum):
    """The state of a region, as given to notify (``enum dm_io_state``)."""

    OK = ffi.DM_IO_OK
    """The region's IO completed successfully (final)."""
    TIMEOUT = ffi.DM_IO_TIMEOUT
    """The deadline passed while the IO still runs; a final state follows (not final)."""
    CANCELLED = ffi.DM_IO_CANCELLED
    """Cancelled; the library never touches the region's memory again (final)."""
    ERROR = ffi.DM_IO_ERROR
    """The IO failed; the error code is a negative errno (final)."""

    @property
    def final(self) -> bool:
        """True for OK, CANCELLED and ERROR; False for TIMEOUT."""
        return self is not State.TIMEOUT


class Op(enum.IntEnum):
    """The direction of a request (``DM_IO_READ`` / ``DM_IO_WRITE``)."""

    READ = ffi.DM_IO_READ
    """Read one region (or, with ``read_any``, the first of several mirror legs)."""
    WRITE = ffi.DM_IO_WRITE
    """Write the same memory to every region (mirror)."""


class Engine(enum.IntEnum):
    """The IO engine a client runs on (``dm_io_stats.engine``)."""

    UNKNOWN = 0
    """Not reported (should not happen)."""
    URING = ffi.DM_IO_ENGINE_URING
    """The io_uring reactor."""
    AIO = ffi.DM_IO_ENGINE_AIO
    """The Linux native AIO reactor (the kernel refused io_uring)."""
    THREADS = ffi.DM_IO_ENGINE_THREADS
    """The thread-pool engine (the kernel refused io_uring and AIO)."""


class Region(NamedTuple):
    """One target or source of a request: ``count`` sectors at ``sector`` of ``device``.

    Plain ``(device, sector, count)`` tuples are accepted wherever a Region is.
    """

    device: "Device"
    sector: int
    count: int  # type: ignore[assignment]  # shadows tuple.count, as in C

    @property
    def nbytes(self) -> int:
        """The region's length in bytes (``count * 512``)."""
        return self.count * SECTOR_SIZE


class Event(NamedTuple):
    """One notify call: region ``index`` reached ``state``.

    ``error_code`` is the C value: 0 for OK, ``-ETIMEDOUT`` for TIMEOUT, a
    negative errno for ERROR and, for CANCELLED, why (``-ECANCELED`` cancel
    call, ``-ETIMEDOUT`` deadline with ``cancel_on_timeout``, ``-ESHUTDOWN``
    client closed).
    """

    index: int  # type: ignore[assignment]  # shadows tuple.index, as in C
    state: State
    error_code: int

    @property
    def errno(self) -> int:
        """The positive errno (0 for OK)."""
        return -self.error_code

    @property
    def final(self) -> bool:
        """Whether this is the region's final state (not TIMEOUT)."""
        return self.state is not State.TIMEOUT


@dataclass(frozen=True)
class RegionState:
    """A snapshot of one region of a request.

    ``state`` is the latest state notified (``None`` before the first
    notification): the final state once ``final`` is True, TIMEOUT while a
    timed-out region still runs. ``timed_out`` tells whether a TIMEOUT came
    before. ``events`` lists every notification of the region in order.
    """

    index: int
    region: Region
    state: Optional[State]
    error_code: int
    timed_out: bool
    final: bool
    events: Tuple[Event, ...]

    @property
    def errno(self) -> int:
        """The positive errno of ``error_code`` (0 for OK or no event yet)."""
        return -self.error_code

    @property
    def ok(self) -> bool:
        """True when the region ended OK."""
        return self.final and self.state is State.OK


@dataclass(frozen=True)
class Stats:
    """A client's counters (``struct dm_io_stats``), from :meth:`dmio.Client.stats`."""

    requests: int
    """Requests accepted."""
    regions: int
    """Regions of those requests."""
    regions_in_flight: int
    """Regions not yet final."""
    ok: int
    """Regions that ended OK."""
    timeouts: int
    """TIMEOUT notifications."""
    cancelled: int
    """Regions that ended CANCELLED (cancel call, cancel_on_timeout or close)."""
    errors: int
    """Regions that ended ERROR."""
    late_completions: int
    """Final states (OK or ERROR) that came after a TIMEOUT."""
    private_bytes_in_use: int
    """Private memory in use now (includes memory held by stuck cancelled IO)."""
    private_bytes_high_water: int
    """Most private memory ever in use."""
    private_bytes_bound: int
    """The private memory bound: ``devices * min_ios * max_size`` (page-rounded)."""
    memory_waits: int
    """How many times a submission waited for private memory."""
    engine: Engine
    """The IO engine."""
    hedges: int
    """Regions of hedged reads started after the first."""

    @classmethod
    def from_c(cls, st: ffi.dm_io_stats) -> "Stats":
        """Builds a Stats from the C struct."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            values[f.name] = getattr(st, f.name)
        try:
            values["engine"] = Engine(st.engine)
        except ValueError:  # a future engine: keep the raw number
            values["engine"] = st.engine
        return cls(**values)


class Error(OSError):
    """A libdmio call or an IO failed.

    ``errno`` is the positive errno (``errno.EIO``, ``errno.ETIMEDOUT``...),
    ``strerror`` the message (from ``dm_io_last_error()`` for a call the
    library refused, else a description of the failed region). For IO
    failures, ``request`` is the :class:`dmio.Request` and ``index`` the
    region that decided the error; both are ``None`` otherwise.
    """

    def __init__(
        self,
        errno: int,
        message: str,
        *,
        request: Optional["Request"] = None,
        index: Optional[int] = None,
    ) -> None:
        """``Error(errno, message)``; ``errno`` is positive, as for OSError."""
        super().__init__(errno, message)
        self.request = request
        self.index = index

    def __reduce__(self) -> Any:  # keep pickling working (kw-only args)
        return (Error, (self.errno, self.strerror))


def _describe_errno(code: int) -> str:
    """A message for a negative or positive errno."""
    n = abs(code)
    name = _errno.errorcode.get(n, str(n))
    return f"{os.strerror(n)} ({name})"


def _call_error(rc: int, what: str) -> Error:
    """An Error for a negative return code, message from ``dm_io_last_error()``.

    Must be called on the thread that made the failing call, right after it.
    """
    msg = ffi.last_error() or f"{what}: {_describe_errno(rc)}"
    return Error(-rc, msg)


class _Closable:
    """Context-manager and finaliser plumbing for objects with ``close()``."""

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self: "_C") -> "_C":
        """Returns the object itself."""
        return self

    def __exit__(
        self,
        exc_type: "Optional[Type[BaseException]]",
        exc: "Optional[BaseException]",
        tb: "Optional[TracebackType]",
    ) -> None:
        """Closes the object."""
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


_C = TypeVar("_C", bound=_Closable)
