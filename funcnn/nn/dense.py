"""The dense (fully connected) layer ``y = x @ W + b``, its initializers and its rule.

Layout is batch-first with ``W`` of shape ``(in, out)``, as in stax and the NNFS book.
(Nielsen and Equinox store ``W`` as ``(out, in)`` and write ``W x + b``; it is the same
map, transposed.)
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import parallel
from funcnn.nn.layer import Layer, check_batch, explain_params_call, other_keywords

Array = jax.Array

__all__ = ["Dense", "dense", "initializers", "bias_initializers", "resolve_init",
           "check_bias_init", "make_bias", "fans"]


@dataclasses.dataclass(frozen=True)
class Dense:
    """Weights and biases of one dense layer: ``y = x @ w + b``.

    ``w`` has shape ``(in, out)``, ``b`` shape ``(out,)``.
    """

    w: Array
    b: Array


jax.tree_util.register_dataclass(Dense, data_fields=["w", "b"], meta_fields=[])
explain_params_call(Dense, "nn.dense({})")   # nn.Dense(64), as in Flax and stax: a hint


# Initializers: (key, shape, dtype) -> weights, for a dense (n_in, n_out) or a conv
# (kh, kw, C_in, C_out) kernel. Fans count every input (output) an output (input) unit
# touches: n_in and n_out, or kh * kw * C_in and kh * kw * C_out.

def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight array (``(in, out)`` or ``(kh, kw, in, out)``)."""
    taps = math.prod(shape[:-2])
    return taps * shape[-2], taps * shape[-1]


def _nnfs(key, shape, dtype):
    """NNFS book: ``0.01 * N(0, 1)``, its ``Layer_Dense``'s ``0.01 * np.random.randn``."""
    return 0.01 * jax.random.normal(key, shape, dtype)


def _nnfs_0_1(key, shape, dtype):
    """``0.1 * N(0, 1)``: the ``0.10 * np.random.randn`` of the NNFS video series'
    ``Layer_Dense`` (``nnfs_video_tutorial_code``, parts 4 and 5), ten times the book's
    ``"nnfs"``, for code written at that scale."""
    return 0.1 * jax.random.normal(key, shape, dtype)


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


# The standard deviation of N(0, 1) truncated to [-2, 2]; dividing by it restores the
# variance that the truncation removes.
_TRUNCATED_STD = 0.87962566103423978


def _glorot_normal(key, shape, dtype):
    """Glorot/Xavier normal with variance ``2 / (n_in + n_out)``, drawn as
    ``jax.nn.initializers.glorot_normal`` (stax's ``Dense`` default) draws it: N(0, 1)
    truncated to [-2, 2], times ``sqrt(2 / (n_in + n_out)) / 0.8796`` (the truncated
    normal's standard deviation). PyTorch's ``xavier_normal_`` does not truncate."""
    std = math.sqrt(2.0 / sum(fans(shape))) / _TRUNCATED_STD
    return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * std


def _lecun_normal(key, shape, dtype):
    """LeCun normal with variance ``1 / n_in`` (Flax's ``nn.Dense`` and ``nn.Conv``
    default, and Haiku's), drawn as ``jax.nn.initializers.lecun_normal``: N(0, 1)
    truncated to [-2, 2], times ``sqrt(1 / n_in) / 0.8796``."""
    std = math.sqrt(1.0 / fans(shape)[0]) / _TRUNCATED_STD
    return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * std


def _uniform_fan_in(key, shape, dtype):
    """PyTorch's ``nn.Linear`` / ``nn.Conv2d`` and Equinox's ``nn.Linear`` / ``nn.Conv``
    default: ``U(-1/sqrt(n_in), 1/sqrt(n_in))``, variance ``1 / (3 n_in)``. (PyTorch
    writes it as ``kaiming_uniform_(a=sqrt(5))``: bound ``sqrt(2 / (1 + 5)) *
    sqrt(3 / n_in) = 1 / sqrt(n_in)``.) Pair it with ``bias_init="uniform_fan_in"``."""
    a = 1.0 / math.sqrt(fans(shape)[0])
    return jax.random.uniform(key, shape, dtype, -a, a)


def _he(key, shape, dtype):
    """He/Kaiming normal for ReLU nets: ``N(0, 2/n_in)``."""
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fans(shape)[0])


initializers: dict[str, Callable] = {
    "nnfs": _nnfs, "nnfs_0.1": _nnfs_0_1, "nielsen_large": _nielsen_large,
    "nielsen": _nielsen, "glorot": _glorot, "glorot_normal": _glorot_normal, "he": _he,
    "lecun_normal": _lecun_normal, "uniform_fan_in": _uniform_fan_in,
}


# Bias initializers by name: (key, shape, dtype, fan_in) -> biases. They see the
# layer's fan-in (n_in, or kh * kw * C_in for a convolution), which PyTorch's and
# Equinox's default bias needs.

def _bias_normal(key, shape, dtype, fan_in):
    """``N(0, 1)``, as Nielsen's networks draw their biases."""
    return jax.random.normal(key, shape, dtype)


def _bias_uniform_fan_in(key, shape, dtype, fan_in):
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: PyTorch's ``nn.Linear`` / ``nn.Conv2d`` and
    Equinox's ``nn.Linear`` / ``nn.Conv`` bias."""
    a = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -a, a)


bias_initializers: dict[str, Callable] = {
    "normal": _bias_normal, "uniform_fan_in": _bias_uniform_fan_in,
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
    """``bias_init`` must be a number, a name in :data:`bias_initializers` or a function."""
    if callable(bias_init) or (isinstance(bias_init, str) and bias_init in bias_initializers):
        return
    if isinstance(bias_init, bool) or not isinstance(bias_init, (int, float, np.number)) \
            or not np.isfinite(bias_init):
        raise TypeError(f"{where}: bias_init must be a finite number, one of "
                        f"{sorted(bias_initializers)} or a function (key, shape, dtype) -> "
                        f"biases; got {bias_init!r}")


def _takes_fan_in(fn: Callable) -> bool:
    try:
        return "fan_in" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def make_bias(bias_init: float | str | Callable, key: jax.Array, n: int, dtype,
              fan_in: int | None = None) -> jax.Array:
    """``n`` biases from ``bias_init``: a constant, a name in :data:`bias_initializers`
    (``"normal"``: N(0, 1); ``"uniform_fan_in"``: U(+-1/sqrt(fan_in))) or a function
    ``(key, (n,), dtype) -> b``, which gets ``fan_in=`` too when it has a parameter of
    that name. ``fan_in`` is the layer's (``n_in``, or ``kh * kw * C_in``)."""
    if callable(bias_init):
        extra = {"fan_in": fan_in} if _takes_fan_in(bias_init) else {}
        return jnp.asarray(bias_init(key, (n,), dtype, **extra), dtype)
    if isinstance(bias_init, str):
        if fan_in is None and bias_init == "uniform_fan_in":
            raise ValueError("make_bias: bias_init='uniform_fan_in' needs the layer's fan_in")
        return jnp.asarray(bias_initializers[bias_init](key, (n,), dtype, fan_in), dtype)
    return jnp.full((n,), bias_init, dtype)


@other_keywords
def dense(features: int, *, init: str | Callable = "glorot",
          bias_init: float | str | Callable = 0.0) -> Layer:
    """A fully connected layer, ``y = x @ w + b``.

    Args:
      features: number of outputs (neurons).
      init: weight initializer (:data:`initializers`): ``"glorot"`` (default; uniform,
        variance ``2 / (n_in + n_out)``), ``"glorot_normal"`` (the same variance,
        truncated normal, as stax), ``"lecun_normal"`` (variance ``1/n_in``, truncated
        normal: Flax's and Haiku's default), ``"he"`` (``N(0, 2/n_in)``), ``"uniform_fan_in"``
        (``U(+-1/sqrt(n_in))``: PyTorch's ``nn.Linear``, Equinox's ``eqx.nn.Linear``),
        ``"nnfs"`` (``0.01 * N(0,1)``), ``"nnfs_0.1"`` (``0.1 * N(0,1)``),
        ``"nielsen"`` (``N(0, 1/n_in)``), ``"nielsen_large"`` (``N(0,1)``), or a
        function ``(key, (n_in, n_out), dtype) -> w``.
      bias_init: a constant (default 0), ``"normal"`` (``N(0,1)``, as Nielsen),
        ``"uniform_fan_in"`` (``U(+-1/sqrt(n_in))``, PyTorch's and Equinox's bias), or a
        function ``(key, (n_out,), dtype) -> b`` (given ``fan_in=n_in`` too if it has a
        parameter of that name).

    ``init="uniform_fan_in", bias_init="uniform_fan_in"`` draws as PyTorch and Equinox
    do (from other random streams); their ``W`` is ``(out, in)``, funcnn's ``(in, out)``.
    """
    if isinstance(features, bool) or not isinstance(features, (int, np.integer)) \
            or features <= 0:
        raise ValueError(f"dense: features must be a positive int; got {features!r}")
    features = int(features)
    w_init = resolve_init(init, "dense")
    check_bias_init(bias_init, "dense")

    def init_fn(key, in_shape, dtype):
        if len(in_shape) != 1:
            batch = ""
            # (N, F) with N != F looks like a whole data set's shape; (28, 28) an image.
            if len(in_shape) == 2 and in_shape[0] != in_shape[1]:
                lead = "the leading 1" if in_shape[0] == 1 else f"{in_shape[0]}"
                batch = (f" (If {lead} is a batch axis, drop it: input_shape is one "
                         f"example's shape, {tuple(in_shape[1:])}.)")
            raise ValueError(
                f"dense: expected a 1-D example shape (features,); got {in_shape}. "
                f"Put nn.flatten() before dense for images.{batch}")
        kw, kb = jax.random.split(key)
        w = jnp.asarray(w_init(kw, (in_shape[0], features), dtype), dtype)
        return (features,), Dense(w, make_bias(bias_init, kb, features, dtype, in_shape[0]))

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
    # Data parallelism is the sum over n. With the batch split over devices
    # (fit(..., mesh=...)), each device sums over its own examples, x_d^T dy_d and
    # sum(dy_d, 0), and adding those partial sums across the devices (an all-reduce) IS
    # the gradient all-reduce of data-parallel training: nothing else synchronises the
    # replicas. On an Explicit mesh JAX will not guess where that sum should land
    # (ShardingTypeError: the contracting dimension is sharded), so the rule says it:
    # W's own sharding (replicated), which batch_matmul passes as out_sharding=. Without
    # a mesh batch_matmul is x.T @ dy itself. (The column sum needs no such word: a
    # reduction's result is unsharded. dx keeps the batch split: no communication.)
    def backward_fn(params, tape, dy, key, train):
        x, _ = tape
        dw = parallel.batch_matmul(x.T, dy, like=params.w)
        return Dense(w=dw, b=jnp.sum(dy, axis=0)), dy @ params.w.T

    return Layer("dense", init_fn, apply_fn, backward_fn,
                 config={"features": features, "init": init, "bias_init": bias_init})
