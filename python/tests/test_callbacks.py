"""Notify callbacks: threads, keep-alive, exceptions, re-entrancy."""

from __future__ import annotations

import errno
import gc
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from typing import Any, List

import pytest

import dmio
from dmio import Op, State
from dmio.request import _in_flight_count

from conftest import pattern

WAIT = 10.0


def test_notify_threads(client: dmio.Client, open_device) -> None:
    dev = open_device("dev")
    threads: List[int] = []
    client.io(Op.WRITE, [(dev, 0, 8)], b"a" * 4096, notify=lambda r, e: threads.append(threading.get_ident())).result(WAIT)
    assert threads and threads[0] != threading.get_ident()  # the completion thread
    threads.clear()
    req = client.io(
        Op.READ, [(dev, 0, 8)], notify=lambda r, e: threads.append(threading.get_ident()), sync=True
    )
    assert req.done  # sync: every region final when io() returns
    assert threads == [threading.get_ident()]  # inside dm_io, in this thread
    assert bytes(req.buffer) == b"a" * 4096


def test_in_flight_request_keeps_buffer_and_callback_alive(client: dmio.Client, open_device) -> None:
    dev = open_device("slow", faults="delay 200ms")
    with open(dev.path, "r+b") as f:
        f.write(pattern(4096, 1))
    seen: List[State] = []
    buf = dmio.Buffer(4096)
    wbuf = weakref.ref(buf)
    req = client.io(Op.READ, [(dev, 0, 8)], buf, notify=lambda r, e: seen.append(e.state))
    rid = req.id
    del buf, req
    gc.collect()
    assert wbuf() is not None  # held by the in-flight request
    (req,) = client.in_flight
    assert req.id == rid
    assert req.wait(WAIT)
    assert seen == [State.OK] and bytes(req.buffer) == pattern(4096, 1)
    assert client.in_flight == [] and _in_flight_count() == 0
    del req
    gc.collect()
    assert wbuf() is None  # released once done


def test_buffer_export_held_until_final(client: dmio.Client, open_device) -> None:
    dev = open_device("hung", faults="hang")
    ba = bytearray(4096)
    req = client.io(Op.READ, [(dev, 0, 8)], ba)
    with pytest.raises(BufferError):
        ba.extend(b"x")  # cannot move while the library may write into it
    req.cancel()
    assert req.wait(WAIT)
    ba.extend(b"x")  # released after the final state
    assert len(ba) == 4097


def test_exception_in_callback_is_reported_and_recorded(
    client: dmio.Client, open_device, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = open_device("dev")
    reported: List[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda args: reported.append(args))

    def boom(req: dmio.Request, ev: dmio.Event) -> None:
        raise ValueError(f"boom in region {ev.index}")

    req = client.io(Op.WRITE, [(dev, 0, 8), (dev, 8, 8)], b"q" * 4096, notify=boom)
    assert req.wait(WAIT)  # bookkeeping still done
    req.result()  # the IO itself succeeded
    assert [type(e) for e in req.callback_errors] == [ValueError, ValueError]
    deadline = time.monotonic() + WAIT
    while len(reported) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(reported) == 2
    assert all(isinstance(a.exc_value, ValueError) for a in reported)
    assert "boom" in str(reported[0].exc_value)
    # The client still works.
    assert client.read(dev, 0, 8) == b"q" * 4096


def test_exception_in_callback_default_hook_subprocess(env_with_package: dict, tmp_path) -> None:
    script = textwrap.dedent(
        f"""
        import dmio
        p = {str(tmp_path / "f")!r}
        open(p, "wb").truncate(1 << 20)
        with dmio.Client(1) as cl, dmio.Device(p) as dev:
            def bad(req, ev):
                raise RuntimeError("callback exploded")
            req = cl.io("write", [(dev, 0, 8)], b"x" * 4096, notify=bad)
            req.wait(10)
            assert len(req.callback_errors) == 1
            assert cl.read(dev, 0, 8) == b"x" * 4096
        print("survived")
        """
    )
    p = subprocess.run(
        [sys.executable, "-c", script], env=env_with_package, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    assert "survived" in p.stdout
    assert "RuntimeError: callback exploded" in p.stderr  # traceback on stderr


def test_wait_inside_callback_of_same_client_raises(client: dmio.Client, open_device) -> None:
    dev = open_device("slow", faults="delay 100ms")
    errors: List[BaseException] = []
    other: List[dmio.Request] = []

    def cb(req: dmio.Request, ev: dmio.Event) -> None:
        try:
            other[0].wait()
        except RuntimeError as e:
            errors.append(e)

    other.append(client.io(Op.READ, [(dev, 0, 8)]))
    fast = open_device("fast")
    req = client.io(Op.READ, [(fast, 0, 8)], notify=cb)
    assert req.wait(WAIT) and other[0].wait(WAIT)
    assert len(errors) == 1 and "deadlock" in str(errors[0])


def test_sync_io_and_cancel_inside_callback(client: dmio.Client, open_device) -> None:
    dev = open_device("dev")
    hung = open_device("hung", faults="hang")
    client.write(dev, 0, pattern(4096, 2))
    got: List[Any] = []
    target: List[dmio.Request] = []

    def cb(req: dmio.Request, ev: dmio.Event) -> None:
        got.append(client.read(dev, 0, 8))  # a SYNC dm_io from notify is allowed
        got.append(target[0].cancel())  # so is a cancel

    target.append(client.io(Op.READ, [(hung, 0, 8)]))
    req = client.io(Op.READ, [(dev, 8, 8)], notify=cb)
    assert req.wait(WAIT) and target[0].wait(WAIT)
    assert got == [pattern(4096, 2), 1]
    assert target[0].states[0].state is State.CANCELLED


def test_cancel_from_own_callback(client: dmio.Client, open_device) -> None:
    fast = open_device("fast")
    hung = open_device("hung", faults="hang")
    counts: List[int] = []

    def cb(req: dmio.Request, ev: dmio.Event) -> None:
        if ev.index == 1 and ev.state is State.OK:
            counts.append(req.cancel())

    req = client.io(Op.WRITE, [(hung, 0, 8), (fast, 0, 8)], b"c" * 4096, notify=cb)
    assert req.wait(WAIT)
    assert counts == [1]
    assert [s.state for s in req.states] == [State.CANCELLED, State.OK]


def test_close_client_from_callback(open_device) -> None:
    fast = open_device("fast")
    hung = open_device("hung", faults="hang")
    cl = dmio.Client(2)
    stuck = cl.io(Op.READ, [(hung, 0, 8)])
    req = cl.io(Op.READ, [(fast, 0, 8)], notify=lambda r, e: cl.close())
    assert req.wait(WAIT) and stuck.wait(WAIT)
    assert cl.closed
    assert stuck.states[0].state is State.CANCELLED and stuck.states[0].errno == errno.ESHUTDOWN


def test_done_callback(client: dmio.Client, open_device) -> None:
    dev = open_device("dev")
    done: List[dmio.Request] = []
    req = client.io(Op.READ, [(dev, 0, 8)], timeout_ms=0)
    req.add_done_callback(done.append)
    assert req.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while not done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done == [req]
    req.add_done_callback(done.append)  # already done: called at once
    assert done == [req, req]
