"""Page-aligned buffers and the conversion of Python buffers to C memory."""

from __future__ import annotations

import ctypes
import mmap
from typing import Any, Tuple, Union

from ._types import PAGE_SIZE

__all__ = ["Buffer", "BufferLike"]

#: Anything that supports the buffer protocol (bytes, bytearray, memoryview,
#: :class:`Buffer`, array.array, numpy arrays...). Reads need a writable one.
BufferLike = Union[bytes, bytearray, memoryview, mmap.mmap, Any]


class Buffer(mmap.mmap):
    """Zero-filled, page-aligned (4096 bytes) anonymous memory of ``size`` bytes.

    A Buffer is an anonymous :class:`mmap.mmap`, so it supports the buffer
    protocol: ``memoryview(buf)`` (slice it to address part of the buffer,
    e.g. ``memoryview(buf)[4096:8192]``), ``bytes(buf)``, ``len(buf)``,
    ``buf[i]``, ``buf[a:b]`` (gives bytes) and slice assignment. libdmio
    copies through its own private memory, so any writable buffer works for
    IO; a Buffer is simply the natural, aligned choice.

    While a request uses the buffer, it cannot be closed or resized
    (``BufferError``): the request holds an export of it until every region
    is final.
    """

    def __new__(cls, size: int) -> "Buffer":
        """Maps ``size`` bytes (``size`` > 0) of zeroed, page-aligned memory."""
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"Buffer size must be an int, not {type(size).__name__}")
        if size <= 0:
            raise ValueError(f"Buffer size must be positive, got {size}")
        return super().__new__(
            cls, -1, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )

    def __init__(self, size: int) -> None:
        """See :meth:`__new__` (the mapping is made there)."""

    @classmethod
    def from_bytes(cls, data: BufferLike) -> "Buffer":
        """A new Buffer holding a copy of ``data`` (its length is ``len(data)``)."""
        mv = memoryview(data).cast("B")
        buf = cls(mv.nbytes)
        buf[: mv.nbytes] = mv
        return buf

    @property
    def address(self) -> int:
        """The address of the first byte (a multiple of 4096)."""
        c = ctypes.c_char.from_buffer(self)
        try:
            return ctypes.addressof(c)
        finally:
            del c

    def fill(self, byte: int) -> None:
        """Sets every byte of the buffer to ``byte`` (0..255)."""
        ctypes.memset(self.address, byte, len(self))

    def __repr__(self) -> str:
        if self.closed:
            return "<dmio.Buffer closed>"
        return f"<dmio.Buffer {len(self)} bytes at {self.address:#x}>"


def c_memory(obj: BufferLike, need: int, writable: bool) -> Tuple[int, int, Any]:
    """Address, length and keep-alive object of a buffer's memory.

    ``writable``: the library will write into it (a read). The keep-alive
    object holds an export of ``obj`` (so it cannot be resized or closed)
    and must be kept until the library no longer uses the memory. A
    read-only buffer given for a write is copied.
    """
    try:
        mv = memoryview(obj)
    except TypeError:
        raise TypeError(
            f"a buffer (bytes, bytearray, memoryview, dmio.Buffer...) is needed, "
            f"not {type(obj).__name__}"
        ) from None
    if not mv.c_contiguous:
        raise ValueError("the buffer must be C-contiguous")
    if mv.nbytes < need:
        raise ValueError(f"the buffer has {mv.nbytes} bytes, the largest region needs {need}")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    n = max(mv.nbytes, 1)
    if mv.readonly:
        if writable:
            raise TypeError("a read needs a writable buffer (bytearray, dmio.Buffer...)")
        copy = (ctypes.c_char * n).from_buffer_copy(mv.tobytes().ljust(n, b"\0"))
        return ctypes.addressof(copy), mv.nbytes, copy
    if mv.nbytes == 0:
        raise ValueError("the buffer is empty")
    arr = (ctypes.c_char * mv.nbytes).from_buffer(mv)
    return ctypes.addressof(arr), mv.nbytes, (arr, mv)

