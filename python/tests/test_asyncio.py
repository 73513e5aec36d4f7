"""The asyncio helpers: wait_async, io_async, callbacks on the loop, cancellation."""

from __future__ import annotations

import asyncio
import errno
import threading
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
    hung = open_device("hung", faults="hang")
    buf = bytearray(b"\x11" * 4096)

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.io_async(Op.READ, [(hung, 0, 8)], buf), 0.1)

    asyncio.run(main())
    assert client.in_flight == [] or all(r.wait(10) for r in client.in_flight)
    hung.set_faults("")
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
