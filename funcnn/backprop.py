"""Backpropagation by hand: the backward rule of every layer and loss, and a driver.

The chain rule, run in reverse. For a network ``y = f_L(... f_2(f_1(x)))`` and a loss
``L(y, t)``, start with ``dL/dy`` from the loss's rule; each layer, last to first,
turns the gradient of its output ``dy = dL/dy`` into the gradient of its parameters
``dL/dparams`` and of its input ``dx = dL/dx``, which is the ``dy`` of the layer below.

Each rule sits in its own small function with its derivation beside it, and is found
by the layer's ``kind`` (``LAYER_RULES``) or the loss function (``LOSS_RULES``,
``PENALTY_RULES``). A rule sees the layer's input ``x`` and output ``y`` from the
forward pass (the "tape"). Nothing here calls JAX's autodiff (``grad``, ``vjp``,
``jvp``, ``linearize``): the tests prove it, and prove every rule equal to
``jax.grad`` in float64 and to finite differences.

    g = backprop.grad(model, losses.softmax_cross_entropy)(params, x, y)
    # same pytree as jax.grad(lambda p: loss(model.apply(p, x), y))(params)

Everything is plain ``jax.numpy``, so it jit-compiles and runs unchanged on CPU, GPU
and TPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from funcnn import losses, nn

Array = jax.Array

__all__ = ["forward", "backward", "grad", "value_and_grad", "LAYER_RULES", "LOSS_RULES",
           "PENALTY_RULES", "MissingRuleError"]


class MissingRuleError(TypeError):
    """A layer or loss has no hand-derived backward rule here (use ``jax.grad``)."""


# --------------------------------------------------------------------------------------
# Layer rules: (layer, params, tape, dy, key, train) -> (dparams, dx)
# For a leaf layer the tape is (x, y): its input and its output.
# --------------------------------------------------------------------------------------

def _dense(layer, params, tape, dy, key, train):
    # y_nj = sum_i x_ni W_ij + b_j, so
    #   dL/dW_ij = sum_n x_ni dy_nj   -> dW = x^T dy
    #   dL/db_j  = sum_n dy_nj        -> db = column sums of dy
    #   dL/dx_ni = sum_j dy_nj W_ij   -> dx = dy W^T
    x, _ = tape
    return nn.Dense(w=x.T @ dy, b=jnp.sum(dy, axis=0)), dy @ params.w.T


def _relu(layer, params, tape, dy, key, train):
    # y = max(0, x): slope 1 where x > 0, 0 elsewhere (0 at x = 0, as NNFS).
    x, _ = tape
    return nn.NoParams(), jnp.where(x > 0, dy, 0)


def _leaky_relu(layer, params, tape, dy, key, train):
    # y = x for x > 0, a x otherwise: slope 1 or a.
    x, _ = tape
    a = layer.config["negative_slope"]
    return nn.NoParams(), jnp.where(x > 0, dy, a * dy)


def _sigmoid(layer, params, tape, dy, key, train):
    # s = 1/(1+e^-x); ds/dx = e^-x/(1+e^-x)^2 = s (1 - s), written with the output s.
    _, y = tape
    return nn.NoParams(), dy * y * (1 - y)


def _tanh(layer, params, tape, dy, key, train):
    # d tanh(x)/dx = 1 - tanh(x)^2 = 1 - y^2.
    _, y = tape
    return nn.NoParams(), dy * (1 - y * y)


def _identity(layer, params, tape, dy, key, train):
    # y = x: the gradient passes through unchanged.
    return nn.NoParams(), dy


def _softmax(layer, params, tape, dy, key, train):
    # y_i = e^x_i / sum_k e^x_k has Jacobian dy_i/dx_j = y_i (delta_ij - y_j), so
    #   dx_j = sum_i dy_i y_i (delta_ij - y_j) = y_j (dy_j - sum_i dy_i y_i).
    # This is the Jacobian-vector product without building the (C, C) Jacobian that
    # NNFS builds with np.diagflat per sample.
    _, y = tape
    return nn.NoParams(), y * (dy - jnp.sum(dy * y, axis=-1, keepdims=True))


def _flatten(layer, params, tape, dy, key, train):
    # A reshape moves no values: reshape the gradient back.
    x, _ = tape
    return nn.NoParams(), dy.reshape(x.shape)


def _dropout(layer, params, tape, dy, key, train):
    # y = x * m with m = keep / (1 - rate) fixed by the key, so dx = dy * m.
    # The mask is drawn again from the same key (XLA merges the two draws).
    if not train:
        return nn.NoParams(), dy
    mask = nn.dropout_mask(key, layer.config["rate"], dy.shape)
    return nn.NoParams(), dy * mask.astype(dy.dtype)


def _serial(layer, params, tape, dy, key, train):
    # y = f_n(...f_1(x)): apply each layer's rule from last to first, each layer's dx
    # being the dy of the layer before it.
    keys = nn.layer_keys(key, len(layer.children))
    grads = [None] * len(layer.children)
    for i in reversed(range(len(layer.children))):
        grads[i], dy = backward(layer.children[i], params[i], tape[i], dy, keys[i], train)
    return tuple(grads), dy


LAYER_RULES: dict[str, Callable] = {
    "dense": _dense, "relu": _relu, "leaky_relu": _leaky_relu, "sigmoid": _sigmoid,
    "tanh": _tanh, "identity": _identity, "softmax": _softmax, "flatten": _flatten,
    "dropout": _dropout, "serial": _serial,
}


# --------------------------------------------------------------------------------------
# Loss rules: (pred, target) -> dL/dpred, with L the batch mean
# --------------------------------------------------------------------------------------

def _softmax_cross_entropy(z, labels):
    # L = -1/N sum_n sum_c t_nc (z_nc - logsumexp(z_n)). Since sum_c t_nc = 1 and
    # d logsumexp(z_n)/dz_nc = softmax(z_n)_c, the famous fused rule follows:
    #   dL/dz = (softmax(z) - t) / N.
    t, ok = losses.one_hot_targets("softmax_cross_entropy", z, labels)
    g = (nn._softmax(z) - t) / z.shape[0]  # e^(z-m) / sum e^(z-m): accurate in float32
    return jnp.where(ok, g, jnp.nan)


def _clip_mask(p):
    # jnp.clip passes the gradient through inside [CLIP, 1 - CLIP] and blocks it outside.
    return (p >= losses.CLIP) & (p <= 1 - losses.CLIP)


def _categorical_cross_entropy(p, labels):
    # L = -1/N sum t log(clip(p)): dL/dp = -t / (N clip(p)) where p is not clipped.
    t, ok = losses.one_hot_targets("categorical_cross_entropy", p, labels)
    pc = jnp.clip(p, min=losses.CLIP, max=1 - losses.CLIP)
    g = jnp.where(_clip_mask(p), -t / pc, 0) / p.shape[0]
    return jnp.where(ok, g, jnp.nan)


def _binary_cross_entropy(p, t):
    # L = -mean(t log p + (1-t) log(1-p)): dL/dp = -(t/p - (1-t)/(1-p)) / size.
    t = t.astype(p.dtype)
    pc = jnp.clip(p, min=losses.CLIP, max=1 - losses.CLIP)
    g = -(t / pc - (1 - t) / (1 - pc)) / p.size
    return jnp.where(_clip_mask(p), g, 0)


def _binary_cross_entropy_with_logits(z, t):
    # With p = sigmoid(z), dp/dz = p(1-p) cancels the denominators above:
    #   dL/dz = (sigmoid(z) - t) / size.
    return (jax.nn.sigmoid(z) - t.astype(z.dtype)) / z.size


def _mse(p, t):
    # L = mean((p - t)^2): dL/dp = 2 (p - t) / size.
    return 2 * (p - t.astype(p.dtype)) / p.size


def _mae(p, t):
    # L = mean(|p - t|): dL/dp = sign(p - t) / size (+1 at p = t, as for l1 above).
    return jnp.where(p >= t.astype(p.dtype), 1, -1).astype(p.dtype) / p.size


LOSS_RULES: dict[Callable, Callable] = {
    losses.softmax_cross_entropy: _softmax_cross_entropy,
    losses.categorical_cross_entropy: _categorical_cross_entropy,
    losses.binary_cross_entropy: _binary_cross_entropy,
    losses.binary_cross_entropy_with_logits: _binary_cross_entropy_with_logits,
    losses.mse: _mse,
    losses.mae: _mae,
}

# Penalty rules: tree -> d(penalty)/d(tree), leaf by leaf.
PENALTY_RULES: dict[Callable, Callable] = {
    # d|w|/dw = sign(w); at w = 0 (zero-initialised biases) NNFS takes +1, as does
    # jax.grad of jnp.abs, so the two engines agree from the first step.
    losses.l1: lambda tree: jax.tree.map(lambda w: jnp.where(w >= 0, 1, -1).astype(w.dtype),
                                         tree),
    losses.l2: lambda tree: jax.tree.map(lambda w: 2 * w, tree),  # d w^2/dw = 2w
}


# --------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------

def forward(layer: nn.Layer, params: Any, x: Array, key: Array | None = None,
            train: bool = False) -> tuple[Array, Any]:
    """Runs ``layer`` forward, returning its output and the tape its backward needs.

    The tape of a leaf layer is ``(x, y)``; that of ``serial`` is the tuple of its
    layers' tapes. The output is computed by the layer's own ``apply``, so the forward
    math lives in one place.
    """
    if layer.kind == "serial":
        tapes = []
        for child, p, k in zip(layer.children, params,
                               nn.layer_keys(key, len(layer.children))):
            x, t = forward(child, p, x, k, train)
            tapes.append(t)
        return x, tuple(tapes)
    y = layer.apply_fn(params, x, key, train)
    return y, (x, y)


def backward(layer: nn.Layer, params: Any, tape: Any, dy: Array,
             key: Array | None = None, train: bool = False) -> tuple[Any, Array]:
    """Turns ``dL/d(output)`` into ``(dL/dparams, dL/d(input))`` with the layer's rule."""
    try:
        rule = LAYER_RULES[layer.kind]
    except KeyError:
        raise MissingRuleError(
            f"backprop: no hand-derived backward rule for layer kind {layer.kind!r}; "
            f"known: {sorted(LAYER_RULES)}. Use jax.grad for this model.") from None
    return rule(layer, params, tape, dy, key, train)


def _loss_rule(loss: Callable) -> Callable:
    try:
        return LOSS_RULES[loss]
    except KeyError:
        names = sorted(f.__name__ for f in LOSS_RULES)
        raise MissingRuleError(
            f"backprop: no hand-derived rule for loss {getattr(loss, '__name__', loss)!r}; "
            f"known: {names}. Use jax.grad for a custom loss.") from None


def value_and_grad(model: nn.Layer, loss: Callable, *,
                   return_output: bool = False) -> Callable:
    """``f(params, x, y, *, key=None, train=False) -> (loss, grads)``, all by hand.

    One forward pass records every layer's input and output, the loss's rule gives
    ``dL/d(output)``, and the layers' rules run last to first. ``grads`` has exactly
    the pytree structure of ``params``. With ``return_output=True`` it returns
    ``((loss, output), grads)``, like ``jax.value_and_grad(..., has_aux=True)``, so a
    training loop gets the predictions for its metrics without a second forward pass.
    """
    rule = _loss_rule(loss)

    def f(params, x, y, *, key=None, train=False):
        out, tape = forward(model, params, x, key, train)
        value = loss(out, y)
        grads, _ = backward(model, params, tape, rule(out, y), key, train)
        return ((value, out), grads) if return_output else (value, grads)

    return f


def grad(model: nn.Layer, loss: Callable) -> Callable:
    """``f(params, x, y, *, key=None, train=False) -> grads``: the hand-derived gradient
    of ``loss(model.apply(params, x), y)`` with respect to ``params``."""
    vg = value_and_grad(model, loss)

    def f(params, x, y, *, key=None, train=False):
        return vg(params, x, y, key=key, train=train)[1]

    return f
