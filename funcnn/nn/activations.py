"""Elementwise activations and softmax, each with its derivative beside it.

Each rule gets the tape ``(x, y)`` (input and output) and ``dy = dL/dy`` and returns
``(NoParams(), dx)``; an elementwise ``y = f(x)`` has ``dx = dy * f'(x)``, written with
whichever of ``x`` or ``y`` makes ``f'`` cheapest.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from funcnn._checks import concrete
from funcnn.nn.layer import Layer, NoParams, check_batch

Array = jax.Array

__all__ = ["relu", "leaky_relu", "elu", "gelu", "silu", "softplus", "sigmoid", "tanh",
           "identity", "softmax", "softmax_fn", "elementwise"]


def elementwise(name: str, fn: Callable[[Array], Array],
                derivative: Callable[[Array, Array, Array], Array] | None, *,
                stats: Callable[[Array, Array], dict[str, Array]] | None = None,
                **config) -> Layer:
    """A weightless layer ``y = fn(x)`` whose rule is ``dx = derivative(x, y, dy)``.

    ``fn`` need not be elementwise: any map of each example that keeps its shape works,
    e.g. along the last axis as :func:`softmax` is built. A log-softmax output layer::

        nn.elementwise("log_softmax", jax.nn.log_softmax,
                       lambda x, y, dy: dy - jnp.exp(y) * jnp.sum(dy, -1, keepdims=True))

    (funcnn's losses take logits instead: ``losses.softmax_cross_entropy`` applies the
    log-softmax itself, and gives the same loss on log-probabilities, since
    ``log_softmax(log_softmax(z)) = log_softmax(z)``.)
    ``derivative=None`` makes a layer without a hand rule (for ``engine="mixed"``).
    ``stats(x, y)`` may report diagnostics of the forward pass (see :class:`Layer`).
    """
    def init_fn(key, in_shape, dtype):
        return in_shape, NoParams()

    def apply_fn(params, x, key, train):
        check_batch(name, x, None)
        return fn(x)

    def backward_fn(params, tape, dy, key, train):
        x, y = tape
        return NoParams(), derivative(x, y, dy)

    return Layer(name, init_fn, apply_fn, None if derivative is None else backward_fn,
                 config=config, stats_fn=None if stats is None else lambda tape: stats(*tape))


# Diagnostics (Nielsen ch. 5): a unit is saturated where its slope f' is below 5 % of the
# largest slope f can have (a gradient through it shrinks 20-fold or more), dead where
# it passes no gradient for any example of the batch.
SATURATED = 0.05


def _saturation(slope: Array) -> Array:
    """The fraction of activations (examples x units) whose slope is below 5 % of max."""
    return jnp.mean((slope < SATURATED).astype(slope.dtype))


def _dead_units(y: Array) -> Array:
    """The fraction of units (features) that output 0 for every example of the batch."""
    dead = jnp.all(y.reshape(y.shape[0], -1) <= 0, axis=0)
    return jnp.mean(dead.astype(y.dtype))


def relu() -> Layer:
    """``max(0, x)``, elementwise."""
    # where(x > 0, x, 0) rather than maximum(x, 0): autodiff then takes slope 0 at
    # x = 0, as the hand rule and NNFS do (maximum would split the tie as 0.5).
    # Rule: slope 1 where x > 0, 0 elsewhere (0 at x = 0, as NNFS).
    return elementwise("relu", lambda x: jnp.where(x > 0, x, 0),
                       lambda x, y, dy: jnp.where(x > 0, dy, 0),
                       stats=lambda x, y: {"dead_units": _dead_units(y)})


def _check_real(name: str, what: str, value, meaning: str) -> None:
    """A layer's number argument: a finite real scalar (a NaN one would turn the
    outputs, and their gradients, into NaN only once training runs)."""
    v = concrete(value)
    if v is None:  # a tracer inside jit or vmap (a swept value): checked by its sweep
        return
    real = jnp.issubdtype(v.dtype, jnp.integer) or jnp.issubdtype(v.dtype, jnp.floating)
    if v.shape != () or not real:  # bool is neither
        raise TypeError(f"{name}: {what} must be a real number ({meaning}); got {value!r} "
                        f"of type {type(value).__name__}")
    if not np.isfinite(v):
        raise ValueError(f"{name}: {what} must be finite ({meaning}); got {value!r}")


def leaky_relu(negative_slope: float = 0.01) -> Layer:
    """``x`` for ``x > 0`` and ``negative_slope * x`` otherwise.

    ``negative_slope`` must be a finite real number: a NaN one would turn every negative
    input, and its gradient, into NaN only once training runs.
    """
    _check_real("leaky_relu", "negative_slope", negative_slope, "the slope for x <= 0, e.g. 0.01")
    a = negative_slope
    # Rule: slope 1 where x > 0, a elsewhere.
    return elementwise("leaky_relu", lambda x: jnp.where(x > 0, x, a * x),
                       lambda x, y, dy: jnp.where(x > 0, dy, a * dy),
                       negative_slope=negative_slope)


def elu(alpha: float = 1.0) -> Layer:
    """The exponential linear unit: ``x`` for ``x > 0``, ``alpha (e^x - 1)`` otherwise
    (``jax.nn.elu``; Clevert et al. 2015)."""
    _check_real("elu", "alpha", alpha, "the scale of the negative part, e.g. 1.0")
    a = alpha
    # Rule: slope 1 where x > 0; alpha e^x elsewhere. (That is y + alpha, but in the tail
    # y + alpha cancels to 0 while alpha e^x is tiny and exact: e^-30 is 1e-13.)
    # At x = 0 the slope is alpha, the side jax.grad of jax.nn.elu takes.
    return elementwise("elu", lambda x: jax.nn.elu(x, a),
                       lambda x, y, dy: jnp.where(x > 0, dy,
                                                  dy * a * jnp.exp(jnp.minimum(x, 0))),
                       alpha=alpha)


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_CUBIC = 0.044715


def _gelu_tanh_slope(x: Array) -> Array:
    # y = x c(x) with c = (1 + tanh u) / 2, u = sqrt(2/pi) (x + 0.044715 x^3):
    #   dy/dx = c + x c' = c + x (1 - tanh^2 u) / 2 * sqrt(2/pi) (1 + 3 * 0.044715 x^2).
    # Beyond |x| = 100, tanh u is +-1 exactly and the slope exactly 1 or 0: clipping x
    # there keeps 0 * inf (x^3 overflowing) from making it NaN, as it does in jax.grad.
    x = jnp.clip(x, min=-100, max=100)
    t = jnp.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_OVER_PI * (
        1 + 3 * _GELU_CUBIC * x * x)


def _gelu_exact_slope(x: Array) -> Array:
    # y = x Phi(x), Phi the standard normal CDF: dy/dx = Phi(x) + x phi(x),
    # phi(x) = e^(-x^2/2) / sqrt(2 pi) its density. Phi = erfc(-x / sqrt 2) / 2, not
    # (1 + erf(x / sqrt 2)) / 2, which cancels to 0 in the left tail (x < -5.5 in float32).
    cdf = 0.5 * jax.lax.erfc(-x / math.sqrt(2))
    return cdf + x * jnp.exp(-0.5 * x * x) * (_SQRT_2_OVER_PI / 2)


def gelu(approximate: bool = True) -> Layer:
    """The Gaussian error linear unit ``x Phi(x)``, ``Phi`` the standard normal CDF
    (``jax.nn.gelu``; Hendrycks and Gimpel 2016). ``approximate=True`` (the default, as
    ``jax.nn.gelu`` and Flax) uses ``Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    / 2``; ``False`` the exact ``erf`` form (PyTorch's default)."""
    if not isinstance(approximate, (bool, np.bool_)):
        raise TypeError(f"gelu: approximate must be True (the tanh form, jax.nn.gelu's "
                        f"default) or False (erf); got {approximate!r}")
    approximate = bool(approximate)
    slope = _gelu_tanh_slope if approximate else _gelu_exact_slope
    return elementwise("gelu", lambda x: jax.nn.gelu(x, approximate=approximate),
                       lambda x, y, dy: dy * slope(x), approximate=approximate)


def silu() -> Layer:
    """``x s(x)``, ``s`` the sigmoid: SiLU, also called swish (``jax.nn.silu``)."""
    # dy/dx = s + x s (1 - s) = s + y (1 - s).
    def slope(x, y):
        s = jax.nn.sigmoid(x)
        return s + y * (1 - s)
    return elementwise("silu", jax.nn.silu, lambda x, y, dy: dy * slope(x, y))


def softplus() -> Layer:
    """``log(1 + e^x)``, a smooth ReLU (``jax.nn.softplus``)."""
    # d log(1 + e^x)/dx = e^x / (1 + e^x) = s(x), the sigmoid.
    return elementwise("softplus", jax.nn.softplus,
                       lambda x, y, dy: dy * jax.nn.sigmoid(x))


def sigmoid() -> Layer:
    """``s(x) = 1 / (1 + exp(-x))``, elementwise."""
    # ds/dx = e^-x / (1 + e^-x)^2 = s (1 - s): written with the output s = y.
    # Saturated where s (1 - s) < 5 % of its maximum 1/4.
    return elementwise("sigmoid", jax.nn.sigmoid, lambda x, y, dy: dy * y * (1 - y),
                       stats=lambda x, y: {"saturation": _saturation(4 * y * (1 - y))})


def tanh() -> Layer:
    """``tanh(x)``, elementwise."""
    # d tanh(x)/dx = 1 - tanh(x)^2 = 1 - y^2.
    # Saturated where 1 - y^2 < 5 % of its maximum 1.
    return elementwise("tanh", jnp.tanh, lambda x, y, dy: dy * (1 - y * y),
                       stats=lambda x, y: {"saturation": _saturation(1 - y * y)})


def identity() -> Layer:
    """The linear activation ``f(x) = x`` (NNFS's ``Activation_Linear``)."""
    # y = x: the gradient passes through unchanged.
    return elementwise("identity", lambda x: x, lambda x, y, dy: dy)


def softmax_fn(x: Array) -> Array:
    """``exp(x_i) / sum_j exp(x_j)`` over the last axis, with the row max subtracted
    first: the same value, and ``exp`` never overflows."""
    e = jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True)))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def softmax() -> Layer:
    """``exp(x_i) / sum_j exp(x_j)`` over the last axis: scores to probabilities."""
    # y_i = e^x_i / sum_k e^x_k has Jacobian dy_i/dx_j = y_i (delta_ij - y_j), so
    #   dx_j = sum_i dy_i y_i (delta_ij - y_j) = y_j (dy_j - sum_i dy_i y_i),
    # the Jacobian-vector product without the (C, C) Jacobian that NNFS builds with
    # np.diagflat per sample.
    return elementwise("softmax", softmax_fn,
                       lambda x, y, dy: y * (dy - jnp.sum(dy * y, axis=-1, keepdims=True)))
