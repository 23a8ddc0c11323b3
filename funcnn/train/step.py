"""One train step (forward, loss, backward, update), its gradient engines, and evaluate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from funcnn import backprop, losses, nn, optim
from funcnn.train.inputs import prepare_data
from funcnn.train.state import Penalty, TrainState

Array = jax.Array

ENGINES = ("backprop", "jax")


def _metric(loss: Callable, out: Array, y: Array) -> Array:
    """Accuracy for classification losses; NaN for regression."""
    if loss in (losses.softmax_cross_entropy, losses.categorical_cross_entropy):
        return losses.accuracy(out, y)
    if loss is losses.binary_cross_entropy:
        return jnp.mean(((out > 0.5) == (y > 0.5)).astype(out.dtype))
    if loss is losses.binary_cross_entropy_with_logits:
        return jnp.mean(((out > 0) == (y > 0.5)).astype(out.dtype))
    return jnp.full((), jnp.nan, out.dtype)


def _loss_output_grads(model, loss, engine, params, x, y, key, penalty):
    """``(total, data_loss, output), grads`` of ``loss(model(x), y) + penalty(params)``."""
    if engine == "backprop":
        (data_loss, out), grads = backprop.value_and_grad(model, loss, return_output=True)(
            params, x, y, key=key, train=True)
        if penalty is None:
            return (data_loss, data_loss, out), grads
        grads = jax.tree.map(jnp.add, grads, penalty.grad(params))
        return (data_loss + penalty.value(params), data_loss, out), grads

    def objective(p):
        out = model.apply(p, x, key=key, train=True)
        data_loss = loss(out, y)
        total = data_loss if penalty is None else data_loss + penalty.value(p)
        return total, (data_loss, out)

    (total, (data_loss, out)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return (total, data_loss, out), grads


def train_step(state: TrainState, x: Array, y: Array, *, model: nn.Layer, loss: Callable,
               update: Callable, engine: str = "backprop",
               penalty: Penalty | None = None) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step on the batch ``(x, y)``: forward, loss, backward, update.

    Pure: returns the new state and this step's metrics (``loss`` with penalties,
    ``data_loss``, ``accuracy``). ``update`` is ``optimizer.update``. Jit it with
    ``model``, ``loss``, ``update`` and ``engine`` static.
    """
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.key, 0), state.step)
    (total, data_loss, out), grads = _loss_output_grads(
        model, loss, engine, state.params, x, y, dropout_key, penalty)
    updates, opt_state = update(grads, state.opt_state, state.params)
    params = optim.apply_updates(state.params, updates)
    new = TrainState(params, opt_state, state.step + 1, state.key)
    return new, {"loss": total, "data_loss": data_loss, "accuracy": _metric(loss, out, y)}


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------

def _evaluate_arrays(params, x, y, *, model, loss):
    out = model.apply(params, x)
    return {"loss": loss(out, y), "accuracy": _metric(loss, out, y)}


_evaluate = jax.jit(_evaluate_arrays, static_argnames=("model", "loss"))


def evaluate(model: nn.Layer, loss: Callable, params: Any, x: Any,
             y: Any = None) -> dict[str, float]:
    """Loss and accuracy of ``params`` on ``(x, y)`` (no dropout), as Python floats."""
    x, y = prepare_data(model, loss, params, x, y)
    return {k: float(v) for k, v in _evaluate(params, x, y, model=model, loss=loss).items()}
