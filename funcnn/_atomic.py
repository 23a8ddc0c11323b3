"""Atomic file writes, shared by checkpoints and run folders.

A file is written to a temporary name in the same folder, flushed and fsynced, then
moved onto its target with ``os.replace`` (atomic on POSIX and Windows), and the folder
is fsynced so the rename itself survives a crash. A reader therefore sees the old file
or the new one, never half of one; any error removes the temporary file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; best effort where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: Path, *, what: str = "folder") -> Iterator[BinaryIO]:
    """``with atomic_write(path) as f: f.write(...)``: all of it lands at ``path``, or
    nothing does. ``what`` names the folder in the error when no file can be made there."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o666)
    except OSError as e:
        raise type(e)(f"cannot create a file in {what} {path.parent}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
