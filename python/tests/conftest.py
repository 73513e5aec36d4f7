"""Shared fixtures: temporary backing files, devices and a client.

The tests import the package from this source tree (``python/``) so they
run without installing it; the library is found through DMIO_LIBRARY or
the build tree (``make all``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dmio  # noqa: E402

MiB = 1 << 20


def pattern(n: int, seed: int) -> bytes:
    """``n`` bytes of a pattern that differs per seed and per 512-byte sector."""
    return bytes((seed * 31 + k * 7 + (k >> 9)) & 0xFF for k in range(n))


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[..., str]:
    """Creates a backing file of ``size`` bytes (zeros, or ``fill``) and returns its path."""

    def make(name: str, size: int = MiB, fill: Optional[bytes] = None) -> str:
        p = tmp_path / name
        with open(p, "wb") as f:
            if fill is None:
                f.truncate(size)
            else:
                f.write((fill * (size // len(fill) + 1))[:size])
        return str(p)

    return make


@pytest.fixture
def open_device(make_file: Callable[..., str]) -> Iterator[Callable[..., dmio.Device]]:
    """Opens a device on a new backing file; releases faults and closes it afterwards."""
    devices: List[dmio.Device] = []

    def open_(name: str, faults: Optional[str] = None, size: int = MiB, **kw: object) -> dmio.Device:
        dev = dmio.Device(make_file(name, size), faults=faults, **kw)  # type: ignore[arg-type]
        devices.append(dev)
        return dev

    yield open_
    for d in devices:
        if not d.closed:
            d.set_faults("")  # held IO completes into library memory
            d.close()


@pytest.fixture
def client() -> Iterator[dmio.Client]:
    """A client for up to 4 regions per request."""
    with dmio.Client(4, 8, 64 * 1024) as c:
        yield c


def read_file(path: str, offset: int, n: int) -> bytes:
    """Reads a backing file directly (bypassing libdmio)."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


@pytest.fixture
def env_with_package() -> dict:
    """Environment for subprocesses that import dmio from this source tree."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env
