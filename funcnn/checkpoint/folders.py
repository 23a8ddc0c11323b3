"""Checkpoints of a run, one file per step in a folder: save one, list them, find the newest."""

from __future__ import annotations

import operator
import os
import re
from pathlib import Path
from typing import Any

from funcnn import distributed

from .writing import save

_STEP_FILE = re.compile(r"^ckpt_(\d+)\.npz$")


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
    if keep is not None and distributed.is_main():  # process 0 writes (see save)
        others = [(n, p) for n, p in steps(target.parent) if p.name != target.name]
        for _, old in others[keep - 1:]:
            old.unlink(missing_ok=True)
    return target
