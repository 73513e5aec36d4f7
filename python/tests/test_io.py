"""IO semantics through the Python API: mirror writes, deadlines, cancel, errors, hedging."""

from __future__ import annotations

import errno
import time
from typing import List

import pytest

import dmio
from dmio import Op, State

from conftest import pattern, read_file

BYTES = 16 * 1024
S = BYTES // 512
WAIT = 10.0  # generous: a request that needs more is broken


def test_mirror_write_read_round_trip(client: dmio.Client, open_device) -> None:
    devs = [open_device(f"leg{i}") for i in range(3)]
    data = pattern(BYTES, 1)
    req = client.io(Op.WRITE, [(d, 64, S) for d in devs], data)
    assert req.wait(WAIT)
    states = req.result()
    assert [s.state for s in states] == [State.OK] * 3
    assert all(s.final and not s.timed_out and s.error_code == 0 for s in states)
    for d in devs:
        assert client.read(d, 64, S) == data
        assert read_file(d.path, 64 * 512, BYTES) == data
    # Regions at different places, one request.
    data2 = pattern(8192, 2)
    regs = [dmio.Region(devs[0], 0, 16), (devs[1], 128, 16), (devs[2], 2000, 16)]
    client.io("write", regs, bytearray(data2)).result(WAIT)
    for d, sector in zip(devs, (0, 128, 2000)):
        buf = bytearray(8192)
        assert client.read(d, sector, 16, buf) is buf
        assert bytes(buf) == data2
    # A read request fills the Buffer it allocates.
    r = client.io(Op.READ, [(devs[2], 2000, 16)])
    r.result(WAIT)
    assert isinstance(r.buffer, dmio.Buffer) and bytes(r.buffer) == data2


def test_timeout_then_late_ok(client: dmio.Client, open_device) -> None:
    slow = open_device("slow", faults="delay 300ms")
    good = open_device("good")
    data = pattern(BYTES, 3)
    seen: List[dmio.Event] = []
    t0 = time.monotonic()
    req = client.io(
        Op.WRITE, [(slow, 8, S), (good, 8, S)], data, timeout_ms=50, notify=lambda r, e: seen.append(e)
    )
    assert req.wait(WAIT)
    assert time.monotonic() - t0 < WAIT
    ev = req.events
    assert [e.state for e in ev[0]] == [State.TIMEOUT, State.OK]
    assert ev[0][0].error_code == -errno.ETIMEDOUT and ev[0][0].errno == errno.ETIMEDOUT
    assert [e.state for e in ev[1]] == [State.OK]
    s = req.states
    assert s[0].timed_out and s[0].final and s[0].state is State.OK
    assert not s[1].timed_out and s[1].state is State.OK
    assert req.timed_out
    req.result()  # a late OK is a success
    # The notify callback saw the same sequence, TIMEOUT first.
    assert [(e.index, e.state) for e in seen if e.index == 0] == [(0, State.TIMEOUT), (0, State.OK)]
    assert read_file(slow.path, 8 * 512, BYTES) == data
    # A late read: its data arrives with the late OK.
    r = client.io(Op.READ, [(slow, 8, S)], timeout_ms=50)
    assert r.wait(WAIT)
    assert [e.state for e in r.events[0]] == [State.TIMEOUT, State.OK]
    assert bytes(r.buffer) == data


def test_cancel_on_timeout(client: dmio.Client, open_device) -> None:
    hung = open_device("hung", faults="hang")
    good = open_device("good")
    req = client.io(
        Op.WRITE, [(hung, 0, S), (good, 0, S)], pattern(BYTES, 4), timeout_ms=50, cancel_on_timeout=True
    )
    assert req.wait(WAIT)
    s = req.states
    assert s[0].state is State.CANCELLED and s[0].errno == errno.ETIMEDOUT and not s[0].timed_out
    assert [e.state for e in s[0].events] == [State.CANCELLED]  # no TIMEOUT first
    assert s[1].state is State.OK
    with pytest.raises(dmio.Error) as ei:
        req.result()
    assert ei.value.errno == errno.ETIMEDOUT and ei.value.index == 0 and ei.value.request is req
    assert "deadline" in str(ei.value)


def test_cancel_hung_read_leaves_buffer_alone(client: dmio.Client, open_device) -> None:
    dev = open_device("hung", faults="hang")
    data = pattern(BYTES, 5)
    with open(dev.path, "r+b") as f:
        f.seek(64 * 512)
        f.write(data)
    buf = dmio.Buffer(BYTES)
    buf.fill(0xAB)
    req = client.io(Op.READ, [(dev, 64, S)], buf)
    time.sleep(0.05)
    assert not req.done
    assert req.cancel() == 1
    assert req.wait(WAIT)
    s = req.states[0]
    assert s.state is State.CANCELLED and s.errno == errno.ECANCELED
    with pytest.raises(dmio.Error) as ei:
        req.result()
    assert ei.value.errno == errno.ECANCELED
    assert req.cancel() == 0  # already done
    dev.set_faults("")  # the held read now completes into library memory
    time.sleep(0.3)
    assert bytes(buf) == b"\xab" * BYTES
    # The device works after this; the buffer is free again (closable).
    assert client.read(dev, 64, S) == data
    buf.close()


def test_cancel_write_with_one_leg_done(client: dmio.Client, open_device) -> None:
    hung = open_device("hung", faults="hang writes")
    good = open_device("good")
    req = client.io(Op.WRITE, [(hung, 0, S), (good, 0, S)], pattern(BYTES, 6))
    deadline = time.monotonic() + WAIT
    while req.states[1].state is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert req.states[1].state is State.OK
    assert req.cancel() == 1
    assert req.wait(WAIT)
    assert [s.state for s in req.states] == [State.CANCELLED, State.OK]


def test_cancel_device(client: dmio.Client, open_device) -> None:
    hung = open_device("hung", faults="hang")
    good = open_device("good")
    r1 = client.io(Op.WRITE, [(hung, 0, S), (good, 0, S)], pattern(BYTES, 7))
    r2 = client.io(Op.READ, [(hung, 64, S)])
    time.sleep(0.05)
    assert client.cancel_device(hung) == 2
    assert r1.wait(WAIT) and r2.wait(WAIT)
    assert r1.states[0].state is State.CANCELLED and r1.states[1].state is State.OK
    assert r2.states[0].state is State.CANCELLED and r2.states[0].errno == errno.ECANCELED
    assert client.cancel_device(hung) == 0


def test_error_spec(client: dmio.Client, open_device) -> None:
    bad = open_device("bad", faults="error reads errno=EIO")
    req = client.io(Op.READ, [(bad, 0, S)])
    assert req.wait(WAIT)
    s = req.states[0]
    assert s.state is State.ERROR and s.error_code == -errno.EIO
    with pytest.raises(dmio.Error) as ei:
        req.result()
    assert ei.value.errno == errno.EIO and "Input/output error" in str(ei.value)
    # Writes to a sector range fail with the given errno; elsewhere they work.
    bad.set_faults("error writes sectors=0-2047 errno=ENOSPC")
    good = open_device("good")
    req = client.io(Op.WRITE, [(bad, 0, S), (good, 0, S)], pattern(BYTES, 8))
    assert req.wait(WAIT)
    assert [(s.state, s.errno) for s in req.states] == [(State.ERROR, errno.ENOSPC), (State.OK, 0)]
    with pytest.raises(dmio.Error) as ei:
        req.result()
    assert ei.value.errno == errno.ENOSPC and ei.value.index == 0


def test_sync_helpers_raise_error_with_errno(client: dmio.Client, open_device, make_file) -> None:
    dev = open_device("dev", faults="error reads errno=EIO")
    with pytest.raises(dmio.Error) as ei:
        client.read(dev, 0, 8)
    assert ei.value.errno == errno.EIO and isinstance(ei.value, OSError)
    dev.set_faults("error writes errno=ENOSPC")
    with pytest.raises(dmio.Error) as ei:
        client.write(dev, 0, b"x" * 4096)
    assert ei.value.errno == errno.ENOSPC
    dev.set_faults("")
    # Refused by the library before starting: message from dm_io_last_error().
    with pytest.raises(dmio.Error) as ei:
        client.read(dev, dev.sectors, 8)  # past the end
    assert ei.value.errno == errno.EINVAL
    assert ei.value.strerror.startswith("dm_io:") and ei.value.strerror == dmio.last_error()
    ro = dmio.Device(make_file("ro"), read_only=True)
    with ro, pytest.raises(dmio.Error) as ei:
        client.write(ro, 0, b"y" * 512)
    assert ei.value.errno == errno.EBADF and ei.value.strerror
    # A deadline on a sync helper cancels at the deadline, buffer untouched.
    dev.set_faults("hang reads")
    buf = bytearray(b"\x5a" * 4096)
    t0 = time.monotonic()
    with pytest.raises(dmio.Error) as ei:
        client.read(dev, 0, 8, buf, timeout_ms=50)
    assert ei.value.errno == errno.ETIMEDOUT and time.monotonic() - t0 < WAIT
    dev.set_faults("")
    time.sleep(0.1)
    assert buf == b"\x5a" * 4096
    # Mirror write through the helper, and writing regions.
    other = open_device("other")
    client.write([dev, other], 16, pattern(4096, 9))
    assert client.read(other, 16, 8) == pattern(4096, 9) == client.read(dev, 16, 8)
    client.write([(dev, 32, 1), (other, 40, 1)], None, b"z" * 512)
    assert client.read(dev, 32, 1) == b"z" * 512 == client.read(other, 40, 1)
    # Bad fault spec and bad open.
    with pytest.raises(dmio.Error) as ei:
        dev.set_faults("explode now")
    assert ei.value.errno == errno.EINVAL and ei.value.strerror
    with pytest.raises(dmio.Error) as ei:
        dmio.Device("/nonexistent/dir/file")
    assert ei.value.errno == errno.ENOENT


def test_target_shapes(client: dmio.Client, open_device) -> None:
    a, b, c = open_device("a"), open_device("b"), open_device("c")
    client.write((a, b, c), 0, b"1" * 512)  # a tuple of three devices is a mirror
    client.write((a, b), 8, b"2" * 512)  # so is a pair
    client.write((c, 16, 1), None, b"3" * 512)  # one region tuple
    client.write(dmio.Region(c, 17, 1), None, b"4" * 512)
    assert [client.read(d, 0, 1) for d in (a, b, c)] == [b"1" * 512] * 3
    assert client.read(b, 8, 1) == b"2" * 512
    assert client.io(Op.READ, (c, 16, 1)).result(WAIT)[0].ok  # a single region for io()
    assert client.read(c, 16, 2) == b"3" * 512 + b"4" * 512


def test_python_side_validation(client: dmio.Client, open_device) -> None:
    dev = open_device("dev")
    with pytest.raises(ValueError):
        client.io(Op.READ, [(dev, 0, 8)], bytearray(100))  # shorter than the region
    with pytest.raises(TypeError):
        client.io(Op.READ, [(dev, 0, 8)], b"\0" * 4096)  # read into read-only memory
    with pytest.raises(TypeError):
        client.io(Op.WRITE, [(dev, 0, 8)])  # a write without data
    with pytest.raises(TypeError):
        client.io(Op.WRITE, [("not a device", 0, 8)], b"\0" * 4096)
    with pytest.raises(ValueError):
        client.io(Op.READ, [])
    with pytest.raises(dmio.Error) as ei:  # two regions without read_any
        client.io(Op.READ, [(dev, 0, 8), (dev, 8, 8)])
    assert ei.value.errno == errno.EINVAL
    assert client.in_flight == []


def test_flush_and_fua(client: dmio.Client, open_device) -> None:
    a, b = open_device("a"), open_device("b")
    client.write([a, b], 0, pattern(4096, 10), flush=True, fua=True)
    assert client.read(b, 0, 8) == pattern(4096, 10)
    # An empty flush: count 0 with flush, no data needed.
    client.io(Op.WRITE, [(a, 0, 0), (b, 0, 0)], flush=True).result(WAIT)


def test_stats(open_device) -> None:
    slow = open_device("slow", faults="delay 200ms")
    bad = open_device("bad", faults="error reads errno=EIO")
    with dmio.Client(2, 4, 64 * 1024) as cl:
        st0 = cl.stats()
        assert st0.requests == 0 and st0.private_bytes_bound == 2 * 4 * 64 * 1024
        assert st0.engine in (dmio.Engine.URING, dmio.Engine.AIO, dmio.Engine.THREADS)
        cl.io(Op.WRITE, [(slow, 0, 8)], b"s" * 4096, timeout_ms=20).result(WAIT)  # TIMEOUT, late OK
        with pytest.raises(dmio.Error):
            cl.read(bad, 0, 8)
        slow.set_faults("hang")
        r = cl.io(Op.READ, [(slow, 0, 8)])
        time.sleep(0.02)
        r.cancel()
        r.wait(WAIT)
        st = cl.stats()
        assert isinstance(st, dmio.Stats)
        assert (st.requests, st.regions) == (3, 3)
        assert (st.ok, st.timeouts, st.late_completions, st.errors, st.cancelled) == (1, 1, 1, 1, 1)
        assert st.regions_in_flight == 0
        assert 0 < st.private_bytes_high_water <= st.private_bytes_bound
        slow.set_faults("")


def test_hedged_read(open_device) -> None:
    a = open_device("legA", faults="delay read=3s")
    b = open_device("legB")
    da, db = pattern(8192, 11), pattern(8192, 12)
    with open(a.path, "r+b") as f:
        f.write(da)
    with open(b.path, "r+b") as f:
        f.write(db)
    with dmio.Client(2, 4, 64 * 1024) as cl:
        cl.set_hedge(20)
        t0 = time.monotonic()
        req = cl.io(Op.READ, [(a, 0, 16), (b, 0, 16)], read_any=True)
        assert req.wait(WAIT)
        assert time.monotonic() - t0 < 2.5  # well before the slow leg's 3 s
        assert [s.state for s in req.states] == [State.CANCELLED, State.OK]
        req.result()  # read_any: one OK leg is a success
        assert bytes(req.buffer) == db
        assert cl.stats().hedges == 1
        # Hedging off: the second leg starts only when the first fails.
        cl.set_hedge(0)
        a.set_faults("error reads errno=EIO")
        req = cl.io(Op.READ, [(a, 0, 16), (b, 0, 16)], read_any=True)
        req.result(WAIT)
        assert [(s.state, s.errno) for s in req.states] == [(State.ERROR, errno.EIO), (State.OK, 0)]
        assert bytes(req.buffer) == db
        # Both legs failing: the first ERROR is raised.
        b.set_faults("error reads errno=EIO")
        req = cl.io(Op.READ, [(a, 0, 16), (b, 0, 16)], read_any=True)
        with pytest.raises(dmio.Error) as ei:
            req.result(WAIT)
        assert ei.value.errno == errno.EIO


def test_zero_copy_round_trip_and_cancel_waits(client: dmio.Client, open_device) -> None:
    a, b = open_device("zc_a"), open_device("zc_b")
    data = dmio.Buffer(BYTES)
    data[:] = pattern(BYTES, 31)
    client.io(Op.WRITE, [(a, 8, S), (b, 8, S)], data, zero_copy=True).result(WAIT)
    assert read_file(a.path, 8 * 512, BYTES) == bytes(data)
    buf = dmio.Buffer(BYTES)
    client.io(Op.READ, [(b, 8, S)], buf, zero_copy=True).result(WAIT)
    assert bytes(buf) == bytes(data)
    assert client.stats().private_bytes_high_water == 0
    # Refused: hedged reads, memory O_DIRECT cannot use.
    with pytest.raises(dmio.Error) as e:
        client.io(Op.READ, [(a, 8, S), (b, 8, S)], buf, zero_copy=True, read_any=True)
    assert e.value.errno == errno.EINVAL
    # A cancel on a hung device is counted at once, notified when the IO ends.
    a.set_faults("hang")
    req = client.io(Op.READ, [(a, 8, S)], buf, zero_copy=True)
    time.sleep(0.02)
    assert req.cancel() == 1
    assert not req.wait(0.2)
    a.set_faults("")
    assert req.wait(WAIT)
    assert [e.state for e in req.events[0]] == [State.CANCELLED]
    assert req.events[0][0].error_code == -errno.ECANCELED
