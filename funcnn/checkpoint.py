"""Checkpoints: save and load any pytree as one verified ``.npz`` file, never pickle.

A checkpoint is a plain zip archive (readable by ``np.load(..., allow_pickle=False)``
and by ``unzip``) holding, uncompressed:

* ``__funcnn__.json`` first, so a file says what it is in its first bytes: format
  name and version, the tree structure as text (for error messages only), one
  record per leaf (path, member, kind, shape, dtype, PRNG impl, sha256 of the raw
  bytes), the user's metadata, and a sha256 over all of the above;
* one ``.npy`` member per leaf, named after the leaf's tree path
  (``jax.tree_util.keystr``, e.g. ``['params'].w.npy``; a lone root leaf is ``<root>``);
* as the zip comment, the file's last bytes: ``funcnn-sha256:`` and 64 hex digits,
  the sha256 of the whole file with those digits read as ``0``.

Leaf kinds:

* ``"array"``: any numeric array (jax or numpy). Python scalars (``int``, ``float``,
  ``bool``) are stored as 0-d arrays with numpy's dtype for them (int64, float64,
  bool) and come back as arrays. Extension dtypes such as bfloat16 are stored as
  unsigned-integer views of their bits and restored by dtype name.
* ``"key"``: a typed PRNG key array (``jax.random.key``); stored as
  ``jax.random.key_data`` plus the impl name, and loaded back as a typed key.

Loading reads the file once and checks the whole-file sha256 before parsing any of
it, so a damaged file (one flipped bit anywhere, a truncated copy) is refused with
:class:`CheckpointError` and never parsed. Version 1 files, written before the
whole-file sha256, are still read: their header checksum and zip CRCs are checked
instead, and the per-leaf sha256s in both versions. Every parse step is guarded as
well: no failure escapes as another exception type, and no size read from the file
is allocated before it is checked against the bytes actually there. Nothing from
the file is executed: the JSON is parsed with ``json``, ``.npy`` headers with numpy's
``literal_eval``-based reader (object arrays refused), and the structure comes from
the caller's ``template``.

Loading never narrows: with ``jax_enable_x64`` off, a 64-bit leaf that jax would
turn into 32 bits (2**40 into 0) raises :class:`NarrowingError` instead.

Saving is atomic: a temporary file ``.<name>.<12 hex>.tmp`` in the target folder is
written, fsynced and ``os.replace``-d onto the target, so a crash leaves either the
old checkpoint or the new one, never half of one. A temporary file of that exact
name left by a save that was killed is removed by the next save to the same path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import operator
import os
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn._atomic import atomic_write

FORMAT = "funcnn.checkpoint"
VERSION = 2  # 2: whole-file sha256 in the zip comment, header first; 1 is still read
HEADER = "__funcnn__.json"
_ZIP_MAGIC = b"PK\x03\x04"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: same tree, same bytes
_STEP_FILE = re.compile(r"^ckpt_(\d+)\.npz$")
_SEAL = b"funcnn-sha256:"  # zip comment: this, then the 64 hex digits of the file's sha256
_DIGITS = 64
_NPY_HEAD = 65536 + 16  # the most a .npy header we accept can take (numpy caps it at 10000)


class CheckpointError(ValueError):
    """A checkpoint file is damaged, not a funcnn checkpoint, or does not fit the template."""


class NarrowingError(CheckpointError):
    """The checkpoint is intact and fits the template, but jax (``jax_enable_x64`` off)
    would narrow some of its 64-bit leaves to 32 bits."""


class CheckpointVersionError(CheckpointError):
    """The checkpoint's header names a format version newer than this funcnn reads: the
    file is most likely intact, written by a newer funcnn (not damage: keep it)."""


def _fail(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {problem}")


def _damaged(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: damaged funcnn checkpoint: {problem}")


# ---------------------------------------------------------------- leaf encoding


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _numeric_dtype(name: str) -> np.dtype | None:
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


def _storage_dtype(dtype: np.dtype) -> np.dtype:
    """How ``dtype`` is written to .npy: itself, or same-width uint bits for extension types."""
    return dtype if dtype.kind in "biufc" else np.dtype(f"uint{dtype.itemsize * 8}")


def _sha256(data: np.ndarray) -> str:
    """sha256 of the C-order bytes, hashed in place (no copy of a contiguous array)."""
    return hashlib.sha256(np.ascontiguousarray(data).reshape(-1).view(np.uint8)).hexdigest()


def _member_name(path: str) -> str:
    return (path or "<root>") + ".npy"


def _encode(path: str, leaf: Any) -> tuple[dict, np.ndarray]:
    """One leaf -> (its header record, the numpy array written for it)."""
    if _is_key(leaf):
        data = np.asarray(jax.random.key_data(leaf))
        entry = {"kind": "key", "shape": list(leaf.shape), "dtype": str(leaf.dtype),
                 "impl": str(jax.random.key_impl(leaf))}
    else:
        arr = np.asarray(leaf)
        dtype = _numeric_dtype(arr.dtype.name)
        if dtype is None or dtype != arr.dtype.newbyteorder("="):
            raise TypeError(
                f"checkpoint leaf {path or '<root>'} has type {type(leaf).__name__} with dtype "
                f"{arr.dtype}; expected a numeric array, Python scalar or typed PRNG key. "
                "Fix: keep non-array values (strings, objects) out of the tree, e.g. in metadata.")
        arr = arr.astype(dtype, order="C", copy=False)  # native byte order, C order
        data = arr.view(_storage_dtype(dtype))
        entry = {"kind": "array", "shape": list(arr.shape), "dtype": dtype.name}
    entry.update(path=path, member=_member_name(path), sha256=_sha256(data))
    return entry, data


def _describe(leaf: Any) -> tuple[str, tuple[int, ...], str]:
    """(kind, shape, dtype name) of a template leaf: array, ShapeDtypeStruct, scalar or key."""
    if _is_key(leaf):
        return "key", tuple(leaf.shape), str(leaf.dtype)
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return "array", tuple(leaf.shape), np.dtype(leaf.dtype).name
    arr = np.asarray(leaf)
    return "array", arr.shape, arr.dtype.name


def _header_checksum(header: dict) -> str:
    body = {k: v for k, v in header.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------- saving


def _check_folder(target: Path) -> Path:
    folder = target.parent
    hint = f"create it first, e.g. Path({str(folder)!r}).mkdir(parents=True, exist_ok=True)"
    if not folder.exists():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist; {hint}")
    if not folder.is_dir():
        raise NotADirectoryError(f"checkpoint folder {folder} is not a folder; pick a path inside a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"checkpoint folder {folder} is not writable; fix its permissions "
                              "or save somewhere else")
    if target.is_dir():
        raise IsADirectoryError(f"checkpoint path {target} is a folder; give a file name, "
                                f"e.g. {target / 'ckpt.npz'}")
    return folder


def _remove_stale_temps(target: Path) -> None:
    """Delete the temporary files a killed save to ``target`` left behind.

    Only regular files named exactly as ``atomic_write`` names its temporaries for
    ``target`` (``.<name>.<12 hex digits>.tmp``) are removed: a checkpoint's worth of
    disk each. A save to the same path running at this moment in another process
    would lose its temporary and fail loudly; two writers of one file are not supported.
    """
    stale = re.compile(re.escape(f".{target.name}.") + r"[0-9a-f]{12}\.tmp")
    with contextlib.suppress(OSError), os.scandir(target.parent) as found:
        for entry in found:
            if stale.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


class _HashingWriter:
    """A write-only, unseekable stream onto ``f`` that hashes every byte written.

    Having no ``seek``, it makes zipfile put each member's CRC and sizes after its
    data (a data descriptor) instead of seeking back to patch them, so each byte is
    final when it is hashed and the file is hashed as it is written, not read back.
    """

    def __init__(self, f) -> None:
        self._f, self.sha, self.pos = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        self._f.write(data)
        self.sha.update(data)
        self.pos += n
        return n

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        self._f.flush()


def _write_zip(f, entries: list[dict], arrays: list[np.ndarray], header: dict) -> None:
    out = _HashingWriter(f)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.comment = _SEAL + b"0" * _DIGITS  # the digits are hashed as zeros, then filled in
        zf.writestr(zipfile.ZipInfo(HEADER, _ZIP_TIME), json.dumps(header, indent=1, sort_keys=True))
        for entry, data in zip(entries, arrays):
            with zf.open(zipfile.ZipInfo(entry["member"], _ZIP_TIME), "w", force_zip64=True) as m:
                np.lib.format.write_array(m, data, allow_pickle=False)
    f.seek(out.pos - _DIGITS)  # the comment is the archive's last bytes
    f.write(out.sha.hexdigest().encode())


def save(path: str | os.PathLike, tree: Any, *, metadata: dict | None = None) -> Path:
    """Write ``tree`` (any pytree of arrays, scalars and typed keys) to ONE file at ``path``.

    ``metadata`` is a JSON-serialisable dict stored in the header (read it back with
    :func:`load_metadata`); it goes through JSON, so tuples become lists and dict keys
    strings. The write is atomic; on any error the previous file at ``path`` is
    untouched and the temporary file is removed. Temporary files that an earlier,
    killed save to ``path`` left are removed first. Returns the path written.
    """
    target = Path(path)
    _check_folder(target)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise TypeError(f"checkpoint metadata must be a dict, got {type(metadata).__name__}")
    try:  # normalise: what is stored is exactly what load_metadata returns
        metadata = json.loads(json.dumps(metadata, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint metadata must be JSON-serialisable (str, int, float, bool, None, "
                        f"lists and dicts with str keys); {e}. Fix: convert arrays with "
                        ".tolist() or store them in the tree instead.") from None

    entries, arrays, seen = [], [], set()
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    for key_path, leaf in flat:
        entry, data = _encode(jax.tree_util.keystr(key_path), leaf)
        if entry["path"] in seen:
            raise ValueError(f"two checkpoint leaves share the path {entry['path']}; "
                             "give the tree's nodes distinct keys")
        seen.add(entry["path"])
        entries.append(entry)
        arrays.append(data)
    header = {"format": FORMAT, "version": VERSION, "treedef": str(treedef),
              "leaves": entries, "metadata": metadata}
    header["checksum"] = _header_checksum(header)

    _remove_stale_temps(target)  # before writing: frees their disk for the new file
    with atomic_write(target, what="checkpoint folder") as f:
        _write_zip(f, entries, arrays, header)
    return target


# ---------------------------------------------------------------- loading


def _file_sha256(data: bytes) -> bytes:
    """The hex sha256 of ``data`` with its last 64 bytes (the seal's digits) read as ``0``."""
    sha = hashlib.sha256(memoryview(data)[:-_DIGITS])
    sha.update(b"0" * _DIGITS)
    return sha.hexdigest().encode()


def _sealed(data: bytes) -> bool:
    """Whether ``data`` ends like a version-2 file: the seal, then 64 bytes of digits."""
    return len(data) >= len(_SEAL) + _DIGITS and data[-_DIGITS - len(_SEAL):-_DIGITS] == _SEAL


def _ours(data: bytes) -> bool:
    """Whether unreadable ``data`` still looks like a funcnn checkpoint (for the error's wording)."""
    return _sealed(data) or HEADER.encode() in data


def _member_bytes(path: Path, data: bytes, info: zipfile.ZipInfo, check_crc: bool) -> memoryview:
    """The stored bytes of one zip member, sliced out of ``data`` (no copy) once its local
    header is checked against the zip directory and every offset against the data's size."""
    start, name = info.header_offset, info.filename
    local = data[start:start + 30] if start >= 0 else b""
    if (len(local) != 30 or local[:4] != _ZIP_MAGIC or info.flag_bits & 0x1
            or info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size):
        raise _damaged(path, f"zip member {name!r} has a damaged local header, or is compressed "
                             "or encrypted (funcnn writes neither)")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    raw_name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
    begin = start + 30 + name_len + extra_len
    end = begin + info.compress_size
    if data[start + 30:start + 30 + name_len] != raw_name or end > len(data):
        raise _damaged(path, f"zip member {name!r}: its local header or size does not match "
                             "the zip directory")
    member = memoryview(data)[begin:end]
    if check_crc and zlib.crc32(member) != info.CRC:
        raise _damaged(path, f"zip member {name!r}: CRC mismatch, its bytes are corrupted")
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
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} does not exist" +
                                    (" (it is a folder)" if path.is_dir() else ""))
        self.path = path
        self.data = data = path.read_bytes()
        self.sealed = _sealed(data)
        if self.sealed and data[-_DIGITS:] != _file_sha256(data):
            raise _damaged(path, f"whole-file sha256 mismatch: some of its {len(data)} bytes changed "
                                 "after it was written (corrupted on disk or in a copy, or truncated "
                                 "and overwritten)")
        if data[:4] != _ZIP_MAGIC:
            if _ours(data):
                raise _damaged(path, "it does not start with a zip header (truncated or damaged)")
            kind = "a single .npy array" if data[:4] == b"\x93NUM" else "not a zip/.npz file"
            raise _fail(path, f"not a funcnn checkpoint ({kind})")
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:  # BytesIO shares data, no copy
                infos = zf.infolist()
        except Exception as e:  # whatever zipfile raises on bad bytes, the file is damaged
            why = f"({type(e).__name__}: {e})"
            if _ours(data):
                raise _damaged(path, f"truncated or damaged, cannot read its zip directory {why}") from None
            raise _fail(path, f"cannot read it as a zip archive {why}: not a funcnn checkpoint, "
                              "or one truncated or damaged beyond recognition") from None
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.filename in self.members:
                raise _damaged(path, f"two zip members are named {info.filename!r}")
            self.members[info.filename] = info
        if HEADER not in self.members:
            if _ours(data):
                raise _damaged(path, f"its zip directory lists no {HEADER}")
            raise _fail(path, f"not a funcnn checkpoint (a .npz without {HEADER})")
        self.header = self._parse_header(bytes(self._member(HEADER)))

    def _member(self, name: str) -> memoryview:
        return _member_bytes(self.path, self.data, self.members[name], check_crc=not self.sealed)

    def _parse_header(self, raw: bytes) -> dict:
        path = self.path
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise _damaged(path, f"header {HEADER} is not valid JSON: {e}") from None
        if not isinstance(header, dict):
            raise _damaged(path, f"header {HEADER} is not a JSON object")
        intact = header.get("checksum") == _header_checksum(header)
        if header.get("format") != FORMAT:
            if intact:
                raise _fail(path, f"not a funcnn checkpoint (header format is not {FORMAT!r})")
            raise _damaged(path, "header checksum mismatch, and its format name is wrong")
        version = header.get("version")
        if type(version) is int and version > VERSION:
            raise CheckpointVersionError(
                f"checkpoint {path}: unsupported format version {version}; this funcnn reads "
                f"versions 1 to {VERSION}. Fix: load it with the funcnn version that wrote it.")
        if not intact:
            raise _damaged(path, "header checksum mismatch: the header is corrupted")
        leaves = header.get("leaves")
        if (type(version) is not int or version not in (1, 2) or not isinstance(leaves, list)
                or not all(_valid_entry(e) for e in leaves)
                or not isinstance(header.get("metadata"), dict)
                or not isinstance(header.get("treedef"), str)):
            raise _damaged(path, "header is malformed (written by another tool?)")
        if version >= 2 and not self.sealed:
            raise _damaged(path, "the whole-file sha256 that ends a version-2 file is missing "
                                 "(truncated or damaged)")
        return header

    def leaves(self) -> list[np.ndarray]:
        """Every leaf's stored array, in header order, checked against its header record."""
        return [self._leaf(e) for e in self.header["leaves"]]

    def _leaf(self, e: dict) -> np.ndarray:
        path, where = self.path, f"leaf {e['path'] or '<root>'}"
        if e["member"] not in self.members:
            raise _damaged(path, f"{where}: member {e['member']!r} listed in the header is missing")
        data = _npy(path, where, e, self._member(e["member"]))
        if _sha256(data) != e["sha256"]:
            raise _damaged(path, f"{where}: checksum mismatch, the array bytes are corrupted")
        data = data.astype(data.dtype.newbyteorder("="), copy=False)
        return data.view(_numeric_dtype(e["dtype"])) if e["kind"] == "array" else data


def _npy(path: Path, where: str, entry: dict, buf: memoryview) -> np.ndarray:
    """The array in one ``.npy`` member, a read-only view of ``buf`` (no pickle, no copy).

    Its header must agree with the (checksummed) header record, and its data must be
    exactly the bytes the header's shape needs: nothing is allocated from its numbers.
    """
    member = entry["member"]
    try:  # numpy parses the header dict with ast.literal_eval: anything can go wrong on bad bytes
        head = io.BytesIO(buf[:_NPY_HEAD])
        version = np.lib.format.read_magic(head)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy format version {version}, funcnn writes 1.0 and 2.0")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(head)
        shape, offset = tuple(shape), head.tell()
    except Exception as e:  # TokenError, SyntaxError, MemoryError...: all mean damage here
        raise _damaged(path, f"{where}: member {member!r} has an unreadable .npy header "
                             f"({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise _damaged(path, f"{where}: member {member!r} is an object array that would need pickle "
                             "to load; refused (funcnn never unpickles)")
    native, want = dtype.newbyteorder("="), entry["shape"]
    if any(d < 0 for d in shape):
        fits = False
    elif entry["kind"] == "array":
        numeric = _numeric_dtype(entry["dtype"])
        fits = numeric is not None and native == _storage_dtype(numeric) and list(shape) == want
    else:
        fits = native.kind == "u" and list(shape[:len(want)]) == want
    if not fits:
        raise _damaged(path, f"{where}: stored array {dtype}{list(shape)} does not match its header "
                             f"record {entry['dtype']}{want}")
    payload = buf[offset:]
    nbytes = math.prod(shape) * dtype.itemsize
    if len(payload) != nbytes:
        raise _damaged(path, f"{where}: member {member!r} holds {len(payload)} bytes of data, its "
                             f"shape needs {nbytes}")
    data = np.frombuffer(payload, dtype=dtype)
    return data.reshape(shape[::-1]).T if fortran else data.reshape(shape)


def _to_jax(path: Path, entry: dict, data: np.ndarray) -> jax.Array:
    if entry["kind"] == "array":
        return jnp.array(data)  # a copy: the result does not keep the file's bytes alive
    try:
        return jax.random.wrap_key_data(jnp.array(data), impl=entry["impl"])
    except Exception as e:  # unknown impl, or key data of the wrong shape for it
        raise _fail(path, f"leaf {entry['path'] or '<root>'}: cannot rebuild PRNG key with impl "
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
        raise _fail(path, "tree structure does not match the template\n"
                          f"  in template, missing from file: {missing}\n"
                          f"  in file, not in template: {unexpected}\n"
                          f"  file tree:     {header['treedef']}\n  template tree: {treedef}")
    problems = []
    for p, leaf in wanted:
        e = header["leaves"][stored[p]]
        kind, shape, dtype = _describe(leaf)
        if kind != e["kind"]:
            problems.append(f"{p or '<root>'}: expected a {kind} leaf, got a {e['kind']} leaf")
            continue
        if shape != tuple(e["shape"]):
            problems.append(f"{p or '<root>'}: shape expected {shape}, got {tuple(e['shape'])}")
        if dtype != e["dtype"]:
            problems.append(f"{p or '<root>'}: dtype expected {dtype}, got {e['dtype']}")
    if problems:
        raise _fail(path, "leaves do not match the template:\n  " + "\n  ".join(problems) +
                          "\n  Fix: build the template with the same model/optimizer config "
                          "(and jax_enable_x64 setting) as the run that saved it.")
    return [stored[p] for p, _ in wanted], treedef


def _narrowed(header: dict, order: list[int], datas: list[np.ndarray]) -> list[str]:
    """The leaves (in template order) whose dtype jax would narrow, e.g. float64 -> float32."""
    found = []
    for i in order:
        e, dtype = header["leaves"][i], datas[i].dtype
        if e["kind"] == "array" and jax.dtypes.canonicalize_dtype(dtype) != dtype:
            found.append(f"{e['path'] or '<root>'}: {dtype} -> {jax.dtypes.canonicalize_dtype(dtype)}")
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
    """The user metadata of a checkpoint (whole file verified, arrays not parsed).

    Raises like :func:`load`: ``FileNotFoundError``, else :class:`CheckpointError`.
    """
    return _Archive(path).header["metadata"]


def read(path: str | os.PathLike) -> dict[str, np.ndarray | jax.Array]:
    """Every leaf keyed by its path string, without a template (whole file verified).

    Array leaves come back as (writable) numpy arrays at their stored width, whatever
    ``jax_enable_x64`` says; key leaves as typed jax PRNG keys. Raises like :func:`load`.
    """
    archive = _Archive(path)
    return {e["path"]: data.copy() if e["kind"] == "array" else _to_jax(archive.path, e, data)
            for e, data in zip(archive.header["leaves"], archive.leaves())}


# ---------------------------------------------------------------- run directories


def latest(directory: str | os.PathLike, pattern: str = "ckpt_*.npz") -> Path | None:
    """The file matching ``pattern`` with the highest step number (last digits in its name).

    Temporary files (dot-prefixed or ``.tmp``) and names without digits are ignored.
    Returns None when there is none, including when ``directory`` does not exist yet.
    """
    directory = Path(directory)
    if not directory.is_dir():
        if directory.exists():
            raise NotADirectoryError(f"checkpoint directory {directory} is a file, not a folder")
        return None
    best: tuple[int, str, Path] | None = None
    for p in directory.glob(pattern):
        digits = re.findall(r"\d+", p.stem)
        if p.name.startswith(".") or p.name.endswith(".tmp") or not digits or not p.is_file():
            continue
        candidate = (int(digits[-1]), p.name, p)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    return None if best is None else best[2]


def steps(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """The ``(step, path)`` of every ``ckpt_<digits>.npz`` in ``directory``, newest first
    (empty when the folder does not exist yet). These are the files :func:`save_step`
    writes and prunes; nothing else in the folder is listed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := _STEP_FILE.match(p.name)) and p.is_file()]
    return sorted(found, reverse=True)


def save_step(directory: str | os.PathLike, step: int, tree: Any, *, keep: int | None = 3,
              metadata: dict | None = None) -> Path:
    """Save ``tree`` as ``directory/ckpt_{step:08d}.npz``, then prune old ``ckpt_<digits>.npz``.

    After the new file is complete, keeps it plus the ``keep - 1`` other checkpoints
    with the highest steps (``keep=None`` keeps all). Other files are never touched.
    """
    if isinstance(step, bool):
        raise TypeError("step must be an int, got bool")
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an int, got {type(step).__name__}") from None
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be an int >= 1 or None, got {keep!r}")
    target = save(Path(directory) / f"ckpt_{step:08d}.npz", tree, metadata=metadata)
    if keep is not None:
        others = [(n, p) for n, p in steps(target.parent) if p.name != target.name]
        for _, old in others[keep - 1:]:
            old.unlink(missing_ok=True)
    return target
