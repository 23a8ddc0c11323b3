"""Saving: one zip written through a hashing stream, sealed, and moved into place atomically.

A temporary file ``.<name>.<12 hex>.tmp`` in the target folder is written, fsynced and
``os.replace``-d onto the target, so a crash leaves either the old checkpoint or the
new one, never half of one. A temporary file of that exact name left by a save that
was killed is removed by the next save to the same path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from funcnn import distributed
from funcnn._atomic import atomic_write

from .fileformat import (DIGITS, FORMAT, HEADER, SEAL, VERSION, ZIP_TIME, encode_leaf,
                         header_checksum)


def _check_folder(target: Path) -> Path:
    folder = target.parent
    hint = f"create it first, e.g. Path({str(folder)!r}).mkdir(parents=True, exist_ok=True)"
    if not folder.exists():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist; {hint}")
    if not folder.is_dir():
        raise NotADirectoryError(f"checkpoint folder {folder} is not a folder; pick a path "
                                 "inside a folder")
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
        zf.comment = SEAL + b"0" * DIGITS  # the digits are hashed as zeros, then filled in
        zf.writestr(zipfile.ZipInfo(HEADER, ZIP_TIME), json.dumps(header, indent=1, sort_keys=True))
        for entry, data in zip(entries, arrays):
            with zf.open(zipfile.ZipInfo(entry["member"], ZIP_TIME), "w", force_zip64=True) as m:
                np.lib.format.write_array(m, data, allow_pickle=False)
    f.seek(out.pos - DIGITS)  # the comment is the archive's last bytes
    f.write(out.sha.hexdigest().encode())


def save(path: str | os.PathLike, tree: Any, *, metadata: dict | None = None) -> Path:
    """Write ``tree`` (any pytree of arrays, scalars and typed keys) to ONE file at ``path``.

    ``metadata`` is a JSON-serialisable dict stored in the header (read it back with
    :func:`~funcnn.checkpoint.load_metadata`); it goes through JSON, so tuples become
    lists and dict keys strings. The write is atomic; on any error the previous file at
    ``path`` is untouched and the temporary file is removed. Temporary files that an
    earlier, killed save to ``path`` left are removed first. Returns the path written.

    With several processes (``jax.distributed``) every process calls ``save`` with the
    same tree; process 0 alone writes (arrays split across processes are gathered
    first), and every process returns once the file is complete.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint path must be a str or os.PathLike, got "
                        f"{type(path).__name__}; e.g. 'ckpt.npz'")
    tree = distributed.local(tree)  # arrays on devices of other processes
    # With several processes, process 0 writes; all return when it is done, or all
    # raise its error (the exchange on leaving the block).
    with distributed.checked_together("checkpoint.save", jax.process_count() > 1):
        target = Path(path)
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise TypeError(f"checkpoint metadata must be a dict, got "
                            f"{type(metadata).__name__}")
        try:  # normalise: what is stored is exactly what load_metadata returns
            metadata = json.loads(json.dumps(metadata, sort_keys=True))
        except (TypeError, ValueError, RecursionError) as e:
            raise TypeError(f"checkpoint metadata must be JSON-serialisable (str, int, float, "
                            f"bool, None, lists and dicts with str keys); {e}. Fix: convert "
                            "arrays with .tolist() or store them in the tree instead.") from None

        entries, arrays, seen = [], [], set()
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
        for key_path, leaf in flat:
            entry, data = encode_leaf(jax.tree_util.keystr(key_path), leaf)
            if entry["path"] in seen:
                raise ValueError(f"two checkpoint leaves share the path {entry['path']}; "
                                 "give the tree's nodes distinct keys")
            seen.add(entry["path"])
            entries.append(entry)
            arrays.append(data)
        header = {"format": FORMAT, "version": VERSION, "treedef": str(treedef),
                  "leaves": entries, "metadata": metadata}
        header["checksum"] = header_checksum(header)

        if distributed.is_main():
            _check_folder(target)
            _remove_stale_temps(target)  # before writing: frees their disk for the new file
            with atomic_write(target, what="checkpoint folder") as f:
                _write_zip(f, entries, arrays, header)
    return target
