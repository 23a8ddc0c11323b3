"""The compiled training programs: whole epochs (``run_epochs``) and rows of steps
(``run_steps``), each one ``lax.scan`` inside another, pure and jitted whole.

Both train on the same batches. The batch of update ``s`` (``state.step`` before it)
lies in epoch ``e = s // B`` at position ``i = s % B``, ``B`` the batches per epoch
(:func:`funcnn.data.batches_per_epoch`); it holds rows ``i * batch_size`` up to
``(i + 1) * batch_size`` of epoch ``e``'s order, the permutation drawn from
``fold_in(fold_in(key, 1), e)`` (or the data's own order without shuffling; a single
full batch is the data as it is). With ``drop_remainder=False`` position ``B - 1`` is
the smaller batch of the ``N % batch_size`` examples left over, a separate step whose
loss is the mean over its own examples; with the default ``True`` they sit out this
epoch (a different few each epoch when shuffling).

So where a run stops, in a chunk, a row or mid-epoch, changes nothing it computes:
resume is bitwise, and ``steps = k * B`` trains exactly as ``epochs = k``.

With a ``mesh`` (data parallelism, :mod:`funcnn.parallel`) the same batches are drawn
from the data set (replicated on every device) and each is split over the mesh's batch
axis inside ``train_step``; nothing else changes. Without one the programs are exactly
those of a single device.

``run_epochs`` (what ``fit(epochs=...)`` and the sweeps run): one row of metrics per
epoch; the order is drawn once at the start of each epoch. ``run_steps`` (what
``fit(steps=..., eval_every=...)`` runs): one row per ``row_steps`` updates, which may
start and end anywhere in an epoch; the order rides in the scan's carry with its
epoch, and is drawn anew (under ``lax.cond``, so only then) by the first step of
another epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import nn, optim, parallel
from funcnn.data.batching import batches_per_epoch
from funcnn.diagnostics import is_column as is_diagnostic
from funcnn.diagnostics import update_ratios
from funcnn.metrics import Metric
from funcnn.train.state import Penalty, TrainState
from funcnn.train.step import _evaluate_arrays, metric_set, train_step

Array = jax.Array


def _all_finite(tree: Any) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _epoch_order(key: Array, epoch: Array, n: int, shuffle: bool) -> Array:
    """The order of the ``n`` examples in ``epoch``: a permutation drawn from
    ``fold_in(fold_in(key, 1), epoch)``, or ``0..n-1`` without shuffling."""
    if not shuffle:
        return jnp.arange(n)
    return jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 1), epoch), n)


def _gather(x: Array, y: Array, idx: Array) -> tuple[Array, Array]:
    return jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0)


def _stepper(*, guard: bool, **step_kw: Any) -> Callable:
    """``(state, bad_step), xb, yb -> (state, bad_step), metrics``: ``train_step``, and
    with ``guard`` the rejection of a step whose loss or new weights are not finite
    (and of every step after it: ``bad_step`` keeps the first bad update's number)."""

    def one(carry, xb, yb):
        state, bad_step = carry
        new, m = train_step(state, xb, yb, **step_kw)
        if guard:
            ok = (bad_step < 0) & jnp.isfinite(m["loss"]) & _all_finite(new.params)
            bad_step = jnp.where(ok | (bad_step >= 0), bad_step, state.step)
            new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
        return (new, bad_step), m
    return one


def _row(m: dict[str, Array], counts: Array | None, start: Any, state: TrainState,
         val: tuple[Array, Array] | None, *, penalty: Penalty | None, per_step: bool,
         diagnostics: tuple[str, ...], update: Callable, model: nn.Layer, loss: Callable,
         metrics: tuple[Metric, ...], mesh: Any = None,
         batch_axis: Any = parallel.DEFAULT_AXIS) -> dict[str, Array]:
    """One history row from the per-step metrics ``m`` of the row's updates.

    The loss and the metrics are means over the row's examples: with ``counts`` (each
    step's batch size, when the last batch of an epoch is smaller) each step weighs by
    its batch, else all alike (``jnp.mean``). Diagnostics are means over steps (or kept
    per step with ``per_step``); ``update_ratio`` is the row's change from ``start``.
    """
    out = {}
    for k, v in m.items():
        if k == "data_loss" and penalty is None:  # it equals loss: fit fills it in
            continue
        if is_diagnostic(k):
            out[k] = v if per_step else jnp.mean(v)
        elif counts is None:
            out[k] = jnp.mean(v)
        else:
            w = counts.astype(v.dtype)
            out[k] = jnp.sum(v * w) / jnp.sum(w)
    if "update_ratio" in diagnostics:  # the row's change, once per row: no cost
        out.update(update_ratios(start, state.params))
    out["finite"] = jnp.all(jnp.isfinite(m["loss"]))
    lr = optim.learning_rate(update, state.opt_state)
    if lr is not None:  # None: an optimizer that does not expose it (e.g. optax's)
        out["learning_rate"] = lr
    if val is not None:
        v = _evaluate_arrays(state.params, val[0], val[1], model=model, loss=loss,
                             metrics=metrics, mesh=mesh, batch_axis=batch_axis)
        out.update({f"val_{k}": v[k] for k in v})
    return out


def _finish(state: TrainState, bad_step: Array, rows: dict[str, Array]
            ) -> tuple[TrainState, dict[str, Array]]:
    rows["bad_step"] = bad_step
    # A non-finite weight after row k makes row k+1's loss non-finite, so only the last
    # row's weights need their own check.
    rows["finite"] = rows["finite"].at[-1].set(rows["finite"][-1] & _all_finite(state.params))
    return state, rows


def run_epochs(state: TrainState, x: Array, y: Array, penalty: Penalty | None,
               val: tuple[Array, Array] | None, *, model: nn.Layer, loss: Callable,
               update: Callable, engine: str, batch_size: int, shuffle: bool,
               epochs: int, guard: bool = False, metrics: tuple[Metric, ...] | None = None,
               diagnostics: tuple[str, ...] = (), per_step: bool = False,
               drop_remainder: bool = True, mesh: jax.sharding.Mesh | None = None,
               batch_axis: str | tuple[str, ...] = parallel.DEFAULT_AXIS,
               ) -> tuple[TrainState, dict[str, Array]]:
    """``epochs`` epochs as one nested ``lax.scan`` (pure; ``fit`` jits it).

    Each epoch: a permutation of the examples drawn on device, then ``N // batch_size``
    steps, each gathering its minibatch from the permutation, and with
    ``drop_remainder=False`` (when ``batch_size`` does not divide ``N``) one more step
    on the ``N % batch_size`` examples left over. Returns per-epoch metrics (arrays of
    length ``epochs``: ``loss``, each metric by name (``metrics``: a tuple of
    :class:`~funcnn.metrics.Metric`, default the loss's natural one), means over the
    epoch's examples; ``val_`` ones with validation data, and ``data_loss`` only with
    a penalty, as without one it equals ``loss``; with ``diagnostics``, one column per
    diagnostic and layer, shape ``(epochs, steps)`` when ``per_step``; ``update_ratio``
    once per epoch). With ``guard=True`` a step whose loss or new weights are not
    finite is rejected, and so are all steps after it: the state returned is the last
    finite one, and ``bad_step`` says where it went wrong (-1: nowhere). ``mesh`` and
    ``batch_axis``: data parallelism, as in :func:`~funcnn.train.train_step` (the
    validation set split too).
    """
    metrics = metric_set(loss, metrics, "run_epochs")
    n = x.shape[0]
    full = n // batch_size
    per_epoch = batches_per_epoch(n, batch_size, drop_remainder=drop_remainder)
    rest = n - full * batch_size if per_epoch > full else 0  # the smaller last batch
    full_batch = per_epoch == 1 and batch_size == n
    one = _stepper(guard=guard, model=model, loss=loss, update=update, engine=engine,
                   penalty=penalty, metrics=metrics, diagnostics=diagnostics,
                   mesh=mesh, batch_axis=batch_axis)
    counts = (None if not rest else
              jnp.asarray(np.array([batch_size] * full + [rest], np.int32)))
    summary = dict(penalty=penalty, per_step=per_step, diagnostics=diagnostics,
                   update=update, model=model, loss=loss, metrics=metrics,
                   mesh=mesh, batch_axis=batch_axis)

    def epoch(carry, _):
        state = carry[0]
        start = state.params
        order = None if full_batch else _epoch_order(state.key, state.step // per_epoch, n,
                                                     shuffle)

        def step(carry, i):
            if order is None:
                return one(carry, x, y)
            idx = jax.lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
            return one(carry, *_gather(x, y, idx))

        carry, m = jax.lax.scan(step, carry, jnp.arange(full))
        if rest:
            carry, last = one(carry, *_gather(x, y, order[full * batch_size:]))
            m = {k: jnp.concatenate([v, last[k][None]]) for k, v in m.items()}
        return carry, _row(m, counts, start, carry[0], val, **summary)

    (state, bad_step), rows = jax.lax.scan(epoch, (state, jnp.array(-1, jnp.int32)), None,
                                           length=epochs)
    return _finish(state, bad_step, rows)


def run_steps(state: TrainState, x: Array, y: Array, penalty: Penalty | None,
              val: tuple[Array, Array] | None, *, model: nn.Layer, loss: Callable,
              update: Callable, engine: str, batch_size: int, shuffle: bool, rows: int,
              row_steps: int, guard: bool = False, metrics: tuple[Metric, ...] | None = None,
              diagnostics: tuple[str, ...] = (), per_step: bool = False,
              drop_remainder: bool = True, mesh: jax.sharding.Mesh | None = None,
              batch_axis: str | tuple[str, ...] = parallel.DEFAULT_AXIS,
              ) -> tuple[TrainState, dict[str, Array]]:
    """``rows * row_steps`` updates as one nested ``lax.scan``, one row of metrics per
    ``row_steps`` of them (pure; ``fit(steps=...)`` jits it).

    The updates are those :func:`run_epochs` makes from ``state.step`` on, batch for
    batch (see the module's docstring), so the rows may start and end anywhere in an
    epoch. Returns what :func:`run_epochs` does, per row instead of per epoch: means
    over the row's examples, validation after the row's last update, ``update_ratio``
    over the row, per-step diagnostics of shape ``(rows, row_steps)``.
    """
    metrics = metric_set(loss, metrics, "run_steps")
    n = x.shape[0]
    full = n // batch_size
    per_epoch = batches_per_epoch(n, batch_size, drop_remainder=drop_remainder)
    rest = n - full * batch_size if per_epoch > full else 0
    full_batch = per_epoch == 1 and batch_size == n
    one = _stepper(guard=guard, model=model, loss=loss, update=update, engine=engine,
                   penalty=penalty, metrics=metrics, diagnostics=diagnostics,
                   mesh=mesh, batch_axis=batch_axis)
    summary = dict(penalty=penalty, per_step=per_step, diagnostics=diagnostics,
                   update=update, model=model, loss=loss, metrics=metrics,
                   mesh=mesh, batch_axis=batch_axis)
    key = state.key  # fixed for the run
    # The order in hand and the epoch it belongs to: a step of another epoch draws its
    # own (under lax.cond, so only then). -1 at first: the first step draws, wherever
    # in an epoch it stands.
    order = None if full_batch else (jnp.arange(n), jnp.array(-1, state.step.dtype))

    def step(carry, _):
        train_carry, order = carry
        s = train_carry[0].step
        i = s % per_epoch
        count = jnp.int32(batch_size)
        if full_batch:
            train_carry, m = one(train_carry, x, y)
            return (train_carry, order), (m, count)
        perm, held = order
        if shuffle:
            e = s // per_epoch
            perm = jax.lax.cond(held == e, lambda: perm,
                                lambda: _epoch_order(key, e, n, True))
            order = (perm, e)

        def full_step(c):
            idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
            return one(c, *_gather(x, y, idx))

        if not rest:
            train_carry, m = full_step(train_carry)
            return (train_carry, order), (m, count)
        train_carry, m = jax.lax.cond(
            i == full, lambda c: one(c, *_gather(x, y, perm[full * batch_size:])),
            full_step, train_carry)
        return (train_carry, order), (m, jnp.where(i == full, jnp.int32(rest), count))

    def row(carry, _):
        start = carry[0][0].params
        carry, (m, counts) = jax.lax.scan(step, carry, None, length=row_steps)
        return carry, _row(m, counts if rest else None, start, carry[0][0], val, **summary)

    ((state, bad_step), _), out = jax.lax.scan(
        row, ((state, jnp.array(-1, jnp.int32)), order), None, length=rows)
    return _finish(state, bad_step, out)


_STATIC = ("model", "loss", "update", "engine", "batch_size", "shuffle", "guard", "metrics",
           "diagnostics", "per_step", "drop_remainder", "mesh", "batch_axis")
_run_epochs = jax.jit(run_epochs, static_argnames=_STATIC + ("epochs",))
_run_steps = jax.jit(run_steps, static_argnames=_STATIC + ("rows", "row_steps"))
