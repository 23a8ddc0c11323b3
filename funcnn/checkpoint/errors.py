"""The errors a checkpoint raises, and the two wordings every message starts with."""

from __future__ import annotations

from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint file is damaged, not a funcnn checkpoint, or does not fit the template."""


class NarrowingError(CheckpointError):
    """The checkpoint is intact and fits the template, but jax (``jax_enable_x64`` off)
    would narrow some of its 64-bit leaves to 32 bits."""


class CheckpointVersionError(CheckpointError):
    """The checkpoint's header names a format version newer than this funcnn reads: the
    file is most likely intact, written by a newer funcnn (not damage: keep it)."""


def refused(path: Path, problem: str) -> CheckpointError:
    """The error for a file that is not a checkpoint, or one that does not fit."""
    return CheckpointError(f"checkpoint {path}: {problem}")


def damaged(path: Path, problem: str) -> CheckpointError:
    """The error for a funcnn checkpoint whose bytes are not as they were written."""
    return CheckpointError(f"checkpoint {path}: damaged funcnn checkpoint: {problem}")
