"""Checkpoints: save and load any pytree as one verified ``.npz`` file, never pickle.

A checkpoint is a plain zip archive (readable by ``np.load(..., allow_pickle=False)``
and by ``unzip``) holding:

* one ``.npy`` member per leaf, named after the leaf's tree path
  (``jax.tree_util.keystr``, e.g. ``['params'].w.npy``; a lone root leaf is ``<root>``);
* ``__funcnn__.json``: format name and version, the tree structure as text (for
  error messages only), one record per leaf (path, member, kind, shape, dtype,
  PRNG impl, sha256 of the raw bytes), the user's metadata, and a sha256 over all
  of the above.

Leaf kinds:

* ``"array"``: any numeric array (jax or numpy). Python scalars (``int``, ``float``,
  ``bool``) are stored as 0-d arrays with numpy's dtype for them (int64, float64,
  bool) and come back as arrays. Extension dtypes such as bfloat16 are stored as
  unsigned-integer views of their bits and restored by dtype name.
* ``"key"``: a typed PRNG key array (``jax.random.key``); stored as
  ``jax.random.key_data`` plus the impl name, and loaded back as a typed key.

Loading never executes anything from the file: the JSON is parsed with ``json``,
arrays with ``allow_pickle=False``, and the structure comes from the caller's
``template``, not from the file. Saving is atomic: a temporary file in the target
folder is written, fsynced and ``os.replace``-d onto the target, so a crash leaves
either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from funcnn._atomic import atomic_write

FORMAT = "funcnn.checkpoint"
VERSION = 1
HEADER = "__funcnn__.json"
_ZIP_MAGIC = b"PK\x03\x04"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: same tree, same bytes
_STEP_FILE = re.compile(r"^ckpt_(\d+)\.npz$")


class CheckpointError(ValueError):
    """A checkpoint file is damaged, not a funcnn checkpoint, or does not fit the template."""


def _fail(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {problem}")


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
        arr = arr.astype(dtype, copy=False)  # native byte order
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


def _write_zip(f, entries: list[dict], arrays: list[np.ndarray], header: dict) -> None:
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for entry, data in zip(entries, arrays):
            with zf.open(zipfile.ZipInfo(entry["member"], _ZIP_TIME), "w", force_zip64=True) as m:
                np.lib.format.write_array(m, data, allow_pickle=False)
        zf.writestr(zipfile.ZipInfo(HEADER, _ZIP_TIME), json.dumps(header, indent=1, sort_keys=True))


def save(path: str | os.PathLike, tree: Any, *, metadata: dict | None = None) -> Path:
    """Write ``tree`` (any pytree of arrays, scalars and typed keys) to ONE file at ``path``.

    ``metadata`` is a JSON-serialisable dict stored in the header (read it back with
    :func:`load_metadata`); it goes through JSON, so tuples become lists and dict keys
    strings. The write is atomic; on any error the previous file at ``path`` is
    untouched and the temporary file is removed. Returns the path written.
    """
    target = Path(path)
    folder = _check_folder(target)
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

    with atomic_write(target, what="checkpoint folder") as f:
        _write_zip(f, entries, arrays, header)
    return target


# ---------------------------------------------------------------- loading


def _member(npz, name: str, path: Path) -> Any:
    try:
        return npz[name]
    except KeyError:
        raise _fail(path, f"member {name!r} listed in the header is missing (file damaged)") from None
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise _fail(path, f"member {name!r} is an object array that would need pickle to load; "
                              "refused (funcnn never unpickles)") from None
        raise _fail(path, f"member {name!r} is damaged: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise _fail(path, f"member {name!r} is corrupted or truncated: {e}") from None


def _valid_entry(e: Any) -> bool:
    return (isinstance(e, dict) and e.get("kind") in ("array", "key")
            and all(isinstance(e.get(k), str) for k in ("path", "member", "dtype", "sha256"))
            and isinstance(e.get("shape"), list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in e["shape"])
            and (e["kind"] == "array" or isinstance(e.get("impl"), str)))


def _parse_header(raw: bytes, path: Path) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(path, f"header {HEADER} is not valid JSON (file corrupted): {e}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _fail(path, f"not a funcnn checkpoint (header format is not {FORMAT!r})")
    if header.get("version") != VERSION:
        raise _fail(path, f"unsupported format version {header.get('version')!r}; this funcnn reads "
                          f"version {VERSION}. Fix: load it with the funcnn version that wrote it.")
    if header.get("checksum") != _header_checksum(header):
        raise _fail(path, "header checksum mismatch: the file is corrupted")
    leaves = header.get("leaves")
    if (not isinstance(leaves, list) or not all(_valid_entry(e) for e in leaves)
            or not isinstance(header.get("metadata"), dict) or not isinstance(header.get("treedef"), str)):
        raise _fail(path, "header is malformed (file damaged or written by another tool)")
    return header


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[tuple[Path, Any]]:
    """Check that ``path`` is a zip and open it with np.load (no pickle); closes the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist" +
                                (" (it is a folder)" if path.is_dir() else ""))
    with path.open("rb") as f:  # our handle: np.load leaks its own when the zip is bad
        magic = f.read(4)
        f.seek(0)
        if magic != _ZIP_MAGIC:
            kind = "a single .npy array" if magic == b"\x93NUM" else "not a zip/.npz file"
            raise _fail(path, f"not a funcnn checkpoint ({kind})")
        try:
            npz = np.load(f, allow_pickle=False)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise _fail(path, f"truncated or damaged, cannot read it as a zip archive ({e})") from None
        with npz:
            yield path, npz


def _read_header(path: Path, npz) -> dict:
    if HEADER not in npz.files:
        raise _fail(path, f"not a funcnn checkpoint (a .npz without {HEADER})")
    return _parse_header(_member(npz, HEADER, path), path)


def _read_verified(path: str | os.PathLike) -> tuple[Path, dict, list[np.ndarray]]:
    """The header and every leaf's stored array, each checked against its sha256."""
    with _open(path) as (path, npz):
        header = _read_header(path, npz)
        datas = []
        for e in header["leaves"]:
            data = _member(npz, e["member"], path)
            where = f"leaf {e['path'] or '<root>'}"
            if not isinstance(data, np.ndarray):
                raise _fail(path, f"{where}: member {e['member']!r} is not a .npy array")
            if _sha256(data) != e["sha256"]:
                raise _fail(path, f"{where}: checksum mismatch, the array bytes are corrupted")
            data = data.astype(data.dtype.newbyteorder("="), copy=False)
            if e["kind"] == "array":
                dtype = _numeric_dtype(e["dtype"])
                if dtype is None or data.dtype != _storage_dtype(dtype) or list(data.shape) != e["shape"]:
                    raise _fail(path, f"{where}: stored array {data.dtype}{list(data.shape)} does not "
                                      f"match its header record {e['dtype']}{e['shape']}")
                data = data.view(dtype)
            elif data.dtype.kind != "u" or list(data.shape[:len(e["shape"])]) != e["shape"]:
                raise _fail(path, f"{where}: stored key data {data.dtype}{list(data.shape)} does not "
                                  f"match key shape {e['shape']}")
            datas.append(data)
    return path, header, datas


def _to_jax(path: Path, entry: dict, data: np.ndarray) -> jax.Array:
    if entry["kind"] == "array":
        return jnp.asarray(data)
    try:
        return jax.random.wrap_key_data(jnp.asarray(data), impl=entry["impl"])
    except (TypeError, ValueError, KeyError) as e:
        raise _fail(path, f"leaf {entry['path']}: cannot rebuild PRNG key with impl "
                          f"{entry['impl']!r}: {e}") from None


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


def load(path: str | os.PathLike, template: Any) -> Any:
    """Read a checkpoint into a tree with ``template``'s structure (jnp arrays, typed keys).

    ``template`` gives the structure, shapes, dtypes and key/array kinds expected;
    its leaves may be arrays, ``jax.ShapeDtypeStruct`` s (e.g. from ``jax.eval_shape``)
    or Python scalars. All checksums are verified first; any problem raises
    :class:`CheckpointError` naming the file (``FileNotFoundError`` if it is missing).
    """
    path, header, datas = _read_verified(path)
    order, treedef = _check_template(path, header, template)
    leaves = [_to_jax(path, header["leaves"][i], datas[i]) for i in order]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def load_metadata(path: str | os.PathLike) -> dict:
    """The user metadata of a checkpoint (header checksum verified; arrays not read)."""
    with _open(path) as (path, npz):
        return _read_header(path, npz)["metadata"]


def read(path: str | os.PathLike) -> dict[str, np.ndarray | jax.Array]:
    """Every leaf keyed by its path string, without a template (all checksums verified).

    Array leaves come back as numpy arrays, key leaves as typed jax PRNG keys.
    """
    path, header, datas = _read_verified(path)
    return {e["path"]: data if e["kind"] == "array" else _to_jax(path, e, data)
            for e, data in zip(header["leaves"], datas)}


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
