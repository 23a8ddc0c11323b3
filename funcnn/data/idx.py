"""Reading and writing the IDX format of MNIST and Fashion-MNIST.

An IDX file is a tiny header followed by raw numbers:

    bytes 0-1   0x00 0x00           magic
    byte  2     dtype code          0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                                    0x0D float32, 0x0E float64
    byte  3     ndim
    then        ndim big-endian int32 sizes, e.g. 60000, 28, 28
    then        the data, C order, big-endian

Files are often gzip-compressed; :func:`read_idx` notices gzip by its own magic
bytes (0x1f 0x8b), so ``.gz`` or not makes no difference. The data goes straight
into one preallocated array (no Python loop over pixels, no extra copy).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

# IDX dtype code -> numpy dtype (big-endian on disk).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _fail(name: str, problem: str) -> ValueError:
    return ValueError(
        f"{name}: {problem}; the file is not a valid IDX file (truncated, corrupt, or "
        f"not IDX at all, e.g. an HTML error page). Fix: delete it and download it again")


def _read_full(f: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``f`` (readinto may return less than asked); bytes read."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def parse_idx(f: BinaryIO, name: str, hasher: Any = None) -> np.ndarray:
    """Read one IDX array from the decompressed binary stream ``f``.

    ``name`` labels error messages. ``hasher`` (e.g. ``hashlib.sha256()``), when
    given, is fed every byte of the file (header and payload) so that a caller can
    verify a checksum without reading the data twice.
    """
    head = f.read(4)
    if len(head) < 4:
        raise _fail(name, f"only {len(head)} bytes, too short for the 4-byte IDX header")
    if head[:2] != b"\x00\x00":
        raise _fail(name, f"bad magic: the first two bytes should be 00 00, "
                          f"got {head[:2].hex(' ')}")
    code, ndim = head[2], head[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise _fail(name, f"unknown dtype code 0x{code:02X} (expected one of {known})")
    dims_raw = f.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise _fail(name, f"header ends early: {ndim} dimension sizes announced, "
                          f"{len(dims_raw)} of {4 * ndim} bytes present")
    dims = struct.unpack(f">{ndim}i", dims_raw)
    if any(d < 0 for d in dims):
        raise _fail(name, f"negative dimension size in {dims}")
    dtype = IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    try:
        arr = np.empty(dims, dtype=dtype)
    except (MemoryError, ValueError) as err:
        raise _fail(name, f"the header claims shape {dims} ({expected} bytes): {err}") from None
    payload = memoryview(arr.reshape(-1).view(np.uint8))
    got = _read_full(f, payload)
    if got < expected:
        raise _fail(name, f"truncated: the header announces shape {dims}, {expected} bytes "
                          f"of data, but only {got} bytes follow")
    if f.read(1):
        raise _fail(name, f"extra bytes after the {expected} bytes of data that shape {dims} needs")
    if hasher is not None:
        hasher.update(head)
        hasher.update(dims_raw)
        hasher.update(payload)
    if not dtype.isnative:  # swap to the machine's byte order, in place
        arr.byteswap(inplace=True)
    return arr.view(dtype.newbyteorder("="))


def read_idx(source: str | os.PathLike | bytes, *, name: str | None = None,
             hasher: Any = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into a numpy array in native byte order.

    ``source`` is a path or the file's bytes. ``name`` labels error messages
    (default: the path, or ``"<bytes>"``). ``hasher`` (e.g. ``hashlib.sha256()``)
    is fed the decompressed bytes, to verify a checksum in the same pass. A bad
    magic, unknown dtype code, or a payload whose length does not match the header
    raises ``ValueError`` naming the file.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw: BinaryIO = io.BytesIO(source)
        name = name or "<bytes>"
    elif isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
        try:
            raw = open(source, "rb")
        except ValueError as e:  # e.g. "embedded null byte": file contents passed as a str
            raise TypeError(f"read_idx: {name[:40]!r}... is not a path ({e}); pass a file's "
                            "contents as bytes, not str") from None
    else:
        raise TypeError(f"read_idx expects a path or bytes, got {type(source).__name__}")
    with raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not compressed:
            return parse_idx(raw, name, hasher)
        try:
            with gzip.GzipFile(fileobj=raw) as f:
                return parse_idx(f, name, hasher)
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise _fail(name, f"broken gzip stream ({err})") from None


def encode_idx(array: Any) -> bytes:
    """The IDX bytes (header and big-endian data, uncompressed) of ``array``."""
    arr = np.asarray(array)
    native = arr.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(
            f"IDX stores uint8, int8, int16, int32, float32 or float64, got {arr.dtype}; "
            f"fix: convert with array.astype(...)")
    code = _CODES[native]
    header = struct.pack(f">BBBB{arr.ndim}i", 0, 0, code, arr.ndim, *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: Any) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``.

    The file appears atomically (written to a temporary file, then renamed), so a
    crash never leaves half a file behind. Returns the path.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"write_idx: the folder {path.parent} does not exist; create it "
                                "first (Path(...).mkdir(parents=True))")
    data = encode_idx(array)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
