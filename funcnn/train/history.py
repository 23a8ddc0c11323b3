"""The record of a run: ``History``, one row per epoch or per ``eval_every`` steps."""

from __future__ import annotations

import dataclasses

import numpy as np

from funcnn.diagnostics import block_means


@dataclasses.dataclass
class History:
    """What ``fit`` recorded, one row per epoch (or, with ``fit(steps=...)``, per
    ``eval_every`` steps), as numpy arrays.

    ``metrics``: ``loss``, ``data_loss`` (``loss - data_loss`` is the penalty's
    regularization loss), ``learning_rate`` (when the optimizer exposes it: funcnn's
    do, optax's do not; it is the rate the *next* update will use, after the row's
    last update: with a decaying rate, one step past what NNFS prints, the rate of the
    update just made), each metric by name (by
    default the loss's natural one: ``accuracy`` for classification, ``mae`` for
    regression) and, with validation data, ``val_loss`` and ``val_`` + each metric's
    name; with ``fit(..., diagnostics=...)`` one column per diagnostic and layer
    (``grad_norm[0].b``, ...). Training loss and metrics are means over the row's
    examples, the validation ones are taken after the row's last update.

    ``clock``: where each row ends, to plot against: ``step`` (updates applied so far,
    counted from the run's start, so a resumed run carries on), ``epoch`` (``step``
    over the batches per epoch: whole numbers for ``fit(epochs=...)``, fractions when
    a row ends mid-epoch) and ``time_s``, wall seconds of the row's share of its
    compiled call, measured on the host (the rows of a call that compiled first, such
    as a fit's first call, include the compilation). They are apart from ``metrics``
    because they measure the run's progress and the machine, not the model
    (reproducibility checks compare ``metrics``); ``history["step"]`` reads either.

    ``steps``: with ``diagnostics_every=k`` the diagnostics are here instead of in
    ``metrics``: ``steps["step"]`` the update numbers, and the means over each block of
    ``k`` updates.
    """

    metrics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    steps: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    clock: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    _pending: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.metrics:
            return self.metrics[name]
        if name in self.clock:
            return self.clock[name]
        raise KeyError(f"History has no column {name!r}; metrics: {sorted(self.metrics)}, "
                       f"clock: {sorted(self.clock)}")

    def __len__(self) -> int:
        return len(self.metrics.get("loss", ()))

    def append(self, chunk: dict[str, np.ndarray],
               clock: dict[str, np.ndarray] | None = None) -> None:
        """Add rows: ``chunk`` to ``metrics`` and ``clock`` (as many rows) to ``clock``."""
        if "data_loss" not in chunk:  # no penalty: the data loss is the loss
            chunk = {**chunk, "data_loss": chunk["loss"]}
        for k, v in chunk.items():
            self.metrics[k] = np.concatenate([self.metrics.get(k, np.zeros((0,), v.dtype)), v])
        for k, v in (clock or {}).items():
            self.clock[k] = np.concatenate([self.clock.get(k, np.zeros((0,), v.dtype)), v])

    def append_steps(self, values: dict[str, np.ndarray], first_step: int, every: int) -> None:
        """Per-step diagnostics (each ``(rows, steps)``) from update ``first_step + 1``
        on, recorded as means over blocks of ``every`` updates."""
        records, self._pending = block_means(
            {k: np.ravel(v) for k, v in values.items()}, first_step, every, self._pending)
        for k, v in records.items():
            self.steps[k] = np.concatenate([self.steps.get(k, np.zeros((0,), v.dtype)), v])

    def last(self) -> dict[str, float]:
        """The final row's metrics."""
        return {k: float(v[-1]) for k, v in self.metrics.items()}
