"""Requests in flight, and the one C notify trampoline that drives them.

(Over 400 lines on purpose: the request object, its registry and the
trampoline share one lock and one invariant, that an id lives in the
registry until its last final notification.)

Every request submitted by :class:`dmio.Client` uses the same module-level
``dm_io_notify_fn`` (:data:`_TRAMPOLINE`, alive for the life of the
process); its ``context`` is the request's id in :data:`_registry`, which
holds the :class:`Request` (and through it the caller's buffer, the
regions' devices and the user's notify callable) until every region is
final. So nothing the library may still call or touch can be collected
while IO is in flight.
"""

from __future__ import annotations

import asyncio
import errno as _errno
import itertools
import logging
import threading
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Optional,
    Tuple,
)

from . import ffi
from ._types import Error, Event, Op, Region, RegionState, State, _call_error, _describe_errno

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client

__all__ = ["Request", "NotifyFn"]

_log = logging.getLogger("dmio")

#: A notify callable: ``notify(request, event)``. For asynchronous requests
#: it runs on the client's completion thread (one callback at a time per
#: client); for ``sync=True`` requests, in the thread that called ``io``.
NotifyFn = Callable[["Request", Event], Any]

_registry: Dict[int, "Request"] = {}
_registry_lock = threading.Lock()
_ids = itertools.count(1)

# thread ident -> stack of (client, request, sync) whose notify runs there.
_dispatching: Dict[int, List[Tuple["Client", "Request", bool]]] = {}


def _register(req: "Request") -> None:
    with _registry_lock:
        _registry[req.id] = req


def _unregister(req: "Request") -> None:
    with _registry_lock:
        _registry.pop(req.id, None)


def _in_flight_count() -> int:
    """How many requests are registered (not yet final); for tests."""
    with _registry_lock:
        return len(_registry)


def _trampoline(st_ptr: Any, ctx: Optional[int]) -> None:
    """The C notify function of every request: routes the event to its Request.

    An exception of the user's callback is recorded on the request and then
    re-raised here, so ctypes reports it through ``sys.unraisablehook``
    (default: a traceback on stderr) and returns normally to the library.
    """
    exc: Optional[BaseException] = None
    try:
        st = st_ptr[0]
        index, state, error_code, hdl = st.index, st.state, st.error_code, st.hdl
        with _registry_lock:
            req = _registry.get(ctx or 0)
        if req is None:
            _log.error(
                "libdmio notified an unknown request (context %r, region %d, state %d)",
                ctx,
                index,
                state,
            )
            return
        exc = req._on_notify(index, state, error_code, hdl)
    except BaseException as e:  # a bug here must not be lost either
        exc = e
    if exc is not None:
        raise exc


#: The one C callback used for every request (never freed).
_TRAMPOLINE = ffi.dm_io_notify_fn(_trampoline)


def _resolve(fut: "asyncio.Future[Request]", req: "Request") -> None:
    if not fut.done():
        fut.set_result(req)


class Request:
    """One submitted dm_io request over one or more regions.

    Created by :meth:`dmio.Client.io`. Each region is notified at most once
    with TIMEOUT, then exactly once with a final state (OK, CANCELLED or
    ERROR); :attr:`states` and :attr:`events` record them. The request keeps
    its buffer, devices and notify callable alive until every region is
    final (:attr:`done`).
    """

    def __init__(
        self,
        client: "Client",
        op: Op,
        regions: Tuple[Region, ...],
        buffer: Any,
        keep: Any,
        notify: Optional[NotifyFn],
        timeout_ms: int,
        read_any: bool,
        sync: bool,
    ) -> None:
        """Internal: use :meth:`dmio.Client.io`."""
        self.id: int = next(_ids)
        """The request's id (the ``context`` pointer given to libdmio)."""
        self.client: "Client" = client
        """The client the request was submitted to."""
        self.op: Op = op
        """READ or WRITE."""
        self.regions: Tuple[Region, ...] = regions
        """The regions, in submission order (region ``i`` is ``regions[i]``)."""
        self.buffer: Any = buffer
        """The memory of the request (for a read, where the data lands)."""
        self.timeout_ms: int = timeout_ms
        """The deadline in milliseconds (0: none)."""
        self.read_any: bool = read_any
        """Whether this is a hedged read (``DM_IO_READ_ANY``)."""
        self.sync: bool = sync
        """Whether the request was submitted with ``DM_IO_SYNC``."""
        self.callback_errors: List[BaseException] = []
        """Exceptions raised by the notify or done callbacks (also reported
        through ``sys.unraisablehook``)."""
        self._lib = client._lib
        self._notify = notify
        self._keep = keep
        self._cond = threading.Condition(threading.Lock())
        self._events: List[List[Event]] = [[] for _ in regions]
        self._final: List[Optional[Event]] = [None] * len(regions)
        self._nfinal = 0
        self._done = False
        self._hdl: Optional[int] = None
        self._waiters: List[Tuple[asyncio.AbstractEventLoop, "asyncio.Future[Request]"]] = []
        self._done_callbacks: List[Callable[["Request"], Any]] = []

    # -- called by the trampoline / the client ---------------------------------

    def _adopt_handle(self, hdl: Optional[int]) -> None:
        """Keeps the referenced handle ``dm_io`` returned (one reference in all)."""
        if not hdl:
            return
        with self._cond:
            if self._hdl is None:
                self._hdl = hdl
                return
        # The trampoline took its own reference first: drop dm_io's.
        self._lib.dm_io_handle_put(hdl)

    def _any_event(self) -> bool:
        with self._cond:
            return any(self._events)

    def _abandon(self) -> None:
        """Submission failed: nothing started, forget everything."""
        _unregister(self)
        self.client._forget(self)
        with self._cond:
            self._keep = None

    def _on_notify(
        self, index: int, state: int, error_code: int, hdl: Optional[int]
    ) -> Optional[BaseException]:
        try:
            st = State(state)
        except ValueError:
            _log.error("libdmio notified an unknown state %d for %r", state, self)
            return None
        ev = Event(index, st, error_code)
        last = False
        with self._cond:
            if index >= len(self.regions):
                _log.error("libdmio notified region %d of %r", index, self)
                return None
            if self._hdl is None and hdl:
                # Notified before dm_io() returned the handle: take our own
                # reference so cancel() works from this very callback.
                self._hdl = self._lib.dm_io_handle_get(hdl) or None
            self._events[index].append(ev)
            if ev.final:
                if self._final[index] is not None:
                    _log.error("region %d of %r notified after its final state", index, self)
                else:
                    self._final[index] = ev
                    self._nfinal += 1
                    last = self._nfinal == len(self.regions)
        first: Optional[BaseException] = None
        stack = _dispatching.setdefault(threading.get_ident(), [])
        stack.append((self.client, self, self.sync))
        try:
            if self._notify is not None:
                try:
                    self._notify(self, ev)
                except BaseException as e:
                    first = self._callback_failed(e, f"notify callback ({ev.state.name} of region {index})")
            if last:
                e2 = self._finish()
                first = first or e2
        finally:
            stack.pop()
            if not stack:
                _dispatching.pop(threading.get_ident(), None)
        return first

    def _callback_failed(self, e: BaseException, where: str) -> BaseException:
        with self._cond:
            self.callback_errors.append(e)
        if hasattr(e, "add_note"):
            try:
                e.add_note(f"dmio: raised by the {where} of {self!r}")
            except Exception:
                pass
        return e

    def _finish(self) -> Optional[BaseException]:
        """Every region is final: wake waiters, release the buffer, forget."""
        with self._cond:
            self._done = True
            self._keep = None  # releases the export of the caller's buffer
            waiters, self._waiters = self._waiters, []
            callbacks, self._done_callbacks = self._done_callbacks, []
            self._cond.notify_all()
        _unregister(self)
        self.client._forget(self)
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, fut, self)
            except RuntimeError:  # the loop is closed
                pass
        first: Optional[BaseException] = None
        for cb in callbacks:
            try:
                cb(self)
            except BaseException as e:
                e = self._callback_failed(e, "done callback")
                if first is None:
                    first = e
                else:
                    _log.error("exception in a done callback of %r", self, exc_info=e)
        return first

    def _check_wait_allowed(self) -> None:
        for client, req, sync in _dispatching.get(threading.get_ident(), ()):
            if (sync and req is self) or (not sync and client is self.client):
                raise RuntimeError(
                    f"waiting for {self!r} inside a notify callback of the same client "
                    "would deadlock: notifications are delivered one at a time on the "
                    "client's completion thread"
                )

    # -- public API -------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True when every region is final and every callback has returned."""
        with self._cond:
            return self._done

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until every region is final; True if so, False if ``timeout`` s passed.

        Raises RuntimeError when called, for an unfinished request, from a
        notify callback of the same client (that would deadlock).
        """
        with self._cond:
            if self._done:
                return True
        self._check_wait_allowed()
        with self._cond:
            return self._cond.wait_for(lambda: self._done, timeout)

    async def wait_async(self) -> "Request":
        """Awaits completion on the running asyncio loop; returns the request.

        The completion thread hops to the loop with ``call_soon_threadsafe``.
        Cancelling the awaiting task stops the wait, not the IO (use
        :meth:`cancel`, or :meth:`dmio.Client.io_async`, which cancels).
        """
        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[Request]" = loop.create_future()
        with self._cond:
            if self._done:
                return self
            self._waiters.append((loop, fut))
        try:
            await fut
        except asyncio.CancelledError:
            with self._cond:
                try:
                    self._waiters.remove((loop, fut))
                except ValueError:
                    pass
            raise
        return self

    def add_done_callback(self, fn: Callable[["Request"], Any]) -> None:
        """Calls ``fn(request)`` once every region is final.

        It runs where the last notification runs (the completion thread, or
        the submitting thread for ``sync=True``), or at once, in this
        thread, when the request is already done.
        """
        with self._cond:
            if not self._done:
                self._done_callbacks.append(fn)
                return
        fn(self)

    def cancel(self) -> int:
        """Cancels every region not yet final (``dm_io_cancel_by_handle``).

        Each ends CANCELLED with ``-ECANCELED``. When this returns the
        library no longer touches the request's buffer (its contents are
        undefined for a cancelled read); for a ``zero_copy`` request, not
        until the regions' CANCELLED, which waits for the running IO. Returns how many regions were
        cancelled (0 when the request is done or its client is closed).
        """
        with self._cond:
            if self._done:
                return 0
            hdl = self._hdl
        cl = self.client._ptr
        if hdl is None or cl is None:
            return 0
        n = self._lib.dm_io_cancel_by_handle(cl, hdl)
        if n < 0:
            if self.client.closed:
                return 0
            raise _call_error(n, "dm_io_cancel_by_handle")
        return int(n)

    @property
    def events(self) -> List[List[Event]]:
        """Every notification so far, per region, in order (a copy)."""
        with self._cond:
            return [list(evs) for evs in self._events]

    @property
    def states(self) -> List[RegionState]:
        """A snapshot of every region: latest state, error, TIMEOUT seen, final."""
        with self._cond:
            out = []
            for i, evs in enumerate(self._events):
                fin = self._final[i]
                last = fin if fin is not None else (evs[-1] if evs else None)
                out.append(
                    RegionState(
                        index=i,
                        region=self.regions[i],
                        state=last.state if last is not None else None,
                        error_code=last.error_code if last is not None else 0,
                        timed_out=any(e.state is State.TIMEOUT for e in evs),
                        final=fin is not None,
                        events=tuple(evs),
                    )
                )
            return out

    @property
    def timed_out(self) -> bool:
        """True when any region was notified TIMEOUT."""
        return any(s.timed_out for s in self.states)

    def exception(self, timeout: Optional[float] = None) -> Optional[Error]:
        """Waits like :meth:`result`; returns its :class:`dmio.Error` instead of raising (or None)."""
        if not self.wait(timeout):
            raise TimeoutError(f"{self!r} is not done after {timeout} s")
        with self._cond:
            finals = list(self._final)
        assert all(f is not None for f in finals)
        if self.read_any:
            if any(f.state is State.OK for f in finals if f):
                return None
        elif all(f.state is State.OK for f in finals if f):
            return None
        for want in (State.ERROR, State.CANCELLED):
            for i, f in enumerate(finals):
                if f is not None and f.state is want:
                    return Error(f.errno, self._describe(i, f), request=self, index=i)
        return None  # pragma: no cover

    def result(self, timeout: Optional[float] = None) -> List[RegionState]:
        """Waits for completion and returns :attr:`states`, or raises :class:`dmio.Error`.

        Success: every region ended OK (for a hedged ``read_any`` read: one
        region did). Otherwise the error is the first region that ended
        ERROR, else the first CANCELLED one (``ETIMEDOUT`` for a deadline
        with ``cancel_on_timeout``, ``ECANCELED`` for a cancel,
        ``ESHUTDOWN`` for a closed client), as a SYNC ``dm_io`` reports it.
        A TIMEOUT followed by a late OK is a success (see
        :attr:`RegionState.timed_out`). Raises TimeoutError if ``timeout``
        seconds pass first. Exceptions of callbacks are not raised here;
        see :attr:`callback_errors`.
        """
        err = self.exception(timeout)
        if err is not None:
            raise err
        return self.states

    def _describe(self, i: int, ev: Event) -> str:
        r = self.regions[i]
        where = f"{self.op.name.lower()} of region {i} ({r.device.path}, sector {r.sector}, {r.count} sectors)"
        if ev.state is State.CANCELLED:
            why = {
                _errno.ETIMEDOUT: "cancelled at its deadline",
                _errno.ECANCELED: "cancelled",
                _errno.ESHUTDOWN: "cancelled: the client was closed",
            }.get(ev.errno, "cancelled")
            return f"{where} {why} ({_describe_errno(ev.error_code)})"
        return f"{where} failed: {_describe_errno(ev.error_code)}"

    def __repr__(self) -> str:
        with self._cond:
            states = [
                (f.state.name if f is not None else ("TIMEOUT" if evs else "running"))
                for f, evs in zip(self._final, self._events)
            ]
            done = "done" if self._done else "in flight"
        return f"<dmio.Request #{self.id} {self.op.name.lower()} {done} [{', '.join(states)}]>"

    def __del__(self) -> None:
        hdl = self.__dict__.get("_hdl")
        if hdl:
            self._hdl = None
            try:
                self._lib.dm_io_handle_put(hdl)
            except Exception:  # interpreter shutdown
                pass
