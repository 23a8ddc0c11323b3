"""One train step (forward, loss, backward, update), its gradient engines, and evaluate."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import backprop, nn, optim
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


def check_loss_domain(model: nn.Layer, loss: Callable, params: Any, x: Array, y: Array,
                      where: str) -> None:
    """Runs ``loss`` on the model's outputs for the first few examples, with concrete
    values, so that its domain checks fire before any compiled loop (where values
    cannot be checked): cross-entropy on probabilities given logits, soft labels that
    do not sum to 1, binary targets outside [0, 1]. Only for :class:`Loss` values."""
    if not isinstance(loss, Loss):
        return
    n = min(int(x.shape[0]), 16)
    out = _outputs(model, params, x[:n])
    try:
        loss(np.asarray(out), np.asarray(y[:n]))
    except ValueError as e:
        raise ValueError(f"{where}: the model's outputs or the targets do not suit "
                         f"{loss.name}: {e}") from None


def train_step(state: TrainState, x: Array, y: Array, *, model: nn.Layer, loss: Callable,
               update: Callable, engine: str = "backprop", penalty: Penalty | None = None,
               metrics: tuple[Metric, ...] | None = None, diagnostics: tuple[str, ...] = (),
               ) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step on the batch ``(x, y)``: forward, loss, backward, update.

    Pure: returns the new state and this step's metrics (``loss`` with penalties,
    ``data_loss``, and each metric by name: by default the loss's natural metric).
    ``update`` is ``optimizer.update``. ``diagnostics`` (names from
    :data:`funcnn.diagnostics.NAMES`) adds this step's gradient-flow diagnostics (all
    but ``update_ratio``, a per-epoch quantity that ``run_epochs`` adds). Jit it
    with ``model``, ``loss``, ``update``, ``engine``, ``metrics`` and ``diagnostics``
    static.
    """
    chosen = metric_set(loss, metrics, "train_step")
    nn.check_params(model, state.params, x.shape[1:], "train_step")
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

def _evaluate_arrays(params, x, y, *, model, loss, metrics=()):
    out = model.apply(params, x)
    return {"loss": loss(out, y), **compute(metrics, out, y)}


_evaluate = jax.jit(_evaluate_arrays, static_argnames=("model", "loss", "metrics"))


def evaluate(model: nn.Layer, loss: Callable, params: Any, x: Any, y: Any = None, *,
             metrics: Any = None) -> dict[str, float]:
    """Loss and metrics of ``params`` on ``(x, y)`` (no dropout), as Python floats.

    ``metrics`` as for ``fit``: by default the loss's natural metric.
    """
    chosen = metric_set(loss, metrics, "evaluate")
    x, y = prepare_data(model, loss, params, x, y)
    check_loss_domain(model, loss, params, x, y, "evaluate")
    return {k: float(v) for k, v in
            _evaluate(params, x, y, model=model, loss=loss, metrics=chosen).items()}
