"""The layer type: one value carrying ``init``, ``apply`` and the hand backward rule.

A layer is a description, not a container: it holds no weights. ``init`` makes the
weights, ``apply`` uses them, and ``backward`` says how a gradient flows back through
them, derived by hand::

    dense(3) = Layer("dense",
        init_fn     = (key, input_shape, dtype) -> (output_shape, Dense(w, b)),
        apply_fn    = (params, x, key, train) -> x @ w + b,
        backward_fn = (params, tape, dy, key, train) -> (Dense(x.T @ dy, sum(dy, 0)), dy @ w.T),
    )

The tape is what the forward pass left for the backward pass. By default it is
``(x, y)``, the layer's input and output; a layer that wants to keep something else
(a normaliser's ``1/rms``, dropout's mask) gives ``forward_fn``, which returns
``(y, tape)``.

A combinator (``serial``, ``residual``, a user's block) has ``children``. Its rules get
one more argument, ``run``, through which they run their children's forward and
backward passes: ``run.forward(child, params, x, key, train) -> (y, tape)`` and
``run.backward(child, params, tape, dy, key, train) -> (dparams, dx)``. The children's
tapes become part of the combinator's tape, so no rule ever recomputes a forward pass.
``run`` also carries the engine's choice (strict hand rules, or ``jax.vjp`` for a child
without a rule), which a combinator passes on without knowing it.

A layer may also say what its forward pass looks like from inside (``stats_fn``): a
sigmoid how many of its units are saturated, a ReLU how many are dead. The gradient-flow
diagnostics of ``fit(..., diagnostics=...)`` (:mod:`funcnn.diagnostics`) read them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from funcnn._checks import keyword_hints, tree_mismatch

Array = jax.Array
Shape = tuple[int, ...]

__all__ = ["Layer", "NoParams", "InitFn", "ApplyFn", "ForwardFn", "BackwardFn", "StatsFn", "Run",
           "layer_keys", "check_batch", "check_params", "explain_params_call", "not_a_layer_hint"]


@dataclasses.dataclass(frozen=True)
class NoParams:
    """The (empty) parameters of a layer without weights, such as ``relu``."""


jax.tree_util.register_dataclass(NoParams, data_fields=[], meta_fields=[])


# Keywords of Flax, Equinox and PyTorch layers that funcnn spells otherwise: passing one
# to a layer constructor (decorated with other_keywords) names the spelling to use.
LAYER_SPELLINGS: dict[str, str] = {
    **{k: f"use {v}" for k, v in {
        "strides": "stride", "window_shape": "window", "kernel_init": "init",
        "weight_init": "init", "out_features": "features", "out_channels": "features",
        "dtype": "init's dtype argument: model.init(key, input_shape, dtype)",
        "param_dtype": "init's dtype argument: model.init(key, input_shape, dtype)",
    }.items()},
    "in_features": "leave it out: the input size comes from init's input_shape",
    "in_channels": "leave it out: the input size comes from init's input_shape",
    "use_bias": "leave it out: every dense and conv2d layer has biases (bias_init=0.0, "
                "the default, starts them at zero)",
}
other_keywords = keyword_hints("nn.", {**LAYER_SPELLINGS, "kernel_size": "use window"})


def _is_count(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def not_a_layer_hint(obj: Any) -> str:
    """What to say about ``obj`` found where a layer belongs (the usual slips)."""
    if isinstance(obj, tuple) and len(obj) == 2 and all(map(callable, obj)):
        return ("it looks like a stax layer, a pair (init_fun, apply_fun); funcnn's layers "
                "are nn.Layer values from its constructors (nn.dense(64), nn.relu(), ...)")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return (f"it is a layer's parameters; make the layer with the lowercase "
                f"constructor (nn.dense(64), nn.conv2d(...), not nn.{type(obj).__name__}(...))")
    return "did you write nn.relu instead of nn.relu()?"


def explain_params_call(cls: type, constructor: str) -> type:
    """Makes the parameters dataclass ``cls`` answer a call in another library's style
    with a hint, and returns ``cls``.

    In Flax and stax the capitalised name builds the layer: ``nn.Dense(64)``,
    ``nn.Conv(32, (3, 3))``, ``nn.LayerNorm()``. In funcnn it names the layer's
    *parameters* (``Dense(w, b)``) and the layer comes from a lowercase function
    (``nn.dense(64)``). Such a call (arguments missing, unknown keywords such as
    ``features=``, or a count followed by a kernel-size tuple) raises a TypeError that
    points to ``constructor`` (a format string; ``{}`` receives the count given).
    Parameters built as parameters (``Dense(w, b)``, ``Dense(w=5e-4, b=0.0)``, by
    ``jax.tree`` functions) are unaffected.
    """
    generated = cls.__init__
    fields = ", ".join(f.name for f in dataclasses.fields(cls))

    def hint(args: tuple) -> str:
        count = args[0] if args and _is_count(args[0]) else "..."
        return (f"nn.{cls.__name__}({fields}) holds a layer's parameters, not the layer: "
                f"funcnn makes layers with lowercase functions, here "
                f"{constructor.format(count)} (the layer Flax calls nn.{cls.__name__})")

    @functools.wraps(generated)
    def __init__(self, *args, **kwargs):
        if args and _is_count(args[0]) and any(isinstance(a, (tuple, list)) for a in args[1:]):
            raise TypeError(hint(args))
        try:
            generated(self, *args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{e}. {hint(args)}") from None

    cls.__init__ = __init__
    return cls


# --------------------------------------------------------------------------------------
# The signatures of a layer's functions (shown by help(nn.Layer) and help(nn.BackwardFn))
# --------------------------------------------------------------------------------------

class InitFn(Protocol):
    def __call__(self, key: Array, input_shape: Shape, dtype: Any) -> tuple[Shape, Any]:
        """Makes the parameters for inputs of ``input_shape`` (one example, no batch
        axis); returns ``(output_shape, params)``. ``params`` is a pytree of arrays
        (``NoParams()`` for none)."""


class ApplyFn(Protocol):
    def __call__(self, params: Any, x: Array, key: Array | None, train: bool) -> Array:
        """The forward computation on a batch-first ``x``. ``key`` is ``None`` unless a
        layer draws random numbers (dropout); ``train`` is a Python bool."""


class ForwardFn(Protocol):
    def __call__(self, params: Any, x: Array, key: Array | None, train: bool
                 ) -> tuple[Array, Any]:
        """Optional: returns ``(y, tape)``, with ``y`` equal to ``apply_fn``'s output and
        ``tape`` any pytree of arrays the backward rule needs. Without it the tape is
        ``(x, y)``. A combinator's takes a fifth argument, ``run``."""


class BackwardFn(Protocol):
    def __call__(self, params: Any, tape: Any, dy: Array, key: Array | None, train: bool
                 ) -> tuple[Any, Array]:
        """The hand rule: from ``dy = dL/dy`` (the output's shape) returns
        ``(dparams, dx)``: ``dL/dparams`` with exactly the structure, shapes and dtypes
        of ``params``, and ``dL/dx`` with the input's shape and dtype. ``key`` and
        ``train`` are those the forward pass got. A combinator's takes a sixth argument,
        ``run``."""


class StatsFn(Protocol):
    def __call__(self, tape: Any) -> dict[str, Array]:
        """Optional: scalar statistics of one forward pass, from the layer's tape (by
        default ``(x, y)``), e.g. ``{"saturation": fraction}``; names are those of
        :data:`funcnn.diagnostics.NAMES` that apply."""


class Run(Protocol):
    """What a combinator's rules call to run a child (given by the engine)."""

    def forward(self, layer: Layer, params: Any, x: Array, key: Array | None,
                train: bool) -> tuple[Array, Any]:
        """The child's output and its tape."""

    def backward(self, layer: Layer, params: Any, tape: Any, dy: Array,
                 key: Array | None, train: bool) -> tuple[Any, Array]:
        """The child's ``(dparams, dx)`` from its tape."""


# --------------------------------------------------------------------------------------
# The layer type
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """A layer: its name, ``init``, ``apply``, and its hand-derived backward rule.

    Attributes:
      name: for ``repr``, ``summary`` and error messages (nothing looks it up).
      init_fn: ``(key, input_shape, dtype) -> (output_shape, params)``; shapes exclude
        the batch axis (:class:`InitFn`).
      apply_fn: ``(params, x, key, train) -> y``; ``x`` is batch-first (:class:`ApplyFn`).
      backward_fn: the hand rule ``(params, tape, dy, key, train) -> (dparams, dx)``
        (:class:`BackwardFn`), or ``None``: then ``engine="backprop"`` refuses the layer
        and ``engine="mixed"`` differentiates ``apply_fn`` with ``jax.vjp`` (for a
        combinator: its whole subtree, children's rules included).
      forward_fn: optional ``(params, x, key, train) -> (y, tape)`` (:class:`ForwardFn`)
        when the rule wants a tape other than ``(x, y)``.
      config: the layer's fixed settings (e.g. ``{"rate": 0.1}``) for ``repr``.
      children: the sub-layers of a combinator; then ``forward_fn`` and ``backward_fn``
        take a last argument ``run`` (:class:`Run`) to run them.
      stats_fn: optional ``tape -> {name: scalar}`` (:class:`StatsFn`) for the
        diagnostics: the saturation of a sigmoid, the dead units of a ReLU.

    Layers compare and hash by identity, so they can be static arguments of ``jit``.
    ``dataclasses.replace(layer, backward_fn=...)`` makes a variant (a test's mutant).
    """

    name: str
    init_fn: InitFn
    apply_fn: ApplyFn
    backward_fn: BackwardFn | None = None
    forward_fn: ForwardFn | None = None
    config: dict = dataclasses.field(default_factory=dict)
    children: tuple[Layer, ...] = ()
    stats_fn: StatsFn | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Layer: name must be a non-empty string; got {self.name!r}")
        for field in ("init_fn", "apply_fn"):
            if not callable(getattr(self, field)):
                raise TypeError(f"Layer {self.name!r}: {field} must be a function; got "
                                f"{getattr(self, field)!r}")
        for field in ("backward_fn", "forward_fn", "stats_fn"):
            v = getattr(self, field)
            if v is not None and not callable(v):
                raise TypeError(f"Layer {self.name!r}: {field} must be a function or None; "
                                f"got {v!r}")
        object.__setattr__(self, "children", tuple(self.children))
        for i, c in enumerate(self.children):
            if not isinstance(c, Layer):
                raise TypeError(f"Layer {self.name!r}: child {i} is {c!r}, not a layer; "
                                f"{not_a_layer_hint(c)}")
        if self.children and self.backward_fn is not None and self.forward_fn is None:
            raise TypeError(f"Layer {self.name!r}: a combinator with a backward rule needs "
                            "a forward_fn that keeps its children's tapes (see nn.residual)")

    @property
    def has_rule(self) -> bool:
        """Whether this layer has a hand rule (its children may still lack one)."""
        return self.backward_fn is not None

    def init(self, key: Array, input_shape: Sequence[int], dtype: Any = jnp.float32) -> Any:
        """Creates this layer's parameters for inputs of ``input_shape`` (no batch axis)."""
        return self.init_with_shape(key, input_shape, dtype)[1]

    def init_with_shape(self, key: Array, input_shape: Sequence[int],
                        dtype: Any = jnp.float32) -> tuple[Shape, Any]:
        """Like :meth:`init`, also returning the output shape (no batch axis)."""
        input_shape = _as_shape(input_shape, self.name)
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
        """Runs the layer on a batch ``x``; ``key`` feeds dropout when ``train`` is true.

        ``params`` are first checked against what ``init`` makes for ``x``'s example
        shape (structure and shapes only, so it costs nothing under ``jit``): the
        parameters of another architecture raise instead of running.
        """
        if hasattr(x, "shape") and len(x.shape) >= 1:
            check_params(self, params, tuple(x.shape[1:]), f"{self.name}.apply",
                         batch=x.shape[0])
        return self.apply_fn(params, x, key, train)

    def __call__(self, params: Any, x: Array, *, key: Array | None = None,
                 train: bool = False) -> Array:
        return self.apply(params, x, key=key, train=train)

    def __repr__(self) -> str:
        if self.children:
            inner = ", ".join(repr(c) for c in self.children)
            return f"{self.name}({inner})"
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if not callable(v))
        return f"{self.name}({args})"


@functools.lru_cache(maxsize=256)
def _declared_params(layer: Layer, input_shape: Shape) -> Any:
    """The parameter shapes ``layer.init`` makes for ``input_shape`` (no FLOPs)."""
    return jax.eval_shape(lambda k: layer.init(k, input_shape), jax.random.key(0))


def check_params(layer: Layer, params: Any, input_shape: Sequence[int], where: str,
                 batch: int = 1) -> None:
    """Raises a ValueError when ``params`` are not what ``layer.init`` makes for inputs
    of ``input_shape`` (one example): another architecture, another input size, or a
    tree missing a layer. Names the first differing leaf. Only shapes are compared."""
    input_shape = tuple(int(d) for d in input_shape)
    try:
        problem = tree_mismatch(_declared_params(layer, input_shape), params)
        fits = True
    except (ValueError, TypeError) as e:  # the inputs themselves do not fit the model
        problem, fits = f"inputs of example shape {input_shape} do not fit the model: {e}", False
    if problem is None:
        return
    # When the forward pass itself rejects these inputs, its message (about the data,
    # e.g. "expected inputs with 2 features") is the one to show.
    x = jax.ShapeDtypeStruct((batch,) + input_shape, jnp.float32)
    try:
        jax.eval_shape(lambda p, xs: layer.apply_fn(p, xs, None, False), params, x)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None
    if not fits:
        raise ValueError(f"{where}: {problem}")
    raise ValueError(
        f"{where}: these params do not belong to this model for inputs of example shape "
        f"{input_shape}: {problem}. Were they made by another model (e.g. another "
        "number of features or classes)? Make them with model.init(key, input_shape), "
        "or load them with the template of this model.")


def _as_shape(shape: Any, name: str) -> Shape:
    # Habits from other libraries, named before the generic messages below: Flax's
    # init(key, x) takes a sample batch; stax's init_fun(key, (-1, 784)) and Keras'
    # (None, 784) put a batch axis first. funcnn's init takes one example's shape.
    if hasattr(shape, "shape") and hasattr(shape, "dtype") and (
            len(shape.shape) >= 2 or not jnp.issubdtype(shape.dtype, jnp.integer)):
        raise TypeError(
            f"{name}.init: input_shape is the shape of one example, not an array of data "
            f"(Flax's init takes a sample input); got an array of shape {tuple(shape.shape)}"
            f". Pass x.shape[1:] = {tuple(int(d) for d in shape.shape[1:])}.")
    try:
        dims = tuple(shape)
    except TypeError:
        dims = ()
    if len(dims) >= 2 and (dims[0] is None or (_is_count(dims[0]) and dims[0] == -1)):
        raise ValueError(
            f"{name}.init: input_shape {dims!r} has a batch axis ({dims[0]!r}, as stax and "
            f"Keras write it); funcnn's init takes ONE example's shape, so drop the batch "
            f"axis: pass {dims[1:]!r}.")
    try:
        if any(isinstance(d, bool) or not float(d).is_integer() for d in shape):
            raise TypeError
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{name}.init: input_shape must be a tuple of ints for ONE "
                        f"example (no batch axis), e.g. (2,) or (28, 28); got {shape!r}"
                        ) from None
    if any(d <= 0 for d in shape):
        raise ValueError(f"{name}.init: input_shape must have positive sizes; got {shape}")
    return shape


def check_batch(name: str, x: Array, example_ndim: int | None) -> None:
    """Checks that ``x`` is an array with one batch axis before ``example_ndim`` axes."""
    if not hasattr(x, "shape"):
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}")
    if example_ndim is not None and x.ndim != example_ndim + 1:
        raise ValueError(
            f"{name}: expected a batch-first input of rank {example_ndim + 1} (batch axis "
            f"first, then {example_ndim} feature axes); got shape {tuple(x.shape)}. "
            "Add a batch axis with x[None] for one example.")


def layer_keys(key: Array | None, n: int) -> list[Array | None]:
    """Splits ``key`` into one key per sub-layer (``None`` stays ``None``)."""
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))
