"""The train state, weight penalties, and a fresh state from a model and optimizer."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import losses, nn, optim
from funcnn.optim.base import check_state_leaves
from funcnn._checks import tree_mismatch

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a run needs to continue: weights, optimizer state, step, key.

    ``step`` counts the optimizer updates applied so far; ``key`` is the run's PRNG key
    (fixed; per-step keys are derived from it and ``step``).
    """

    params: Any
    opt_state: Any
    step: Array
    key: Array


@dataclasses.dataclass(frozen=True)
class Penalty:
    """L1 and L2 penalties on the weights (NNFS chapter 14), added to the loss.

    ``l1`` and ``l2`` are coefficient pytrees that are *prefixes* of the parameters: a
    single number applies to every weight and bias; a tree such as
    ``(nn.Dense(w=5e-4, b=5e-4), nn.NoParams(), nn.Dense(w=0.0, b=0.0))`` sets each
    layer's own coefficients. The penalty is ``sum l1 * |w| + l2 * w^2``. Coefficients
    are arrays at run time, so sweeping them does not recompile.
    """

    l1: Any = 0.0
    l2: Any = 0.0

    def value(self, params: Any) -> Array:
        """``sum_layers l1 * sum|w| + l2 * sum w^2``."""
        parts = jax.tree.leaves((
            jax.tree.map(lambda c, sub: c * losses.l1(sub), self.l1, params),
            jax.tree.map(lambda c, sub: c * losses.l2(sub), self.l2, params)))
        return sum(parts[1:], parts[0]) if parts else jnp.zeros(())

    def grad(self, params: Any) -> Any:
        """Hand rule: ``l1 * sign(w) + 2 * l2 * w`` (``losses.l1.grad``, ``losses.l2.grad``)."""
        d1 = jax.tree.map(lambda c, sub: jax.tree.map(
            lambda g: c * g, losses.l1.grad(sub)), self.l1, params)
        d2 = jax.tree.map(lambda c, sub: jax.tree.map(
            lambda g: c * g, losses.l2.grad(sub)), self.l2, params)
        return jax.tree.map(lambda a, b: a + b, d1, d2)


jax.tree_util.register_dataclass(TrainState, data_fields=["params", "opt_state", "step", "key"],
                                 meta_fields=[])
jax.tree_util.register_dataclass(Penalty, data_fields=["l1", "l2"], meta_fields=[])


def dense_penalty(params: Any, *, weight_l1: float = 0.0, weight_l2: float = 0.0,
                  bias_l1: float = 0.0, bias_l2: float = 0.0,
                  layers: Sequence[int] | None = None) -> Penalty:
    """The same NNFS-style penalty on every weighted layer (weights and biases apart),
    or only on the ``layers`` of a :func:`funcnn.nn.serial` model (indices into its
    ``params`` tuple, activations counted): NNFS chapter 14 regularizes only its first
    layer, ``Layer_Dense(2, 64, weight_regularizer_l2=5e-4, bias_regularizer_l2=5e-4)``,
    which is ``dense_penalty(params, weight_l2=5e-4, bias_l2=5e-4, layers=[0])``.

    Weighted layers are those with ``w`` and ``b``: :class:`funcnn.nn.Dense` and
    :class:`funcnn.nn.Conv` (Nielsen's network3 decays both); other parameters (a
    layer norm's scale and bias) get 0. For other per-layer values build
    :class:`Penalty` trees by hand.
    """
    weighted = (nn.Dense, nn.Conv)
    chosen = None
    if layers is not None:
        if not isinstance(params, tuple):
            raise TypeError("dense_penalty: layers= picks entries of a serial model's "
                            f"params tuple; these params are a {type(params).__name__}")
        chosen = set()
        for i in layers:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) \
                    or not -len(params) <= i < len(params):
                raise ValueError(f"dense_penalty: layer index {i!r} is not one of the "
                                 f"{len(params)} layers (0 to {len(params) - 1})")
            i = int(i) % len(params)
            if not any(isinstance(node, weighted) for node in jax.tree.leaves(
                    params[i], is_leaf=lambda node: isinstance(node, weighted))):
                raise ValueError(f"dense_penalty: layer {i} has no weights to regularize "
                                 f"(its params are {type(params[i]).__name__}); count the "
                                 "activations too: serial(dense, relu, dense) has layers "
                                 "0, 1, 2")
            chosen.add(i)

    def coeffs(w, b):
        def one(tree, on):
            return jax.tree.map(
                lambda node: type(node)(w=w, b=b) if on and isinstance(node, weighted)
                else jax.tree.map(lambda _: 0.0, node),
                tree, is_leaf=lambda node: isinstance(node, weighted))
        if chosen is None:
            return one(params, True)
        return tuple(one(p, i in chosen) for i, p in enumerate(params))
    return Penalty(l1=coeffs(weight_l1, bias_l1), l2=coeffs(weight_l2, bias_l2))


def init_state(model: nn.Layer, optimizer: optim.Optimizer, key: Array,
               input_shape: tuple[int, ...], *, dtype: Any = jnp.float32,
               params: Any = None) -> TrainState:
    """A fresh train state: weights from ``model.init`` (or ``params`` given) and the
    optimizer's state. ``key`` is split into an init key and the run's key."""
    k_init, k_run = jax.random.split(key)
    if params is None:
        params = model.init(k_init, input_shape, dtype)
    else:
        nn.check_params(model, params, input_shape, "init_state")
    opt_state = optimizer.init(params)
    check_state_leaves(opt_state, "init_state")  # a user's transform: arrays only
    return TrainState(params, opt_state, jnp.zeros((), jnp.int32), k_run)


@functools.lru_cache(maxsize=64)
def _expected_opt_state(optimizer: optim.Optimizer, spec: Any) -> Any:
    """The state shapes ``optimizer.init`` makes for parameters of ``spec``."""
    treedef, leaves = spec
    params = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])
    return jax.eval_shape(optimizer.init, params)


def check_opt_state(optimizer: optim.Optimizer, state: TrainState, where: str) -> None:
    """Raises a ValueError when ``state.opt_state`` is not what ``optimizer.init`` makes
    for ``state.params`` (a state built with another optimizer), naming the first
    differing leaf. Shapes only: jit-safe and free at run time."""
    leaves, treedef = jax.tree.flatten(state.params)
    spec = (treedef, tuple((tuple(np.shape(a)), jnp.result_type(a)) for a in leaves))
    problem = tree_mismatch(_expected_opt_state(optimizer, spec), state.opt_state)
    if problem is not None:
        raise ValueError(
            f"{where}: state.opt_state was not made by this optimizer for these params: "
            f"{problem}. Was the state built with another optimizer? Make it with "
            "train.init_state(model, optimizer, key, input_shape) using the optimizer you "
            "train with (to keep the weights: init_state(..., params=state.params)).")
