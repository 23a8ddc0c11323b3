"""The file format: its constants, how a leaf is encoded, and the two checksums.

Shared by :mod:`.writing` and :mod:`.reading`, which import only the public names
here. The layout itself is described in the package docstring (:mod:`funcnn.checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "funcnn.checkpoint"
VERSION = 2  # 2: whole-file sha256 in the zip comment, header first; 1 is still read
HEADER = "__funcnn__.json"
ZIP_MAGIC = b"PK\x03\x04"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: same tree, same bytes
SEAL = b"funcnn-sha256:"  # zip comment: this, then the 64 hex digits of the file's sha256
DIGITS = 64
NPY_HEAD = 65536 + 16  # the most a .npy header we accept can take (numpy caps it at 10000)


# ---------------------------------------------------------------- leaves


def is_key(x: Any) -> bool:
    """Whether ``x`` is a typed PRNG key array (``jax.random.key``)."""
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def numeric_dtype(name: str) -> np.dtype | None:
    """The dtype called ``name`` if it is plain numeric data (incl. bfloat16 & co), else None."""
    try:
        dtype = jnp.dtype(name)
    except (TypeError, ValueError):
        return None
    if dtype.kind in "biufc":
        return dtype
    # ml_dtypes extension types (bfloat16, float8_*, int4) are kind "V" without fields
    if dtype.kind == "V" and dtype.fields is None and not dtype.name.startswith("void"):
        return dtype
    return None


def storage_dtype(dtype: np.dtype) -> np.dtype:
    """How ``dtype`` is written to .npy: itself, or same-width uint bits for extension types."""
    return dtype if dtype.kind in "biufc" else np.dtype(f"uint{dtype.itemsize * 8}")


def array_sha256(data: np.ndarray) -> str:
    """sha256 of the C-order bytes, hashed in place (no copy of a contiguous array)."""
    return hashlib.sha256(np.ascontiguousarray(data).reshape(-1).view(np.uint8)).hexdigest()


def member_name(path: str) -> str:
    """The zip member of the leaf at tree path ``path`` (a lone root leaf is ``<root>``)."""
    return (path or "<root>") + ".npy"


def encode_leaf(path: str, leaf: Any) -> tuple[dict, np.ndarray]:
    """One leaf -> (its header record, the numpy array written for it)."""
    if is_key(leaf):
        data = np.asarray(jax.random.key_data(leaf))
        entry = {"kind": "key", "shape": list(leaf.shape), "dtype": str(leaf.dtype),
                 "impl": str(jax.random.key_impl(leaf))}
    else:
        arr = np.asarray(leaf)
        dtype = numeric_dtype(arr.dtype.name)
        if dtype is None or dtype != arr.dtype.newbyteorder("="):
            raise TypeError(
                f"checkpoint leaf {path or '<root>'} has type {type(leaf).__name__} with dtype "
                f"{arr.dtype}; expected a numeric array, Python scalar or typed PRNG key. "
                "Fix: keep non-array values (strings, objects) out of the tree, e.g. in metadata.")
        arr = arr.astype(dtype, order="C", copy=False)  # native byte order, C order
        data = arr.view(storage_dtype(dtype))
        entry = {"kind": "array", "shape": list(arr.shape), "dtype": dtype.name}
    entry.update(path=path, member=member_name(path), sha256=array_sha256(data))
    return entry, data


def describe_leaf(leaf: Any) -> tuple[str, tuple[int, ...], str]:
    """(kind, shape, dtype name) of a template leaf: array, ShapeDtypeStruct, scalar or key."""
    if is_key(leaf):
        return "key", tuple(leaf.shape), str(leaf.dtype)
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return "array", tuple(leaf.shape), np.dtype(leaf.dtype).name
    arr = np.asarray(leaf)
    return "array", arr.shape, arr.dtype.name


# ---------------------------------------------------------------- checksums


def header_checksum(header: dict) -> str:
    """The sha256 of the header's canonical JSON, its ``checksum`` field left out."""
    body = {k: v for k, v in header.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(data: bytes) -> bytes:
    """The hex sha256 of ``data`` with its last 64 bytes (the seal's digits) read as ``0``."""
    sha = hashlib.sha256(memoryview(data)[:-DIGITS])
    sha.update(b"0" * DIGITS)
    return sha.hexdigest().encode()


def is_sealed(data: bytes) -> bool:
    """Whether ``data`` ends like a version-2 file: the seal, then 64 bytes of digits."""
    return len(data) >= len(SEAL) + DIGITS and data[-DIGITS - len(SEAL):-DIGITS] == SEAL


def looks_like_checkpoint(data: bytes) -> bool:
    """Whether unreadable ``data`` still looks like a funcnn checkpoint (for the error's
    wording)."""
    return is_sealed(data) or HEADER.encode() in data
