"""The dm_io client: submission, sync helpers, cancel, stats, asyncio.

(Over 400 lines on purpose: these are the methods of one class, each the
Python face of one C call, documented where it is defined.)
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import operator
import threading
import weakref
from typing import (
    Any,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    overload,
)

from . import ffi
from ._types import _Closable, PAGE_SIZE, SECTOR_SIZE, Event, Op, Region, Stats, _call_error
from .buffer import Buffer, BufferLike, c_memory
from .device import Device
from .request import _TRAMPOLINE, NotifyFn, Request, _register

__all__ = ["Client", "RegionLike"]

#: A region: a :class:`dmio.Region` or a ``(device, sector, count)`` tuple.
RegionLike = Union[Region, Tuple[Device, int, int]]

_B = TypeVar("_B")

_live: "weakref.WeakSet[Client]" = weakref.WeakSet()


@atexit.register
def _close_all_clients() -> None:
    # Destroying delivers every pending notification now, while the
    # interpreter can still run the callbacks; none come after.
    for cl in list(_live):
        try:
            cl.close()
        except Exception:
            pass


def _to_region(r: Any) -> Region:
    if isinstance(r, Region):
        dev, sector, count = r
    else:
        try:
            dev, sector, count = r
        except (TypeError, ValueError):
            raise TypeError(
                f"a region is a dmio.Region or a (device, sector, count) tuple, not {r!r}"
            ) from None
    if not isinstance(dev, Device):
        raise TypeError(f"a region's device must be a dmio.Device, not {type(dev).__name__}")
    sector, count = operator.index(sector), operator.index(count)
    if sector < 0 or count < 0:
        raise ValueError(f"negative sector or count in region {(dev.path, sector, count)}")
    return Region(dev, sector, count)


def _is_region(x: Any) -> bool:
    """Whether ``x`` is one region (not a sequence of regions or devices)."""
    return isinstance(x, Region) or (
        isinstance(x, tuple)
        and len(x) == 3
        and isinstance(x[0], Device)
        and not isinstance(x[1], (Device, tuple))
    )


def _to_regions(regions: Union[RegionLike, Iterable[RegionLike]]) -> Tuple[Region, ...]:
    if _is_region(regions):
        regs: Tuple[Region, ...] = (_to_region(regions),)
    else:
        regs = tuple(_to_region(r) for r in regions)
    if not regs:
        raise ValueError("a request needs at least one region")
    return regs


def _to_op(op: Union[Op, int, str]) -> Op:
    if isinstance(op, str):
        try:
            return Op[op.upper()]
        except KeyError:
            raise ValueError(f"unknown op {op!r} (use dmio.Op.READ or dmio.Op.WRITE)") from None
    return Op(op)


class Client(_Closable):
    """A dm_io client (``struct dm_io_client``): private memory, IO and completion threads.

    ``devices`` is the most regions per request (1..1024), ``min_ios`` the
    requests per device that can run at once without waiting for private
    memory, ``max_size`` the bytes per operation (larger regions are
    split). Private memory is bounded by ``devices * min_ios * max_size``.

    Use it as a context manager, or call :meth:`close`: closing cancels
    every region not yet final (CANCELLED with ``ESHUTDOWN``, notified
    before close returns). Requests in flight are kept alive by the client.
    Raises :class:`dmio.Error` when creation fails (``EINVAL`` for bad
    arguments, ``ENOMEM``...).
    """

    def __init__(self, devices: int, min_ios: int = 16, max_size: int = 64 * 1024) -> None:
        """Creates the client (``dm_io_client_create``)."""
        self._lib = ffi.load()
        self._lock = threading.Lock()
        self._ptr: Optional[int] = None
        self._inflight: Dict[int, Request] = {}
        self.devices: int = devices
        """The most regions per request."""
        self.min_ios: int = min_ios
        """Requests per device that run without waiting for memory."""
        self.max_size: int = max_size
        """Bytes per operation."""
        out = ctypes.c_void_p()
        for name, v in (("devices", devices), ("min_ios", min_ios), ("max_size", max_size)):
            if not isinstance(v, int) or not 0 <= v < 2**32:
                raise ValueError(f"{name} must be an unsigned 32-bit int, got {v!r}")
        rc = self._lib.dm_io_client_create(devices, min_ios, max_size, ctypes.byref(out))
        if rc < 0:
            raise _call_error(rc, "dm_io_client_create")
        self._ptr = out.value
        _live.add(self)

    # -- internals ----------------------------------------------------------------

    def _handle(self) -> int:
        p = self._ptr
        if p is None:
            raise ValueError("the client is closed")
        return p

    def _track(self, req: Request) -> None:
        with self._lock:
            self._inflight[req.id] = req

    def _forget(self, req: Request) -> None:
        with self._lock:
            self._inflight.pop(req.id, None)

    # -- properties -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._ptr is None

    @property
    def handle(self) -> int:
        """The C ``struct dm_io_client *`` as an int (ValueError once closed)."""
        return self._handle()

    @property
    def in_flight(self) -> List[Request]:
        """The requests submitted to this client that are not done yet."""
        with self._lock:
            return list(self._inflight.values())

    # -- IO -------------------------------------------------------------------------

    def io(
        self,
        op: Union[Op, int, str],
        regions: Union[RegionLike, Iterable[RegionLike]],
        buffer: Optional[BufferLike] = None,
        *,
        timeout_ms: int = 0,
        cancel_on_timeout: bool = False,
        notify: Optional[NotifyFn] = None,
        flush: bool = False,
        fua: bool = False,
        read_any: bool = False,
        sync: bool = False,
        zero_copy: bool = False,
    ) -> Request:
        """Submits one request (``dm_io``) and returns its :class:`Request`.

        - ``op``: ``Op.READ`` (one region, or several mirror legs with
          ``read_any``) or ``Op.WRITE`` (the same data to every region).
        - ``regions``: ``(device, sector, count)`` tuples or :class:`Region`
          values, in 512-byte sectors aligned to each device's block size.
        - ``buffer``: any contiguous buffer of at least the largest region's
          bytes; writable for reads. ``None`` for a read allocates a
          :class:`Buffer` (``request.buffer``). It is kept (and cannot be
          resized or closed) until every region is final.
        - ``timeout_ms``: deadline (0: none). Regions still running then
          are notified TIMEOUT and later get their final state, or, with
          ``cancel_on_timeout``, end CANCELLED (``ETIMEDOUT``) at once.
        - ``notify(request, event)``: called for every :class:`Event`; on
          the client's completion thread (one at a time), or in this thread
          for ``sync=True``. Its exceptions are reported via
          ``sys.unraisablehook`` and kept in ``request.callback_errors``.
        - ``flush``/``fua`` (writes): flush the device cache before, write
          through. ``read_any``: hedged read, first OK leg wins (see
          :meth:`set_hedge`).
        - ``sync``: return only when every region is final (``DM_IO_SYNC``);
          allowed inside notify callbacks.
        - ``zero_copy``: the IO runs in ``buffer`` itself (``DM_IO_ZERO_COPY``),
          with no private memory and no copy. The buffer must suit O_DIRECT
          (a :class:`Buffer` does; not with ``read_any``). A cancel then
          cannot abandon running IO: a cancelled region ends CANCELLED only
          when its IO ends, and closing the client waits for it. For devices
          that do not hang.

        Raises :class:`dmio.Error` when libdmio refuses the request
        (message from ``dm_io_last_error()``), ValueError/TypeError for
        invalid Python arguments. IO failures are reported by the request
        (:meth:`Request.result`), not raised here.
        """
        op = _to_op(op)
        regs = _to_regions(regions)
        if notify is not None and not callable(notify):
            raise TypeError(f"notify must be callable, not {type(notify).__name__}")
        timeout_ms = operator.index(timeout_ms)
        if not 0 <= timeout_ms < 2**64:
            raise ValueError(f"timeout_ms must be >= 0, got {timeout_ms}")
        need = max(r.count for r in regs) * SECTOR_SIZE
        if buffer is None:
            if op is Op.READ:
                buffer = Buffer(max(need, SECTOR_SIZE))
            elif need == 0:  # empty flushes: no data, but memory must not be NULL
                buffer = Buffer(PAGE_SIZE)
            else:
                raise TypeError("a write needs a buffer with the data")
        addr, _, keep = c_memory(buffer, need, writable=op is Op.READ)

        cl = self._handle()
        handles = [r.device.handle for r in regs]
        req = Request(self, op, regs, buffer, keep, notify, timeout_ms, read_any, sync)

        ctrl = ffi.dm_io_control()
        ctrl.memory.type = ffi.DM_IO_VM
        ctrl.memory.ptr.vma = addr
        ctrl.memory.offset = 0
        ctrl.rw = (
            int(op)
            | (ffi.DM_IO_SYNC if sync else 0)
            | (ffi.DM_IO_FLUSH if flush else 0)
            | (ffi.DM_IO_FUA if fua else 0)
            | (ffi.DM_IO_READ_ANY if read_any else 0)
        )
        ctrl.notify = _TRAMPOLINE
        ctrl.context = req.id
        ctrl.client = cl
        ctrl.timeout = timeout_ms
        ctrl.flags = (ffi.DM_IO_CANCEL_ON_TIMEOUT if cancel_on_timeout else 0) | (
            ffi.DM_IO_ZERO_COPY if zero_copy else 0
        )
        arr = (ffi.dm_io_region * len(regs))(
            *[ffi.dm_io_region(h, r.sector, r.count) for h, r in zip(handles, regs)]
        )
        hdl = ctypes.c_void_p()

        # Registered before dm_io: notifications may come before it returns.
        _register(req)
        self._track(req)
        try:
            rc = self._lib.dm_io(ctypes.byref(ctrl), len(regs), arr, ctypes.byref(hdl))
        except BaseException:
            req._abandon()
            raise
        if rc < 0 and not (sync and req._any_event()):
            err = _call_error(rc, "dm_io")  # nothing started
            req._abandon()
            raise err
        req._adopt_handle(hdl.value)
        return req

    async def io_async(
        self,
        op: Union[Op, int, str],
        regions: Union[RegionLike, Iterable[RegionLike]],
        buffer: Optional[BufferLike] = None,
        *,
        timeout_ms: int = 0,
        cancel_on_timeout: bool = False,
        notify: Optional[NotifyFn] = None,
        flush: bool = False,
        fua: bool = False,
        read_any: bool = False,
        zero_copy: bool = False,
    ) -> Request:
        """Like :meth:`io`, awaited on the running asyncio loop; returns the done Request.

        ``notify`` runs on the loop's thread (each event hops there with
        ``loop.call_soon_threadsafe``) and all of them have run when this
        returns. Call :meth:`Request.result` to raise on failure. Cancelling
        the awaiting task (e.g. ``asyncio.wait_for``) cancels the IO.
        Submission itself may block briefly when the client's private
        memory is all in use.
        """
        loop = asyncio.get_running_loop()
        hop: Optional[NotifyFn] = None
        if notify is not None:
            user = notify

            def on_loop(req: Request, ev: Event) -> None:
                try:
                    user(req, ev)
                except Exception as e:
                    req._callback_failed(e, f"notify callback ({ev.state.name} of region {ev.index})")
                    loop.call_exception_handler(
                        {"message": "exception in a dmio notify callback", "exception": e}
                    )

            def hop(req: Request, ev: Event) -> None:
                loop.call_soon_threadsafe(on_loop, req, ev)

        req = self.io(
            op,
            regions,
            buffer,
            timeout_ms=timeout_ms,
            cancel_on_timeout=cancel_on_timeout,
            notify=hop,
            flush=flush,
            fua=fua,
            read_any=read_any,
            zero_copy=zero_copy,
        )
        try:
            return await req.wait_async()
        except asyncio.CancelledError:
            req.cancel()
            raise

    @overload
    def read(self, device: Device, sector: int, count: int, buffer: None = None, timeout_ms: int = 0) -> bytes: ...

    @overload
    def read(self, device: Device, sector: int, count: int, buffer: _B, timeout_ms: int = 0) -> _B: ...

    def read(
        self,
        device: Device,
        sector: int,
        count: int,
        buffer: Any = None,
        timeout_ms: int = 0,
    ) -> Any:
        """Reads ``count`` sectors at ``sector`` of ``device`` synchronously.

        Returns the data as bytes, or, when ``buffer`` is given, fills it
        and returns it. With ``timeout_ms`` the read is cancelled at the
        deadline (``Error`` with ``errno.ETIMEDOUT``; the buffer is then
        left alone). Raises :class:`dmio.Error` (``.errno``) on failure.
        Allowed inside notify callbacks.
        """
        req = self.io(
            Op.READ,
            [(device, sector, count)],
            buffer,
            timeout_ms=timeout_ms,
            cancel_on_timeout=timeout_ms > 0,
            sync=True,
        )
        req.result()
        if buffer is None:
            return bytes(memoryview(req.buffer)[: count * SECTOR_SIZE])
        return buffer

    def write(
        self,
        targets: Union[Device, RegionLike, Sequence[Union[Device, RegionLike]]],
        sector: Optional[int],
        data: BufferLike,
        timeout_ms: int = 0,
        *,
        flush: bool = False,
        fua: bool = False,
    ) -> None:
        """Writes ``data`` synchronously to one or more devices (a mirror).

        ``targets`` is a Device, a region, or a sequence of them: each
        Device gets ``len(data)`` bytes (a multiple of 512) at ``sector``;
        each region ``(device, sector, count)`` its own place (``sector``
        may then be None). With ``timeout_ms`` unfinished regions are
        cancelled at the deadline (``errno.ETIMEDOUT``). Raises
        :class:`dmio.Error` for the first failed region (all regions are
        final by then). Allowed inside notify callbacks.
        """
        nbytes = memoryview(data).nbytes
        if isinstance(targets, Device) or _is_region(targets):
            items: List[Any] = [targets]
        else:
            items = list(targets)
        regs: List[RegionLike] = []
        for t in items:
            if isinstance(t, Device):
                if sector is None:
                    raise ValueError("sector is needed when writing to a Device")
                if nbytes % SECTOR_SIZE:
                    raise ValueError(f"data length {nbytes} is not a multiple of {SECTOR_SIZE}")
                regs.append(Region(t, sector, nbytes // SECTOR_SIZE))
            else:
                regs.append(_to_region(t))
        req = self.io(
            Op.WRITE,
            regs,
            data,
            timeout_ms=timeout_ms,
            cancel_on_timeout=timeout_ms > 0,
            flush=flush,
            fua=fua,
            sync=True,
        )
        req.result()

    # -- control --------------------------------------------------------------------

    def cancel_device(self, device: Device) -> int:
        """Cancels every unfinished region of this client on ``device``.

        Each ends CANCELLED (``ECANCELED``); the library no longer touches
        their memory when this returns. Returns how many were cancelled.
        """
        n = self._lib.dm_io_cancel_by_device(self._handle(), device.handle)
        if n < 0:
            raise _call_error(n, "dm_io_cancel_by_device")
        return int(n)

    def set_hedge(self, delay_ms: int) -> None:
        """Sets the hedge delay of ``read_any`` reads submitted from now on.

        When a leg has not completed ``delay_ms`` after it started, the
        next one starts too; 0 (the default) starts the next leg only when
        one ends in ERROR.
        """
        rc = self._lib.dm_io_client_set_hedge(self._handle(), operator.index(delay_ms))
        if rc < 0:
            raise _call_error(rc, "dm_io_client_set_hedge")

    def stats(self) -> Stats:
        """The client's counters (``dm_io_client_stats``)."""
        st = ffi.dm_io_stats()
        rc = self._lib.dm_io_client_stats(self._handle(), ctypes.byref(st), ctypes.sizeof(st))
        if rc < 0:
            raise _call_error(rc, "dm_io_client_stats")
        return Stats.from_c(st)

    def close(self) -> None:
        """Destroys the client (idempotent; ``dm_io_client_destroy``).

        Every region not yet final ends CANCELLED (``ESHUTDOWN``); those
        notifications are delivered before this returns (called from one
        of this client's notify callbacks, right after that callback).
        Kernel IO that is stuck is not waited for.
        """
        with self._lock:
            p, self._ptr = self._ptr, None
        if p is not None:
            _live.discard(self)
            self._lib.dm_io_client_destroy(p)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.in_flight)} in flight"
        return (
            f"<dmio.Client devices={self.devices} min_ios={self.min_ios} "
            f"max_size={self.max_size} {state}>"
        )
