"""The outcome of a sweep: :class:`SweepResults`, its rankings and exports."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any

import jax
import numpy as np

from funcnn import _markdown
from funcnn.diagnostics import is_column as is_diagnostic

from . import plots
from ._common import _check_metric, _py


def _json_safe(v: Any) -> Any:
    """Non-finite floats become None, so the file is strict JSON."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    return v


@dataclasses.dataclass(frozen=True, eq=False)
class SweepResults:
    """The outcome of :func:`run`: one row per configuration.

    Attributes:
      values: ``{name: (C, ...) array}``, the swept values as given (``seed`` always
        included); training used them cast to the weights' dtype.
      history: ``{metric: (C, epochs) array}``: ``loss``, ``data_loss``,
        ``learning_rate``, each metric (by default the loss's natural one, e.g.
        ``accuracy``), with validation data ``val_loss`` and ``val_`` + each metric, and
        with ``diagnostics`` one column per diagnostic and layer.
      diverged: ``(C,)`` bool: the loss or the weights became NaN/inf at some epoch;
        ``diverged_epoch``: the first such epoch (1-based), 0 where none.
      params: the final weights, every leaf with a leading ``(C,)`` axis (None with
        ``keep_params=False``).
      names: the swept names; grid_axes: the grid's axes when the space is a grid.
      strategy, chunk_size, devices: how it ran; compile_s, run_s: seconds spent
        compiling (tracing included) and running (results fetched to the host).
      note: why this strategy was chosen.
      steps: with ``diagnostics_every=k``, ``{"step": (records,), key: (C, records)}``:
        each diagnostic's mean over each block of ``k`` updates, as ``History.steps``.
    """

    values: dict[str, np.ndarray]
    history: dict[str, np.ndarray]
    diverged: np.ndarray
    diverged_epoch: np.ndarray
    params: Any
    names: tuple[str, ...]
    grid_axes: tuple[tuple[str, np.ndarray], ...] | None
    strategy: str
    chunk_size: int | None
    devices: int
    compile_s: float
    run_s: float
    note: str = ""
    steps: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.diverged)

    @property
    def final(self) -> dict[str, np.ndarray]:
        """``{metric: (C,) array}``: each configuration's last-epoch metrics (a
        property: ``results.final["loss"]``)."""
        return _Final({k: v[:, -1] for k, v in self.history.items()})

    def _index(self, i: Any, where: str) -> int:
        """``i`` as an index into the configurations (negative counts from the end)."""
        n = len(self)
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"{where}: the configuration index must be an int; got {i!r}")
        if not -n <= i < n:
            raise IndexError(f"{where}: configuration {i} does not exist; this sweep has {n} "
                             f"(indices 0 to {n - 1})")
        return int(i) % n

    def config(self, i: int) -> dict[str, Any]:
        """Configuration ``i``'s values (seed included)."""
        i = self._index(i, "config")
        return {k: _py(v[i]) for k, v in self.values.items()}

    def params_of(self, i: int) -> Any:
        """Configuration ``i``'s final weights."""
        if self.params is None:
            raise ValueError("params_of: the sweep ran with keep_params=False")
        i = self._index(i, "params_of")  # a jax array would clamp an index out of range
        return jax.tree.map(lambda a: a[i], self.params)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per configuration: ``index``, its values, final metrics, ``diverged``
        and ``diverged_epoch``. A metric named like a swept value (``learning_rate``,
        the rate in effect at the end) is called ``final_learning_rate``."""
        final = {(f"final_{k}" if k in self.values else k): v for k, v in self.final.items()}
        return [{"index": i, **self.config(i), **{k: _py(v[i]) for k, v in final.items()},
                 "diverged": bool(self.diverged[i]),
                 "diverged_epoch": int(self.diverged_epoch[i])} for i in range(len(self))]

    def _mode(self, metric: str, mode: str | None) -> str:
        _check_metric(self.history, metric)
        mode = mode or ("max" if "acc" in metric else "min")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max'; got {mode!r}")
        return mode

    def ranking(self, metric: str = "loss", mode: str | None = None) -> np.ndarray:
        """Configuration indices from best to worst by the final ``metric`` (``mode``:
        "min" or "max"; default max for accuracies, min otherwise). Diverged or NaN
        configurations come last."""
        mode = self._mode(metric, mode)
        v = np.asarray(self.final[metric], np.float64)
        score = -v if mode == "max" else v.copy()
        score[self.diverged | ~np.isfinite(score)] = np.inf
        return np.argsort(score, kind="stable")

    def best(self, metric: str = "loss", mode: str | None = None) -> dict[str, Any]:
        """The best configuration's row (see :meth:`rows`) by the final ``metric``."""
        i = int(self.ranking(metric, mode)[0])
        if self.diverged[i] or not np.isfinite(self.final[metric][i]):
            raise ValueError(f"best: every configuration diverged or has a NaN {metric}")
        return self.rows()[i]

    def summary(self, metric: str = "loss", top: int = 10, mode: str | None = None) -> str:
        """A Markdown table of the ``top`` configurations by ``metric``."""
        if isinstance(top, (bool, np.bool_)) or not isinstance(top, (int, np.integer)) \
                or top < 1:
            raise ValueError(f"summary: top must be a positive int; got {top!r}")
        order = self.ranking(metric, mode)[:top]
        metrics = [m for m in self.history if m not in ("data_loss", "learning_rate")
                   and not is_diagnostic(m)]
        head = ["#"] + list(self.values) + metrics + ["diverged"]
        body = []
        final = self.final
        for i in order:
            cells = [str(i)] + [f"{_py(self.values[k][i]):.4g}" if np.ndim(self.values[k][i])
                                == 0 else str(_py(self.values[k][i])) for k in self.values]
            cells += [f"{final[m][i]:.4f}" for m in metrics] + [str(bool(self.diverged[i]))]
            body.append(cells)
        return _markdown.table(head, body)

    def __repr__(self) -> str:
        return (f"SweepResults({len(self)} configurations, names={list(self.names)}, "
                f"strategy={self.strategy!r}, chunk_size={self.chunk_size}, "
                f"devices={self.devices}, compile {self.compile_s:.2f} s, run "
                f"{self.run_s:.2f} s, diverged {int(self.diverged.sum())})")

    # -- export -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Everything but the weights, as plain Python values (NaN/inf as None)."""
        rows = self.rows()
        for i, r in enumerate(rows):
            r["history"] = {k: _py(v[i]) for k, v in self.history.items()}
        out = {"names": list(self.names), "strategy": self.strategy,
               "chunk_size": self.chunk_size, "devices": self.devices,
               "compile_s": self.compile_s, "run_s": self.run_s, "note": self.note,
               "epochs": int(next(iter(self.history.values())).shape[1]),
               "grid": None if self.grid_axes is None else
               {k: _py(v) for k, v in self.grid_axes}, "rows": rows}
        return _json_safe(out)

    def to_json(self, path: str | os.PathLike) -> None:
        """Writes :meth:`to_dict` as JSON: settings, then one row per configuration with
        its values, final metrics and per-epoch history."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1, allow_nan=False)

    def to_csv(self, path: str | os.PathLike, *, history: bool = False) -> None:
        """Writes one line per configuration (values, final metrics, diverged); with
        ``history=True``, one line per configuration and epoch instead."""
        rows = self.rows()
        with open(path, "w", newline="") as f:
            if not history:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
                return
            metrics = list(self.history)
            w = csv.writer(f)
            w.writerow(["index", *self.values, "epoch", *metrics])
            for i in range(len(self)):
                vals = [_py(self.values[k][i]) for k in self.values]
                for e in range(self.history[metrics[0]].shape[1]):
                    w.writerow([i, *vals, e + 1, *(_py(self.history[m][i, e])
                                                   for m in metrics)])

    # -- plots (funcnn.sweep.plots; matplotlib imported there, only when called) --------

    def plot_curves(self, metric: str = "loss", by: str | None = None, *, ax: Any = None,
                    log_color: bool | None = None, logy: bool | None = None) -> Any:
        """Every configuration's ``metric`` per epoch, coloured by the value of ``by``
        (default: the first swept name) with a colour bar. Returns the Figure.

        Needs matplotlib (``pip install funcnn[viz]``); uses no global pyplot state.
        """
        return plots.plot_curves(self, metric, by, ax=ax, log_color=log_color, logy=logy)

    def plot_heatmap(self, metric: str = "accuracy", x: str | None = None,
                     y: str | None = None, *, ax: Any = None, annotate: bool = True) -> Any:
        """The final ``metric`` over a two-dimensional grid (``x`` across, ``y`` down;
        default: the grid's second and first axes). Diverged cells are blank and marked.
        Returns the Figure. Needs matplotlib."""
        return plots.plot_heatmap(self, metric, x, y, ax=ax, annotate=annotate)


class _Final(dict):
    """``SweepResults.final``: a dict that explains itself when called like a method."""

    def __call__(self, *args, **kwargs):
        raise TypeError("SweepResults.final is a property, a dict of per-configuration "
                        "arrays: write results.final['loss'], not results.final()")
