"""Layers as pure ``(init, apply)`` pairs, and ``serial`` to compose them.

A layer is a description, not a container: it holds no weights. ``init`` makes the
weights, ``apply`` uses them::

    model = nn.serial(nn.dense(64), nn.relu(), nn.dense(3))
    params = model.init(jax.random.key(0), (2,))   # one example's shape, no batch axis
    logits = model.apply(params, x)                # x is batch-first: (N, 2)
    y = model.apply(params, x, key=k, train=True)  # the same signature for every layer

Layout is batch-first and ``y = x @ W + b`` with ``W`` of shape ``(in, out)``, as in
stax and the NNFS book. (Nielsen and Equinox store ``W`` as ``(out, in)`` and write
``W x + b``; it is the same map, transposed.)

Parameters are immutable pytrees: :class:`Dense` is a frozen dataclass, layers without
weights hold :class:`NoParams`, and ``serial`` holds a tuple of its children's
parameters. Assigning to a field raises ``dataclasses.FrozenInstanceError``; new
parameters come from ``jax.tree.map`` or ``dataclasses.replace``.

Every layer here has a hand-derived backward rule in :mod:`funcnn.backprop`, keyed by
``Layer.kind``; ``LAYERS`` lists the public constructors so a test can check that
none is missing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn._checks import concrete

Array = jax.Array
Shape = tuple[int, ...]

__all__ = [
    "Layer", "Dense", "NoParams", "serial", "dense", "relu", "leaky_relu", "sigmoid",
    "tanh", "softmax", "identity", "dropout", "flatten", "summary", "initializers",
    "dropout_mask", "LAYERS",
]


# --------------------------------------------------------------------------------------
# Parameter pytrees
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Dense:
    """Weights and biases of one dense layer: ``y = x @ w + b``.

    ``w`` has shape ``(in, out)``, ``b`` shape ``(out,)``.
    """

    w: Array
    b: Array


@dataclasses.dataclass(frozen=True)
class NoParams:
    """The (empty) parameters of a layer without weights, such as ``relu``."""


jax.tree_util.register_dataclass(Dense, data_fields=["w", "b"], meta_fields=[])
jax.tree_util.register_dataclass(NoParams, data_fields=[], meta_fields=[])


# --------------------------------------------------------------------------------------
# The layer type
# --------------------------------------------------------------------------------------

InitFn = Callable[[Array, Shape, Any], tuple[Shape, Any]]
ApplyFn = Callable[..., Array]


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """A layer: a name, a pure ``init`` and a pure ``apply``.

    Attributes:
      kind: the layer's name (``"dense"``, ``"relu"``, ...). :mod:`funcnn.backprop`
        finds the layer's backward rule by it.
      init_fn: ``(key, input_shape, dtype) -> (output_shape, params)``; shapes exclude
        the batch axis.
      apply_fn: ``(params, x, key, train) -> y``; ``x`` is batch-first.
      config: the layer's fixed settings (e.g. ``{"rate": 0.1}``), for ``repr``,
        ``summary`` and the backward rules.
      children: the sub-layers of a combinator such as ``serial``.

    Layers compare and hash by identity, so they can be static arguments of ``jit``.
    """

    kind: str
    init_fn: InitFn
    apply_fn: ApplyFn
    config: dict = dataclasses.field(default_factory=dict)
    children: tuple[Layer, ...] = ()

    def init(self, key: Array, input_shape: Sequence[int], dtype: Any = jnp.float32) -> Any:
        """Creates this layer's parameters for inputs of ``input_shape`` (no batch axis)."""
        return self.init_with_shape(key, input_shape, dtype)[1]

    def init_with_shape(self, key: Array, input_shape: Sequence[int],
                        dtype: Any = jnp.float32) -> tuple[Shape, Any]:
        """Like :meth:`init`, also returning the output shape (no batch axis)."""
        input_shape = _as_shape(input_shape, self.kind)
        return self.init_fn(key, input_shape, jnp.dtype(dtype))

    def output_shape(self, input_shape: Sequence[int]) -> Shape:
        """The output shape for one example of ``input_shape``, computed without FLOPs."""
        shapes = []

        def init_only(k):
            shape, params = self.init_with_shape(k, input_shape)
            shapes.append(shape)
            return params

        jax.eval_shape(init_only, jax.random.key(0))
        return shapes[0]

    def apply(self, params: Any, x: Array, *, key: Array | None = None,
              train: bool = False) -> Array:
        """Runs the layer on a batch ``x``; ``key`` feeds dropout when ``train`` is true."""
        return self.apply_fn(params, x, key, train)

    def __call__(self, params: Any, x: Array, *, key: Array | None = None,
                 train: bool = False) -> Array:
        return self.apply(params, x, key=key, train=train)

    def __repr__(self) -> str:
        if self.children:
            inner = ", ".join(repr(c) for c in self.children)
            return f"{self.kind}({inner})"
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items()
                         if not callable(v))
        return f"{self.kind}({args})"


def _as_shape(shape: Any, kind: str) -> Shape:
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"{kind}.init: input_shape must be a tuple of ints for ONE "
                        f"example (no batch axis), e.g. (2,) or (28, 28); got {shape!r}"
                        ) from None
    if any(d <= 0 for d in shape):
        raise ValueError(f"{kind}.init: input_shape must have positive sizes; got {shape}")
    return shape


def _check_batch(kind: str, x: Array, example_ndim: int | None) -> None:
    """Checks that ``x`` is a batch-first array with one batch axis."""
    if not hasattr(x, "shape"):
        raise TypeError(f"{kind}: expected an array, got {type(x).__name__}")
    if example_ndim is not None and x.ndim != example_ndim + 1:
        raise ValueError(
            f"{kind}: expected a batch-first input of rank {example_ndim + 1} (batch axis "
            f"first, then {example_ndim} feature axes); got shape {tuple(x.shape)}. "
            "Add a batch axis with x[None] for one example.")


# --------------------------------------------------------------------------------------
# Initializers: (key, (n_in, n_out), dtype) -> weights
# --------------------------------------------------------------------------------------

def _nnfs(key, shape, dtype):
    """NNFS book: ``0.01 * N(0, 1)``."""
    return 0.01 * jax.random.normal(key, shape, dtype)


def _nielsen_large(key, shape, dtype):
    """Nielsen's ``network.py``: ``N(0, 1)``."""
    return jax.random.normal(key, shape, dtype)


def _nielsen(key, shape, dtype):
    """Nielsen's ``network2.py``: ``N(0, 1/n_in)``."""
    return jax.random.normal(key, shape, dtype) / math.sqrt(shape[0])


def _glorot(key, shape, dtype):
    """Glorot/Xavier uniform: ``U(-a, a)``, ``a = sqrt(6 / (n_in + n_out))``."""
    a = math.sqrt(6.0 / (shape[0] + shape[1]))
    return jax.random.uniform(key, shape, dtype, -a, a)


def _he(key, shape, dtype):
    """He/Kaiming normal for ReLU nets: ``N(0, 2/n_in)``."""
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / shape[0])


initializers: dict[str, Callable] = {
    "nnfs": _nnfs, "nielsen_large": _nielsen_large, "nielsen": _nielsen,
    "glorot": _glorot, "he": _he,
}


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------

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
    if not isinstance(features, (int, np.integer)) or features <= 0:
        raise ValueError(f"dense: features must be a positive int; got {features!r}")
    features = int(features)
    if isinstance(init, str):
        if init not in initializers:
            raise ValueError(f"dense: unknown init {init!r}; choose one of "
                             f"{sorted(initializers)} or pass a function")
        w_init = initializers[init]
    else:
        w_init = init

    def init_fn(key, in_shape, dtype):
        if len(in_shape) != 1:
            raise ValueError(
                f"dense: expected a 1-D example shape (features,); got {in_shape}. "
                "Put nn.flatten() before dense for images.")
        kw, kb = jax.random.split(key)
        w = jnp.asarray(w_init(kw, (in_shape[0], features), dtype), dtype)
        if callable(bias_init):
            b = jnp.asarray(bias_init(kb, (features,), dtype), dtype)
        elif bias_init == "normal":
            b = jax.random.normal(kb, (features,), dtype)
        else:
            b = jnp.full((features,), bias_init, dtype)
        return (features,), Dense(w, b)

    def apply_fn(params, x, key, train):
        _check_batch("dense", x, 1)
        if x.shape[-1] != params.w.shape[0]:
            raise ValueError(
                f"dense: expected inputs with {params.w.shape[0]} features (last axis); "
                f"got shape {tuple(x.shape)}")
        return x @ params.w + params.b[None, :]

    return Layer("dense", init_fn, apply_fn,
                 {"features": features, "init": init, "bias_init": bias_init})


def _elementwise(kind: str, fn: Callable[[Array], Array], **config) -> Layer:
    def init_fn(key, in_shape, dtype):
        return in_shape, NoParams()

    def apply_fn(params, x, key, train):
        _check_batch(kind, x, None)
        return fn(x)

    return Layer(kind, init_fn, apply_fn, config)


def relu() -> Layer:
    """``max(0, x)``, elementwise."""
    # where(x > 0, x, 0) rather than maximum(x, 0): autodiff then takes slope 0 at
    # x = 0, as the hand rule and NNFS do (maximum would split the tie as 0.5).
    return _elementwise("relu", lambda x: jnp.where(x > 0, x, 0))


def leaky_relu(negative_slope: float = 0.01) -> Layer:
    """``x`` for ``x > 0`` and ``negative_slope * x`` otherwise."""
    a = negative_slope
    return _elementwise("leaky_relu", lambda x: jnp.where(x > 0, x, a * x),
                        negative_slope=negative_slope)


def sigmoid() -> Layer:
    """``1 / (1 + exp(-x))``, elementwise."""
    return _elementwise("sigmoid", jax.nn.sigmoid)


def tanh() -> Layer:
    """``tanh(x)``, elementwise."""
    return _elementwise("tanh", jnp.tanh)


def identity() -> Layer:
    """The linear activation ``f(x) = x`` (NNFS's ``Activation_Linear``)."""
    return _elementwise("identity", lambda x: x)


def _softmax(x: Array) -> Array:
    # Subtracting the row max changes nothing mathematically and keeps exp() finite.
    e = jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True)))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def softmax() -> Layer:
    """``exp(x_i) / sum_j exp(x_j)`` over the last axis: scores to probabilities."""
    return _elementwise("softmax", _softmax)


def flatten() -> Layer:
    """Flattens each example to a vector: ``(N, d1, d2, ...) -> (N, d1*d2*...)``."""

    def init_fn(key, in_shape, dtype):
        return (math.prod(in_shape),), NoParams()

    def apply_fn(params, x, key, train):
        _check_batch("flatten", x, None)
        if x.ndim < 2:
            raise ValueError(f"flatten: expected a batch-first input (N, ...); got shape "
                             f"{tuple(x.shape)}")
        return x.reshape(x.shape[0], -1)

    return Layer("flatten", init_fn, apply_fn)


def dropout_mask(key: Array, rate: float | Array, shape: Sequence[int]) -> Array:
    """The keep-mask of inverted dropout: ``1/(1-rate)`` where kept, 0 where dropped.

    Shared by :func:`dropout` and its backward rule so both draw the same mask.
    """
    keep = jax.random.bernoulli(key, 1.0 - rate, tuple(shape))
    return keep / (1.0 - rate)


def dropout(rate: float | Array) -> Layer:
    """Inverted dropout: zero each input with probability ``rate``, scale the rest.

    In training, ``y = x * mask / (1 - rate)`` with ``mask ~ Bernoulli(1 - rate)``, so
    the expected output equals ``x`` and nothing changes at test time (``train=False``
    is the identity). ``rate`` is the probability of *dropping* (as PyTorch, Flax and
    NNFS; stax's ``Dropout(rate)`` keeps with probability ``rate``). ``rate`` may be a
    traced array, e.g. inside a ``vmap`` over dropout rates.
    """
    r = concrete(rate)
    if r is not None:
        if r.shape != () or not (0.0 <= float(r) < 1.0):
            raise ValueError(f"dropout: rate is the probability of dropping and must be "
                             f"in [0, 1); got {rate!r}")

    def init_fn(key, in_shape, dtype):
        return in_shape, NoParams()

    def apply_fn(params, x, key, train):
        _check_batch("dropout", x, None)
        if not train:
            return x
        if key is None:
            raise ValueError("dropout: train=True needs a PRNG key: "
                             "model.apply(params, x, key=jax.random.key(...), train=True)")
        return x * dropout_mask(key, rate, x.shape).astype(x.dtype)

    return Layer("dropout", init_fn, apply_fn, {"rate": rate})


# --------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------

def layer_keys(key: Array | None, n: int) -> list[Array | None]:
    """Splits ``key`` into one key per sub-layer (``None`` stays ``None``)."""
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


def serial(*layers: Layer) -> Layer:
    """Composes layers in order: ``serial(f, g, h)(x) = h(g(f(x)))``.

    Its parameters are the tuple of its layers' parameters; a ``key`` is split into
    one key per layer.
    """
    if not layers:
        raise ValueError("serial: needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {i} is {layer!r}, not a layer; did you "
                            "write nn.relu instead of nn.relu()?")

    def init_fn(key, in_shape, dtype):
        params = []
        for layer, k in zip(layers, jax.random.split(key, len(layers))):
            in_shape, p = layer.init_fn(k, in_shape, dtype)
            params.append(p)
        return in_shape, tuple(params)

    def apply_fn(params, x, key, train):
        if not isinstance(params, tuple) or len(params) != len(layers):
            raise ValueError(f"serial: expected a tuple of {len(layers)} parameter sets, "
                             f"one per layer; got {type(params).__name__}"
                             + (f" of length {len(params)}" if isinstance(params, tuple)
                                else ""))
        for layer, p, k in zip(layers, params, layer_keys(key, len(layers))):
            x = layer.apply_fn(p, x, k, train)
        return x

    return Layer("serial", init_fn, apply_fn, children=tuple(layers))


# Every public layer constructor, with arguments for a small instance. The registry test
# in tests/test_backprop.py checks each has a backward rule and a gradient test.
LAYERS: dict[str, Callable[[], Layer]] = {
    "dense": lambda: dense(3),
    "relu": relu,
    "leaky_relu": lambda: leaky_relu(0.1),
    "sigmoid": sigmoid,
    "tanh": tanh,
    "softmax": softmax,
    "identity": identity,
    "dropout": lambda: dropout(0.3),
    "flatten": flatten,
    "serial": lambda: serial(dense(3), relu()),
}


# --------------------------------------------------------------------------------------
# Parameter summary
# --------------------------------------------------------------------------------------

def summary(params: Any) -> str:
    """A table of every parameter: path, shape, dtype and count, with the total.

    Like ``flax.nnx.tabulate``, for any pytree of arrays::

        path      shape      dtype    count
        [0].w     (2, 64)    float32    128
        ...
        total                           387
    """
    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        shape = tuple(getattr(leaf, "shape", ()))
        rows.append((jax.tree_util.keystr(path), str(shape),
                     str(getattr(leaf, "dtype", type(leaf).__name__)),
                     math.prod(shape)))
    total = sum(r[3] for r in rows)
    head = ("path", "shape", "dtype", "count")
    widths = [max([len(head[i])] + [len(str(r[i])) for r in rows]) for i in range(4)]
    widths[3] = max(widths[3], len(str(total)))

    def line(cells):
        return (f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  "
                f"{cells[2]:<{widths[2]}}  {cells[3]:>{widths[3]}}")

    out = [line(head)] + [line(r) for r in rows]
    out.append(line(("total", "", "", f"{total}")))
    return "\n".join(out)
