"""The two errors of :mod:`funcnn.experiment`, shared by all its modules."""

from __future__ import annotations


class ExperimentError(RuntimeError):
    """A run cannot start or continue as asked (the message says why and what to do)."""


class RunFolderError(OSError):
    """The run folder cannot be created or written, or its disk is too full."""
