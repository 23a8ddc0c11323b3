"""Plots of a :class:`~funcnn.sweep.SweepResults` (matplotlib, imported lazily)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import _check_metric, _py


def _matplotlib():
    try:
        from matplotlib import cm, colors
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("sweep plots need matplotlib: pip install 'funcnn[viz]' "
                          "(or pip install matplotlib)") from None
    return Figure, cm, colors


def _figure(Figure, ax):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    return fig, fig.subplots()


def plot_curves(res: Any, metric: str = "loss", by: str | None = None, *, ax: Any = None,
                log_color: bool | None = None, logy: bool | None = None) -> Any:
    """:meth:`SweepResults.plot_curves <funcnn.sweep.SweepResults.plot_curves>` of ``res``."""
    Figure, cm, colors = _matplotlib()
    _check_metric(res.history, metric, "plot_curves")
    by = by or res.names[0]
    if by not in res.values:
        raise ValueError(f"plot_curves: by={by!r} is not swept; choose one of "
                         f"{list(res.values)}")
    v = np.asarray(res.values[by], np.float64)
    if v.ndim != 1:
        raise ValueError(f"plot_curves: {by} is not a scalar per configuration")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"plot_curves: {by} holds non-finite values; color by another "
                         "swept name")
    if log_color is None:  # in logs: a ratio of 1e300 / 1e-10 would overflow
        log_color = bool(np.all(v > 0) and np.log10(v.max()) - np.log10(v.min()) > np.log10(20))
    norm = (colors.LogNorm if log_color else colors.Normalize)(v.min(), v.max()
                                                               if v.max() > v.min()
                                                               else v.min() + 1)
    fig, ax = _figure(Figure, ax)
    cmap = cm.get_cmap("viridis") if hasattr(cm, "get_cmap") else cm.viridis
    h = res.history[metric]
    epochs = np.arange(1, h.shape[1] + 1)
    for i in np.argsort(v):
        ax.plot(epochs, h[i], color=cmap(norm(v[i])), lw=0.8, alpha=0.8,
                ls=":" if res.diverged[i] else "-")
    if logy if logy is not None else ("loss" in metric and np.nanmin(h) > 0):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by {by} ({len(res)} configurations)")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=by)
    return fig


def plot_heatmap(res: Any, metric: str = "accuracy", x: str | None = None,
                 y: str | None = None, *, ax: Any = None, annotate: bool = True) -> Any:
    """:meth:`SweepResults.plot_heatmap <funcnn.sweep.SweepResults.plot_heatmap>` of
    ``res``."""
    Figure, _, _ = _matplotlib()
    axes = [(k, v) for k, v in (res.grid_axes or ()) if len(v) > 1]
    if len(axes) != 2:
        raise ValueError(f"plot_heatmap: needs a sweep over a two-dimensional grid "
                         f"(sweep.grid with two names of several values); this one's "
                         f"grid axes are {[k for k, _ in res.grid_axes or ()]}")
    names = [k for k, _ in axes]
    y = y or names[0]
    x = x or names[1 - names.index(y)]
    if sorted([x, y]) != sorted(names):
        raise ValueError(f"plot_heatmap: x and y must be the grid's axes {names}; got "
                         f"x={x!r}, y={y!r}")
    _check_metric(res.history, metric, "plot_heatmap")
    xv, yv = dict(axes)[x], dict(axes)[y]
    for name, v in ((x, xv), (y, yv)):
        if len({np.asarray(a).tobytes() for a in v}) != len(v) or np.any(np.isnan(v)):
            raise ValueError(f"plot_heatmap: the grid axis {name} holds repeated or NaN "
                             f"values {_py(v)}, so configurations would share a cell; "
                             "sweep distinct values")
    z = np.full((len(yv), len(xv)), np.nan)
    bad = np.zeros(z.shape, bool)
    final = res.final[metric]
    for i in range(len(res)):
        r = [int(np.flatnonzero(yv == res.values[y][i])[0]),
             int(np.flatnonzero(xv == res.values[x][i])[0])]
        z[r[0], r[1]] = np.nan if res.diverged[i] else final[i]
        bad[r[0], r[1]] = res.diverged[i]
    fig, ax = _figure(Figure, ax)
    im = ax.imshow(np.ma.masked_invalid(z), cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(xv)), [f"{_py(v):.3g}" for v in xv], rotation=45)
    ax.set_yticks(range(len(yv)), [f"{_py(v):.3g}" for v in yv])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"final {metric}")
    if annotate and z.size <= 400:
        for (r, c), val in np.ndenumerate(z):
            bright = np.isfinite(val) and im.norm(val) > 0.6  # dark text on yellow
            ax.text(c, r, "NaN" if bad[r, c] else f"{val:.3g}", ha="center",
                    va="center", fontsize=7, color="k" if bright else "w")
    fig.colorbar(im, ax=ax, label=metric)
    return fig
