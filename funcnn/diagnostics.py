"""Gradient-flow diagnostics: Nielsen's chapter 5, inside the compiled training loop.

Nielsen measures the "speed of learning" of each layer as the norm of the gradient of
the cost with respect to its biases, ``||dC/db||``, and finds it about 100 times
smaller in the first hidden layer of a four-hidden-layer sigmoid net than in the last:
the vanishing gradient problem. Hand backprop computes every layer's delta anyway;
``fit(..., diagnostics=[...])`` records, per step and inside the same compiled program:

* ``grad_norm``: ``||dL/dp||`` for every parameter array ``p`` (``grad_norm[0].b`` is
  the first layer's bias: Nielsen's speed of learning; ``grad_norm[0].w`` its weights);
* ``update_ratio``: ``||p_end - p_start|| / ||p_start||`` over each epoch, how far
  the epoch moved each array relative to its size (1 for an array that started at
  zero). Per epoch only: measured once per step it cost 7-10 % of an MNIST-sized step
  on a CPU (it keeps XLA from fusing the optimizer's update), once per epoch nothing;
* ``saturation``: for sigmoid and tanh layers, the fraction of activations whose slope
  is below 5 % of its maximum (a gradient through them shrinks 20-fold or more);
* ``dead_units``: for ReLU layers, the fraction of units that output 0 for every
  example of the batch (they pass no gradient back).

Each is recorded per epoch (the mean over the epoch's steps, one column per layer in
the history, like the loss) or, except ``update_ratio``, with ``diagnostics_every=k``
as the mean over each block of ``k`` steps (``history.steps``). Both engines record
the same numbers, and recording changes nothing in the trained weights.

    state, history = train.fit(..., diagnostics=["grad_norm", "saturation"])
    diagnostics.plot_speed_of_learning(history).savefig("speed.png")
    print(diagnostics.table(history))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import _markdown, backprop

Array = jax.Array

__all__ = ["NAMES", "LAYER_STATS", "check_names", "check_model", "step_values",
           "update_ratios", "block_means", "is_column", "columns", "table",
           "plot_speed_of_learning"]

#: The diagnostics ``fit`` and ``sweep.run`` can record.
NAMES = ("grad_norm", "update_ratio", "saturation", "dead_units")
#: Those that come from the layers' forward passes (``Layer.stats_fn``).
LAYER_STATS = ("saturation", "dead_units")


def check_names(names: Any, every: Any, where: str) -> tuple[tuple[str, ...], int | None]:
    """``diagnostics`` and ``diagnostics_every`` as given to ``fit``, checked.

    ``names``: None (none), True (all that apply to the model), or a list of
    :data:`NAMES`. ``every``: None
    (per epoch) or a positive number of steps.
    """
    if names is None or names is False:
        if every is not None:
            raise ValueError(f"{where}: diagnostics_every={every!r} needs diagnostics=[...]")
        return (), None
    all_requested = names is True
    if all_requested:
        names = NAMES
    if isinstance(names, str):
        names = [names]
    names = tuple(names)
    if unknown := [n for n in names if n not in NAMES]:
        raise ValueError(f"{where}: unknown diagnostic(s) {unknown}; choose from {list(NAMES)} "
                         "(or diagnostics=True for all)")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: diagnostics {list(names)} name one twice")
    if every is not None and "update_ratio" in names:
        if not all_requested:
            raise ValueError(f"{where}: update_ratio is recorded once per epoch (its change "
                             "over the epoch); leave it out with diagnostics_every")
        names = tuple(n for n in names if n != "update_ratio")
    if every is not None and (isinstance(every, bool) or not isinstance(every, (int, np.integer))
                              or every < 1):
        raise ValueError(f"{where}: diagnostics_every must be a positive number of steps "
                         f"(or None: once per epoch); got {every!r}")
    return names, None if every is None else int(every)


def step_values(names: tuple[str, ...], grads: Any,
                stats: Mapping[str, Array]) -> dict[str, Array]:
    """One step's diagnostics: ``{name + parameter or layer path: scalar}`` (all but
    ``update_ratio``, which :func:`update_ratios` gives per epoch)."""
    out = {}
    if "grad_norm" in names:
        for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
            out[f"grad_norm{jax.tree_util.keystr(path)}"] = _norm(g)
    for key, value in stats.items():
        if any(key.startswith(n) for n in names if n in LAYER_STATS):
            out[key] = value
    return out


def update_ratios(start: Any, end: Any) -> dict[str, Array]:
    """``||end - start|| / ||start||`` per parameter array; where ``start`` is all zeros
    (fresh biases) the ratio to the change itself, 1, is taken: never inf."""
    out = {}
    for (path, p), q in zip(jax.tree_util.tree_flatten_with_path(start)[0],
                            jax.tree.leaves(end)):
        norm_u, norm_p = _norm(q - p), _norm(p)
        denom = jnp.where(norm_p > 0, norm_p, norm_u)
        out[f"update_ratio{jax.tree_util.keystr(path)}"] = jnp.where(denom > 0,
                                                                    norm_u / denom, 0)
    return out


def _norm(a: Array) -> Array:
    """``||a||``, the sum of squares as one dot product (a vectorised BLAS call on a CPU)."""
    flat = a.reshape(-1)
    return jnp.sqrt(jnp.dot(flat, flat))


def check_model(names: tuple[str, ...], every: int | None, model: Any, params: Any, x: Array,
                total_steps: int, where: str, *, strict: bool = True) -> tuple[str, ...]:
    """The diagnostics of ``names`` that apply to ``model``; with ``strict`` (names asked
    for one by one, not ``diagnostics=True``) one that does not is an error. Also
    checks that ``every`` fits within the run's ``total_steps``."""
    if every is not None and every > total_steps:
        raise ValueError(f"{where}: diagnostics_every={every} is beyond the run's "
                         f"{total_steps} steps, so nothing would be recorded; use a smaller "
                         "interval, or diagnostics_every=None for once per epoch")
    keys = list(jax.eval_shape(lambda p, xx: backprop.layer_stats(backprop.forward(
        model, p, xx, jax.random.key(0), True, engine="mixed", stats=True)[1]), params, x[:1]))
    if jax.tree.leaves(params):
        keys += ["grad_norm", "update_ratio"]
    applies = tuple(n for n in names if any(k.startswith(n) for k in keys))
    for n in names:
        if strict and n not in applies:
            what = {"grad_norm": "parameters", "update_ratio": "parameters",
                    "saturation": "sigmoid or tanh layers (or a layer whose stats_fn reports "
                                  "'saturation')",
                    "dead_units": "ReLU layers (or a layer whose stats_fn reports "
                                  "'dead_units')"}[n]
            raise ValueError(f"{where}: diagnostic {n!r} needs {what}, and {model!r} has none; "
                             "leave it out of diagnostics=[...]")
    if not applies:
        raise ValueError(f"{where}: none of the diagnostics {list(names)} applies to {model!r}")
    return applies


def is_column(key: str) -> bool:
    """Whether a history column is a diagnostic (``grad_norm[0].b``, ...)."""
    return any(key.startswith(n + "[") or key == n for n in NAMES)


def block_means(values: Mapping[str, np.ndarray], first_step: int, every: int,
                pending: Mapping[str, np.ndarray] | None = None
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-step values to means over blocks of ``every`` steps.

    ``values[k][j]`` belongs to update number ``first_step + 1 + j`` (counting from 1);
    ``pending`` holds the values of the updates just before, not yet in a record. A
    record is made at every update number divisible by ``every``: the mean over the
    updates since the previous record. Returns ``(records, pending)``, ``records``
    holding ``"step"`` and one array per key.
    """
    pending = dict(pending or {})
    seq = {k: np.concatenate([np.asarray(pending.get(k, np.zeros(0)), np.float64),
                              np.ravel(np.asarray(v, np.float64))])
           for k, v in values.items()}
    if not seq:
        return {}, {}
    n = len(next(iter(seq.values())))
    s0 = first_step + 1 - len(next(iter(pending.values()), ()))  # update number of seq[0]
    ends = np.arange(-(-s0 // every) * every, s0 + n, every)
    records = {"step": ends.astype(np.int64)}
    for k, v in seq.items():
        records[k] = np.array([v[max(e - every + 1, s0) - s0:e - s0 + 1].mean()
                               for e in ends])
    cut = int(ends[-1] - s0 + 1) if len(ends) else 0
    return records, {k: v[cut:] for k, v in seq.items()}


def columns(history: Any, name: str) -> dict[str, np.ndarray]:
    """The history's columns of one diagnostic, ``{path: values}``."""
    metrics = getattr(history, "metrics", history)
    return {k[len(name):]: np.asarray(v) for k, v in metrics.items() if k.startswith(name + "[")}


def table(history: Any) -> str:
    """A Markdown table per layer: each diagnostic at the first and at the last epoch."""
    metrics = getattr(history, "metrics", history)
    keys = [k for k in metrics if is_column(k)]
    if not keys:
        return ""
    rows = {}
    for k in keys:
        name = next(n for n in NAMES if k.startswith(n))
        rows.setdefault(k[len(name):], {})[name] = np.asarray(metrics[k])
    names = [n for n in NAMES if any(n in r for r in rows.values())]
    head = ["layer / parameter"] + [f"{n} ({e})" for n in names for e in ("first", "last")]
    body = []
    for path, r in sorted(rows.items()):
        cells = [path]
        for n in names:
            v = r.get(n)
            cells += ["" if v is None else f"{v[0]:.3g}", "" if v is None else f"{v[-1]:.3g}"]
        body.append(cells)
    return _markdown.table(head, body)


def plot_speed_of_learning(history: Any, *, which: str = "b", ax: Any = None,
                           title: str | None = None) -> Any:
    """Nielsen's figure: the speed of learning ``||dC/db||`` of each layer per epoch
    (per record with ``diagnostics_every``), one line per layer, log scale.

    ``which="w"`` plots the weight-gradient norms instead. Returns the figure.
    """
    import matplotlib.pyplot as plt

    steps = getattr(history, "steps", None) or {}
    source = steps if any(k.startswith("grad_norm[") for k in steps) else history
    lines = {p: v for p, v in columns(source, "grad_norm").items() if p.endswith("." + which)}
    if not lines:
        raise ValueError("plot_speed_of_learning: the history has no grad_norm columns; "
                         "train with fit(..., diagnostics=['grad_norm'])")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    else:
        fig = ax.figure
    x_label = "step" if source is steps else "epoch"
    for i, (path, v) in enumerate(lines.items()):
        x = np.asarray(steps["step"]) if source is steps else np.arange(1, len(v) + 1)
        ax.plot(x, v, label=f"layer {i + 1} ({path})")
    ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(r"$\|\partial C / \partial b\|$" if which == "b" else
                  r"$\|\partial C / \partial w\|$")
    ax.set_title(title or "speed of learning per layer")
    ax.legend()
    return fig

