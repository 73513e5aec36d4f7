"""The asyncio helpers: wait_async, io_async, callbacks on the loop, cancellation."""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from typing import List

import pytest

import dmio
from dmio import Op, State

from conftest import pattern


def test_io_async_and_wait_async(client: dmio.Client, open_device) -> None:
    a = open_device("a")
    slow = open_device("slow", faults="delay 100ms")

    async def main() -> None:
        loop_thread = threading.get_ident()
        threads: List[int] = []
        data = pattern(8192, 1)
        req = await client.io_async(
            Op.WRITE, [(a, 0, 16), (slow, 0, 16)], data, notify=lambda r, e: threads.append(threading.get_ident())
        )
        assert req.done and [s.state for s in req.states] == [State.OK, State.OK]
        assert threads == [loop_thread, loop_thread]  # notify hopped to the loop
        # Several requests awaited concurrently.
        reqs = [client.io(Op.READ, [(d, 0, 16)]) for d in (a, slow, a)]
        done = await asyncio.gather(*(r.wait_async() for r in reqs))
        assert done == reqs
        assert all(bytes(r.buffer) == data for r in reqs)
        # Already done: returns at once.
        assert await reqs[0].wait_async() is reqs[0]

    asyncio.run(asyncio.wait_for(main(), 20))


def test_io_async_cancellation_cancels_io(client: dmio.Client, open_device) -> None:
    hung = open_device("hung", faults="hang")  # held, with its private memory, until set_faults
    buf = bytearray(b"\x11" * 4096)  # the device holds zeros

    async def main() -> dmio.Request:
        task = asyncio.ensure_future(client.io_async(Op.READ, [(hung, 0, 8)], buf))
        while not client.in_flight and not task.done():  # submitted at the task's first step
            await asyncio.sleep(0)
        (req,) = client.in_flight
        with pytest.raises(asyncio.TimeoutError):  # the read is held: never done by itself
            await asyncio.wait_for(task, 0.05)
        assert task.cancelled()
        return req

    req = asyncio.run(main())
    # Cancelling the task cancelled the IO: CANCELLED by the cancel call,
    # while the read itself is still held in the library.
    assert req.wait(10)
    assert req.events == [[dmio.Event(0, State.CANCELLED, -errno.ECANCELED)]]
    st = client.stats()
    assert (st.cancelled, st.regions_in_flight) == (1, 0)
    assert st.private_bytes_in_use > 0
    # Let the held read run, and wait until it really ended (its private
    # memory is released then): only now can the check below see a write
    # into the caller's buffer, if there were one.
    hung.set_faults("")
    deadline = time.monotonic() + 10
    while client.stats().private_bytes_in_use and time.monotonic() < deadline:
        time.sleep(0.005)
    assert client.stats().private_bytes_in_use == 0
    assert buf == b"\x11" * 4096


def test_wait_async_cancelled_keeps_io(client: dmio.Client, open_device) -> None:
    hung = open_device("hung", faults="hang")
    req = client.io(Op.READ, [(hung, 0, 8)])

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(req.wait_async(), 0.05)
        assert not req.done  # waiting stopped, the IO did not
        hung.set_faults("")
        await asyncio.wait_for(req.wait_async(), 10)

    asyncio.run(main())
    req.result()


def test_io_async_errors(client: dmio.Client, open_device) -> None:
    bad = open_device("bad", faults="error reads errno=EIO")

    async def main() -> None:
        req = await client.io_async(Op.READ, [(bad, 0, 8)])
        with pytest.raises(dmio.Error) as ei:
            req.result()
        assert ei.value.errno == errno.EIO

    asyncio.run(main())
