"""The dense (fully connected) layer ``y = x @ W + b``, its initializers and its rule.

Layout is batch-first with ``W`` of shape ``(in, out)``, as in stax and the NNFS book.
(Nielsen and Equinox store ``W`` as ``(out, in)`` and write ``W x + b``; it is the same
map, transposed.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.nn.layer import Layer, check_batch

Array = jax.Array

__all__ = ["Dense", "dense", "initializers", "resolve_init", "check_bias_init", "make_bias", "fans"]


@dataclasses.dataclass(frozen=True)
class Dense:
    """Weights and biases of one dense layer: ``y = x @ w + b``.

    ``w`` has shape ``(in, out)``, ``b`` shape ``(out,)``.
    """

    w: Array
    b: Array


jax.tree_util.register_dataclass(Dense, data_fields=["w", "b"], meta_fields=[])


# Initializers: (key, shape, dtype) -> weights, for a dense (n_in, n_out) or a conv
# (kh, kw, C_in, C_out) kernel. Fans count every input (output) an output (input) unit
# touches: n_in and n_out, or kh * kw * C_in and kh * kw * C_out.

def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight array (``(in, out)`` or ``(kh, kw, in, out)``)."""
    taps = math.prod(shape[:-2])
    return taps * shape[-2], taps * shape[-1]


def _nnfs(key, shape, dtype):
    """NNFS book: ``0.01 * N(0, 1)``."""
    return 0.01 * jax.random.normal(key, shape, dtype)


def _nielsen_large(key, shape, dtype):
    """Nielsen's ``network.py``: ``N(0, 1)``."""
    return jax.random.normal(key, shape, dtype)


def _nielsen(key, shape, dtype):
    """Nielsen's ``network2.py``: ``N(0, 1/n_in)``."""
    return jax.random.normal(key, shape, dtype) / math.sqrt(fans(shape)[0])


def _glorot(key, shape, dtype):
    """Glorot/Xavier uniform: ``U(-a, a)``, ``a = sqrt(6 / (n_in + n_out))``."""
    a = math.sqrt(6.0 / sum(fans(shape)))
    return jax.random.uniform(key, shape, dtype, -a, a)


def _he(key, shape, dtype):
    """He/Kaiming normal for ReLU nets: ``N(0, 2/n_in)``."""
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fans(shape)[0])


initializers: dict[str, Callable] = {
    "nnfs": _nnfs, "nielsen_large": _nielsen_large, "nielsen": _nielsen,
    "glorot": _glorot, "he": _he,
}


def resolve_init(init: str | Callable, where: str) -> Callable:
    """The weight initializer named by ``init`` (or ``init`` itself, a function)."""
    if isinstance(init, str):
        if init not in initializers:
            raise ValueError(f"{where}: unknown init {init!r}; choose one of "
                             f"{sorted(initializers)} or pass a function")
        return initializers[init]
    if not callable(init):
        raise TypeError(f"{where}: init must be one of {sorted(initializers)} or a function "
                        f"(key, shape, dtype) -> weights; got {init!r}")
    return init


def check_bias_init(bias_init: float | str | Callable, where: str) -> None:
    """``bias_init`` must be a number, ``"normal"`` or a function."""
    if callable(bias_init) or bias_init == "normal":
        return
    if isinstance(bias_init, (bool, str)) or not isinstance(bias_init, (int, float, np.number)) \
            or not np.isfinite(bias_init):
        raise TypeError(f"{where}: bias_init must be a finite number, 'normal' or a function "
                        f"(key, shape, dtype) -> biases; got {bias_init!r}")


def make_bias(bias_init: float | str | Callable, key: jax.Array, n: int, dtype) -> jax.Array:
    """``n`` biases from ``bias_init``: a constant, ``"normal"`` (N(0, 1)) or a function."""
    if callable(bias_init):
        return jnp.asarray(bias_init(key, (n,), dtype), dtype)
    if bias_init == "normal":
        return jax.random.normal(key, (n,), dtype)
    return jnp.full((n,), bias_init, dtype)


def dense(features: int, *, init: str | Callable = "glorot",
          bias_init: float | str | Callable = 0.0) -> Layer:
    """A fully connected layer, ``y = x @ w + b``.

    Args:
      features: number of outputs (neurons).
      init: weight initializer: ``"nnfs"`` (``0.01 * N(0,1)``), ``"nielsen_large"``
        (``N(0,1)``), ``"nielsen"`` (``N(0, 1/n_in)``), ``"glorot"`` (default),
        ``"he"``, or a function ``(key, (n_in, n_out), dtype) -> w``.
      bias_init: a constant (default 0), ``"normal"`` (``N(0,1)``, as Nielsen), or a
        function ``(key, (n_out,), dtype) -> b``.
    """
    if isinstance(features, bool) or not isinstance(features, (int, np.integer)) \
            or features <= 0:
        raise ValueError(f"dense: features must be a positive int; got {features!r}")
    features = int(features)
    w_init = resolve_init(init, "dense")
    check_bias_init(bias_init, "dense")

    def init_fn(key, in_shape, dtype):
        if len(in_shape) != 1:
            raise ValueError(
                f"dense: expected a 1-D example shape (features,); got {in_shape}. "
                "Put nn.flatten() before dense for images.")
        kw, kb = jax.random.split(key)
        w = jnp.asarray(w_init(kw, (in_shape[0], features), dtype), dtype)
        return (features,), Dense(w, make_bias(bias_init, kb, features, dtype))

    def apply_fn(params, x, key, train):
        check_batch("dense", x, 1)
        if x.shape[-1] != params.w.shape[0]:
            raise ValueError(
                f"dense: expected inputs with {params.w.shape[0]} features (last axis); "
                f"got shape {tuple(x.shape)}")
        return x @ params.w + params.b[None, :]

    # y_nj = sum_i x_ni W_ij + b_j, so
    #   dL/dW_ij = sum_n x_ni dy_nj   -> dW = x^T dy
    #   dL/db_j  = sum_n dy_nj        -> db = column sums of dy
    #   dL/dx_ni = sum_j dy_nj W_ij   -> dx = dy W^T
    def backward_fn(params, tape, dy, key, train):
        x, _ = tape
        return Dense(w=x.T @ dy, b=jnp.sum(dy, axis=0)), dy @ params.w.T

    return Layer("dense", init_fn, apply_fn, backward_fn,
                 config={"features": features, "init": init, "bias_init": bias_init})
