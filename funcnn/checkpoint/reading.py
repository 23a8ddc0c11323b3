"""Loading: the whole file verified before any of it is parsed, then fitted to a template.

Loading reads the file once and checks the whole-file sha256 before parsing any of
it, so a damaged file (one flipped bit anywhere, a truncated copy) is refused with
:class:`CheckpointError` and never parsed. Version 1 files, written before the
whole-file sha256, are still read: their header checksum and zip CRCs are checked
instead, and the per-leaf sha256s in both versions. Every parse step is guarded as
well: no failure escapes as another exception type, and no size read from the file
is allocated before it is checked against the bytes actually there. Nothing from the
file is executed: the JSON is parsed with ``json``, ``.npy`` headers with numpy's
``literal_eval``-based reader (object arrays refused), and the structure comes from
the caller's ``template``. Loading never narrows a dtype (:class:`NarrowingError`).
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .errors import CheckpointVersionError, NarrowingError, damaged, refused
from .fileformat import (DIGITS, FORMAT, HEADER, NPY_HEAD, VERSION, ZIP_MAGIC, array_sha256,
                         describe_leaf, file_sha256, header_checksum, is_sealed,
                         looks_like_checkpoint, numeric_dtype, storage_dtype)


def _member_bytes(path: Path, data: bytes, info: zipfile.ZipInfo, check_crc: bool) -> memoryview:
    """The stored bytes of one zip member, sliced out of ``data`` (no copy) once its local
    header is checked against the zip directory and every offset against the data's size."""
    start, name = info.header_offset, info.filename
    local = data[start:start + 30] if start >= 0 else b""
    if (len(local) != 30 or local[:4] != ZIP_MAGIC or info.flag_bits & 0x1
            or info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size):
        raise damaged(path, f"zip member {name!r} has a damaged local header, or is compressed "
                            "or encrypted (funcnn writes neither)")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    raw_name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
    begin = start + 30 + name_len + extra_len
    end = begin + info.compress_size
    if data[start + 30:start + 30 + name_len] != raw_name or end > len(data):
        raise damaged(path, f"zip member {name!r}: its local header or size does not match "
                            "the zip directory")
    member = memoryview(data)[begin:end]
    if check_crc and zlib.crc32(member) != info.CRC:
        raise damaged(path, f"zip member {name!r}: CRC mismatch, its bytes are corrupted")
    return member


def _valid_entry(e: Any) -> bool:
    return (isinstance(e, dict) and e.get("kind") in ("array", "key")
            and all(isinstance(e.get(k), str) for k in ("path", "member", "dtype", "sha256"))
            and isinstance(e.get("shape"), list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in e["shape"])
            and (e["kind"] == "array" or isinstance(e.get("impl"), str)))


class _Archive:
    """A checkpoint file read into memory: its bytes, zip members and verified header.

    ``sealed``: the whole-file sha256 matched (version 2), so every byte is as written;
    the members of version 1 files are checked against their zip CRCs instead.
    """

    def __init__(self, path: str | os.PathLike):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"checkpoint path must be a str or os.PathLike, got "
                            f"{type(path).__name__}")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} does not exist" +
                                    (" (it is a folder)" if path.is_dir() else ""))
        self.path = path
        self.data = data = path.read_bytes()
        self.sealed = is_sealed(data)
        if self.sealed and data[-DIGITS:] != file_sha256(data):
            raise damaged(path, f"whole-file sha256 mismatch: some of its {len(data)} bytes "
                                "changed after it was written (corrupted on disk or in a copy, or "
                                "truncated and overwritten)")
        if data[:4] != ZIP_MAGIC:
            if looks_like_checkpoint(data):
                raise damaged(path, "it does not start with a zip header (truncated or damaged)")
            kind = "a single .npy array" if data[:4] == b"\x93NUM" else "not a zip/.npz file"
            raise refused(path, f"not a funcnn checkpoint ({kind})")
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:  # BytesIO shares data, no copy
                infos = zf.infolist()
        except Exception as e:  # whatever zipfile raises on bad bytes, the file is damaged
            why = f"({type(e).__name__}: {e})"
            if looks_like_checkpoint(data):
                raise damaged(path, "truncated or damaged, cannot read its zip directory "
                              f"{why}") from None
            raise refused(path, f"cannot read it as a zip archive {why}: not a funcnn checkpoint, "
                                "or one truncated or damaged beyond recognition") from None
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.filename in self.members:
                raise damaged(path, f"two zip members are named {info.filename!r}")
            self.members[info.filename] = info
        if HEADER not in self.members:
            if looks_like_checkpoint(data):
                raise damaged(path, f"its zip directory lists no {HEADER}")
            raise refused(path, f"not a funcnn checkpoint (a .npz without {HEADER})")
        self.header = self._parse_header(bytes(self._member(HEADER)))

    def _member(self, name: str) -> memoryview:
        return _member_bytes(self.path, self.data, self.members[name], check_crc=not self.sealed)

    def _parse_header(self, raw: bytes) -> dict:
        path = self.path
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise damaged(path, f"header {HEADER} is not valid JSON: {e}") from None
        if not isinstance(header, dict):
            raise damaged(path, f"header {HEADER} is not a JSON object")
        intact = header.get("checksum") == header_checksum(header)
        if header.get("format") != FORMAT:
            if intact:
                raise refused(path, f"not a funcnn checkpoint (header format is not {FORMAT!r})")
            raise damaged(path, "header checksum mismatch, and its format name is wrong")
        version = header.get("version")
        if type(version) is int and version > VERSION:
            raise CheckpointVersionError(
                f"checkpoint {path}: unsupported format version {version}; this funcnn reads "
                f"versions 1 to {VERSION}. Fix: load it with the funcnn version that wrote it.")
        if not intact:
            raise damaged(path, "header checksum mismatch: the header is corrupted")
        leaves = header.get("leaves")
        if (type(version) is not int or version not in (1, 2) or not isinstance(leaves, list)
                or not all(_valid_entry(e) for e in leaves)
                or not isinstance(header.get("metadata"), dict)
                or not isinstance(header.get("treedef"), str)):
            raise damaged(path, "header is malformed (written by another tool?)")
        if version >= 2 and not self.sealed:
            raise damaged(path, "the whole-file sha256 that ends a version-2 file is missing "
                                "(truncated or damaged)")
        return header

    def verify(self) -> None:
        """Every byte checked without parsing the arrays: done already for a sealed
        (version 2) file; for a version 1 file, every member's zip CRC, and every leaf
        the header lists present."""
        if self.sealed:
            return
        for name in self.members:
            self._member(name)
        for e in self.header["leaves"]:
            if e["member"] not in self.members:
                raise damaged(self.path, f"leaf {e['path'] or '<root>'}: member "
                                         f"{e['member']!r} listed in the header is missing")

    def leaves(self) -> list[np.ndarray]:
        """Every leaf's stored array, in header order, checked against its header record."""
        return [self._leaf(e) for e in self.header["leaves"]]

    def _leaf(self, e: dict) -> np.ndarray:
        path, where = self.path, f"leaf {e['path'] or '<root>'}"
        if e["member"] not in self.members:
            raise damaged(path, f"{where}: member {e['member']!r} listed in the header is missing")
        data = _npy(path, where, e, self._member(e["member"]))
        if array_sha256(data) != e["sha256"]:
            raise damaged(path, f"{where}: checksum mismatch, the array bytes are corrupted")
        data = data.astype(data.dtype.newbyteorder("="), copy=False)
        return data.view(numeric_dtype(e["dtype"])) if e["kind"] == "array" else data


def _npy(path: Path, where: str, entry: dict, buf: memoryview) -> np.ndarray:
    """The array in one ``.npy`` member, a read-only view of ``buf`` (no pickle, no copy).

    Its header must agree with the (checksummed) header record, and its data must be
    exactly the bytes the header's shape needs: nothing is allocated from its numbers.
    """
    member = entry["member"]
    try:  # numpy parses the header dict with ast.literal_eval: anything can go wrong on bad bytes
        head = io.BytesIO(buf[:NPY_HEAD])
        version = np.lib.format.read_magic(head)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy format version {version}, funcnn writes 1.0 and 2.0")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(head)
        shape, offset = tuple(shape), head.tell()
    except Exception as e:  # TokenError, SyntaxError, MemoryError...: all mean damage here
        raise damaged(path, f"{where}: member {member!r} has an unreadable .npy header "
                            f"({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise damaged(path, f"{where}: member {member!r} is an object array that would need pickle "
                            "to load; refused (funcnn never unpickles)")
    native, want = dtype.newbyteorder("="), entry["shape"]
    if any(d < 0 for d in shape):
        fits = False
    elif entry["kind"] == "array":
        numeric = numeric_dtype(entry["dtype"])
        fits = numeric is not None and native == storage_dtype(numeric) and list(shape) == want
    else:
        fits = native.kind == "u" and list(shape[:len(want)]) == want
    if not fits:
        raise damaged(path, f"{where}: stored array {dtype}{list(shape)} does not match its header "
                            f"record {entry['dtype']}{want}")
    payload = buf[offset:]
    nbytes = math.prod(shape) * dtype.itemsize
    if len(payload) != nbytes:
        raise damaged(path, f"{where}: member {member!r} holds {len(payload)} bytes of data, its "
                            f"shape needs {nbytes}")
    data = np.frombuffer(payload, dtype=dtype)
    return data.reshape(shape[::-1]).T if fortran else data.reshape(shape)


def _to_jax(path: Path, entry: dict, data: np.ndarray) -> jax.Array:
    if entry["kind"] == "array":
        return jnp.array(data)  # a copy: the result does not keep the file's bytes alive
    try:
        return jax.random.wrap_key_data(jnp.array(data), impl=entry["impl"])
    except Exception as e:  # unknown impl, or key data of the wrong shape for it
        raise refused(path, f"leaf {entry['path'] or '<root>'}: cannot rebuild PRNG key with impl "
                            f"{entry['impl']!r} ({type(e).__name__}: {e}); is that impl "
                            "available here?") from None


def _check_template(path: Path, header: dict, template: Any) -> tuple[list[int], Any]:
    """Indices of stored leaves in template order, and the template treedef; or a clear error."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    wanted = [(jax.tree_util.keystr(kp), leaf) for kp, leaf in flat]
    stored = {e["path"]: i for i, e in enumerate(header["leaves"])}
    wanted_paths = {p for p, _ in wanted}
    missing = [p or "<root>" for p, _ in wanted if p not in stored]
    unexpected = [p or "<root>" for p in stored if p not in wanted_paths]
    if missing or unexpected:
        raise refused(path, "tree structure does not match the template\n"
                            f"  in template, missing from file: {missing}\n"
                            f"  in file, not in template: {unexpected}\n"
                            f"  file tree:     {header['treedef']}\n  template tree: {treedef}")
    problems = []
    for p, leaf in wanted:
        e = header["leaves"][stored[p]]
        kind, shape, dtype = describe_leaf(leaf)
        if kind != e["kind"]:
            problems.append(f"{p or '<root>'}: expected a {kind} leaf, got a {e['kind']} leaf")
            continue
        if shape != tuple(e["shape"]):
            problems.append(f"{p or '<root>'}: shape expected {shape}, got {tuple(e['shape'])}")
        if dtype != e["dtype"]:
            problems.append(f"{p or '<root>'}: dtype expected {dtype}, got {e['dtype']}")
    if problems:
        raise refused(path, "leaves do not match the template:\n  " + "\n  ".join(problems) +
                            "\n  Fix: build the template with the same model/optimizer config "
                            "(and jax_enable_x64 setting) as the run that saved it.")
    return [stored[p] for p, _ in wanted], treedef


def _narrowed(header: dict, order: list[int], datas: list[np.ndarray]) -> list[str]:
    """The leaves (in template order) whose dtype jax would narrow, e.g. float64 -> float32."""
    found = []
    for i in order:
        e, dtype = header["leaves"][i], datas[i].dtype
        if e["kind"] == "array" and jax.dtypes.canonicalize_dtype(dtype) != dtype:
            canonical = jax.dtypes.canonicalize_dtype(dtype)
            found.append(f"{e['path'] or '<root>'}: {dtype} -> {canonical}")
    return found


def load(path: str | os.PathLike, template: Any) -> Any:
    """Read a checkpoint into a tree with ``template``'s structure (jnp arrays, typed keys).

    ``template`` gives the structure, shapes, dtypes and key/array kinds expected;
    its leaves may be arrays, ``jax.ShapeDtypeStruct`` s (e.g. from ``jax.eval_shape``)
    or Python scalars. The whole file is verified before any of it is parsed.

    Raises:
      FileNotFoundError: there is no file at ``path``; other ``OSError`` s when it
        cannot be read.
      CheckpointError: anything else, naming the file: damaged ("damaged funcnn
        checkpoint"), not a funcnn checkpoint, or not fitting the template. Subclasses:
        :class:`NarrowingError` when jax, with ``jax_enable_x64`` off, would narrow a
        64-bit leaf the template asks for (2**40 would come back as 0);
        :class:`CheckpointVersionError` for a file from a newer funcnn.
    """
    archive = _Archive(path)
    header, datas = archive.header, archive.leaves()
    order, treedef = _check_template(archive.path, header, template)
    if narrowed := _narrowed(header, order, datas):
        raise NarrowingError(
            f"checkpoint {archive.path}: jax_enable_x64 is off, so loading would narrow these "
            "leaves (and change values that do not fit):\n  " + "\n  ".join(narrowed) +
            "\n  Fix: call jax.config.update(\"jax_enable_x64\", True) before loading, or get "
            "the leaves at full width with checkpoint.read(path) and cast them explicitly "
            "(e.g. jnp.asarray(x, jnp.float32)); saving 32-bit leaves avoids this.")
    leaves = [_to_jax(archive.path, header["leaves"][i], datas[i]) for i in order]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def load_metadata(path: str | os.PathLike) -> dict:
    """The user metadata of a checkpoint, once the whole file is verified (the arrays
    are not parsed): a version 2 file by its whole-file sha256, a version 1 file by the
    zip CRC of every member. A damaged file never yields metadata.

    Raises like :func:`load`: ``FileNotFoundError``, else :class:`CheckpointError`.
    """
    archive = _Archive(path)
    archive.verify()
    return archive.header["metadata"]


def read(path: str | os.PathLike) -> dict[str, np.ndarray | jax.Array]:
    """Every leaf keyed by its path string, without a template (whole file verified).

    Array leaves come back as (writable) numpy arrays at their stored width, whatever
    ``jax_enable_x64`` says; key leaves as typed jax PRNG keys. Raises like :func:`load`.
    """
    archive = _Archive(path)
    return {e["path"]: data.copy() if e["kind"] == "array" else _to_jax(archive.path, e, data)
            for e, data in zip(archive.header["leaves"], archive.leaves())}
