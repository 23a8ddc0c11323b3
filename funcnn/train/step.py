"""One train step (forward, loss, backward, update), its gradient engines, and evaluate."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import backprop, distributed, nn, optim, parallel
from funcnn import diagnostics as diagnostics_lib
from funcnn.losses import Loss
from funcnn.metrics import Metric, as_metrics, compute
from funcnn.train.inputs import prepare_data
from funcnn.train.state import Penalty, TrainState

Array = jax.Array

ENGINES = backprop.ENGINES


def check_engine(engine: str, model: nn.Layer, loss: Callable, where: str) -> None:
    """A known engine, and (for ``"backprop"``) a rule for every layer and the loss."""
    if engine not in ENGINES:
        raise ValueError(f"{where}: engine must be one of {ENGINES}; got {engine!r}")
    if engine != "jax":
        backprop.check_rules(model, loss, engine)


def metric_set(loss: Callable, chosen: Any, where: str) -> tuple[Metric, ...]:
    """The metrics to report: ``chosen``, or the loss's natural metric by default."""
    return as_metrics(chosen, loss.metric if isinstance(loss, Loss) else None, where)


def _loss_output_grads(model, loss, engine, params, x, y, key, penalty, stats=False):
    """``(total, data_loss, output, layer_stats), grads`` of
    ``loss(model(x), y) + penalty(params)``; ``layer_stats`` (the layers' diagnostics)
    is empty unless ``stats``."""
    if engine != "jax":
        vg = backprop.value_and_grad(model, loss, engine=engine, return_output=True,
                                     return_stats=stats)
        aux, grads = vg(params, x, y, key=key, train=True)
        data_loss, out, layer_stats = aux if stats else (*aux, {})
        if penalty is None:
            return (data_loss, data_loss, out, layer_stats), grads
        grads = jax.tree.map(jnp.add, grads, penalty.grad(params))
        return (data_loss + penalty.value(params), data_loss, out, layer_stats), grads

    def objective(p):
        out = model.apply(p, x, key=key, train=True)
        data_loss = loss(out, y)
        total = data_loss if penalty is None else data_loss + penalty.value(p)
        return total, (data_loss, out)

    (total, (data_loss, out)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    layer_stats = {}
    if stats:  # the same forward pass once more, recording what the layers report
        _, tape = backprop.forward(model, params, x, key, True, engine="mixed", stats=True)
        layer_stats = backprop.layer_stats(tape)
    return (total, data_loss, out, layer_stats), grads


@functools.partial(jax.jit, static_argnums=0)
def _outputs(model: nn.Layer, params: Any, x: Array) -> Array:
    return model.apply(params, x)


def domain_rows(v: Any, xp: Any = jnp) -> Any:
    """The indices of the (at most 4) rows of the batch-first ``v`` that decide every
    domain check funcnn's losses make on it, so that checking these rows checks them all:
    the first row holding NaN or inf, the rows holding the smallest and the largest
    finite value (checks ``>= 0``, ``<= 1``, labels in ``[0, classes)``), and the row
    whose sum over the last axis is farthest from 1 (probability or soft-label rows).

    ``xp`` is ``jnp`` (inside ``jit``, where it costs one pass of reductions over ``v``)
    or ``np`` (on the host). Always 4 indices (repeated where fewer matter), so the
    checked subset has one shape.
    """
    n = v.shape[0]
    flat = v.reshape(n, -1)
    if flat.shape[1] == 0:
        return xp.zeros((4,), xp.int32)
    if jnp.issubdtype(flat.dtype, jnp.inexact):
        finite = xp.isfinite(flat)
        lo = xp.where(finite, flat, xp.inf).min(axis=1)
        hi = xp.where(finite, flat, -xp.inf).max(axis=1)
        rows = [xp.argmin(finite.all(axis=1).astype(xp.int32)), xp.argmin(lo), xp.argmax(hi)]
        if v.ndim >= 2:
            sums = v.sum(axis=-1).reshape(n, -1)
            off = xp.where(xp.isfinite(sums), xp.abs(sums - 1), 0).max(axis=1)
            rows.append(xp.argmax(off))
    else:  # integer labels (or bools): their range
        flat = flat.astype(xp.int32) if flat.dtype == bool else flat
        rows = [xp.argmin(flat.min(axis=1)), xp.argmax(flat.max(axis=1))]
    rows += rows[:1] * (4 - len(rows))
    return xp.stack([xp.asarray(r, xp.int32) for r in rows])


_FIRST = 16  # examples checked from the start of the data, beside the deciding rows


def check_loss_domain(model: nn.Layer, loss: Callable, params: Any, x: Array, y: Array,
                      where: str, out_rows: Any = None) -> None:
    """Runs ``loss`` with concrete values on the model's outputs for a few examples, so
    that its domain checks fire before any compiled loop (where values cannot be
    checked): cross-entropy on probabilities given logits, soft labels that do not sum
    to 1, binary targets outside [0, 1], labels out of range, NaN. Only for
    :class:`Loss` values.

    The examples are the first 16, the rows of ``y`` that decide every target check
    (:func:`domain_rows`, on the host: the targets are checked over the WHOLE data),
    and ``out_rows``, the rows of the model's outputs that decide every prediction
    check, when the caller has them: :func:`evaluate` computes them inside its
    compiled pass over all examples, so its check covers every output at the cost of
    a few reductions. ``fit`` does not (that would cost a forward pass over the
    training set before training): there the predictions are checked on the first 16
    examples, which settles what depends on the model (logits or probabilities).
    """
    if not isinstance(loss, Loss):
        return
    n = int(x.shape[0])
    y_host = np.asarray(y)
    extra = np.zeros(4, np.int32) if out_rows is None else np.asarray(out_rows, np.int32)
    idx = np.concatenate([np.arange(_FIRST) % n, domain_rows(y_host, np), extra])
    out = np.asarray(_outputs(model, params, x[idx]))
    ys = y_host[idx]
    try:
        loss(out, ys)
    except ValueError as e:
        problem = str(e)
        for j in dict.fromkeys(range(len(idx)), None):  # name the first bad example
            try:
                loss(out[j:j + 1], ys[j:j + 1])
            except ValueError as one:
                problem = f"example {int(idx[j])}: {one}"
                break
        raise ValueError(f"{where}: the model's outputs or the targets do not suit "
                         f"{loss.name}: {problem}") from None


def train_step(state: TrainState, x: Array, y: Array, *, model: nn.Layer, loss: Callable,
               update: Callable, engine: str = "backprop", penalty: Penalty | None = None,
               metrics: tuple[Metric, ...] | None = None, diagnostics: tuple[str, ...] = (),
               mesh: jax.sharding.Mesh | None = None,
               batch_axis: str | tuple[str, ...] = parallel.DEFAULT_AXIS,
               ) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step on the batch ``(x, y)``: forward, loss, backward, update.

    Pure: returns the new state and this step's metrics (``loss`` with penalties,
    ``data_loss``, and each metric by name: by default the loss's natural metric).
    ``update`` is ``optimizer.update``. ``diagnostics`` (names from
    :data:`funcnn.diagnostics.NAMES`) adds this step's gradient-flow diagnostics (all
    but ``update_ratio``, a per-epoch quantity that ``run_epochs`` adds). Jit it
    with ``model``, ``loss``, ``update``, ``engine``, ``metrics``, ``diagnostics``,
    ``mesh`` and ``batch_axis`` static (functions and layers are not arrays), e.g.::

        step = jax.jit(functools.partial(train.train_step, model=model, loss=loss,
                                         update=optimizer.update))
        state, metrics = step(state, x_batch, y_batch)

    With a ``mesh`` (:mod:`funcnn.parallel`) the step is data-parallel: the batch is
    split over the mesh axis ``batch_axis`` (its size must divide the batch), the
    state replicated on every device; the gradients' sums over the batch become
    all-reduces across the devices.
    """
    chosen = metric_set(loss, metrics, "train_step")
    nn.check_params(model, state.params, x.shape[1:], "train_step")
    if mesh is not None:
        batch_axis = parallel.check_mesh(mesh, batch_axis, "train_step")
        parallel.check_divisible(x.shape[0], mesh, batch_axis, "the batch", "train_step")
        state = parallel.constrain_replicated(state, mesh, batch_axis)
        x, y = parallel.constrain_batch((x, y), mesh, batch_axis)
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.key, 0), state.step)
    stats = any(n in diagnostics for n in diagnostics_lib.LAYER_STATS)
    (total, data_loss, out, layer_stats), grads = _loss_output_grads(
        model, loss, engine, state.params, x, y, dropout_key, penalty, stats)
    updates, opt_state = update(grads, state.opt_state, state.params)
    params = optim.apply_updates(state.params, updates)
    new = TrainState(params, opt_state, state.step + 1, state.key)
    diag = diagnostics_lib.step_values(diagnostics, grads, layer_stats) if diagnostics else {}
    return new, {"loss": total, "data_loss": data_loss, **compute(chosen, out, y), **diag}


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------

def _evaluate_arrays(params, x, y, *, model, loss, metrics=(), mesh=None,
                     batch_axis=parallel.DEFAULT_AXIS, with_domain_rows=False):
    if mesh is not None:  # the examples split over the batch axis, params replicated
        params = parallel.constrain_replicated(params, mesh, batch_axis)
        x, y = parallel.constrain_batch((x, y), mesh, batch_axis)
    out = model.apply(params, x)
    scores = {"loss": loss(out, y), **compute(metrics, out, y)}
    # evaluate's domain check over every output: a few reductions in the same pass
    return (scores, domain_rows(out)) if with_domain_rows else scores


_evaluate = jax.jit(_evaluate_arrays, static_argnames=("model", "loss", "metrics", "mesh",
                                                       "batch_axis", "with_domain_rows"))


def evaluate(model: nn.Layer, loss: Callable, params: Any, x: Any, y: Any = None, *,
             metrics: Any = None, mesh: jax.sharding.Mesh | None = None,
             batch_axis: str | tuple[str, ...] = parallel.DEFAULT_AXIS) -> dict[str, float]:
    """Loss and metrics of ``params`` on ``(x, y)`` (no dropout), as Python floats.

    ``metrics`` as for ``fit``: by default the loss's natural metric. With a ``mesh``
    the examples are split over its axis ``batch_axis`` (their number must be a
    multiple of its size), the parameters replicated, as in ``fit``.
    """
    across = isinstance(mesh, jax.sharding.Mesh) and distributed.spans_processes(mesh)
    with distributed.checked_together("evaluate", across) as agree:
        chosen = metric_set(loss, metrics, "evaluate")
        if mesh is not None:
            batch_axis = parallel.check_mesh(mesh, batch_axis, "evaluate")
            distributed.check_all_processes(mesh, "evaluate")
            params = distributed.local(params)  # e.g. from fit over processes
        x, y = prepare_data(model, loss, params, x, y, where="evaluate")
        if across:
            agree.same("the data", (x, y), "pass the whole data set on every process, or "
                       "gather the parts with funcnn.distributed.gather_processes")
            agree.same("the params", params)
    # The domain check covers every output (check_loss_domain): the compiled pass also
    # returns the rows that decide it, which are then checked on the host.
    if mesh is None:
        out, rows = _evaluate(params, x, y, model=model, loss=loss, metrics=chosen,
                              with_domain_rows=True)
    else:
        parallel.check_divisible(x.shape[0], mesh, batch_axis, "the evaluation set",
                                 "evaluate", "or evaluate the rest without a mesh")
        with parallel.mesh_context(mesh):
            out, rows = _evaluate(parallel.replicate(params, mesh),
                                  *parallel.shard_batch((x, y), mesh, batch_axis), model=model,
                                  loss=loss, metrics=chosen, mesh=mesh, batch_axis=batch_axis,
                                  with_domain_rows=True)
    check_loss_domain(model, loss, params, x, y, "evaluate", out_rows=rows)
    return {k: float(v) for k, v in out.items()}
