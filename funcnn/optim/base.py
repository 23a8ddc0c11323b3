"""The pieces every transform shares: ``Optimizer``, the states, validation, ``Transform``.

A *transform* turns one update tree into another (optax's ``GradientTransformation``):
``init(params) -> state`` and ``update(updates, state, params=None) -> (updates, state)``.
An optimizer is nothing more than a chain of transforms, so both have one type here,
:class:`Optimizer`.

Every funcnn transform keeps one kind of state, :class:`OptState`: its step ``count``,
its hyperparameters as arrays (``hparams``), and its per-weight buffers (``slots``).
Its ``update`` is a :class:`Transform`, a frozen dataclass that holds only structure
(which rule, booleans such as ``nesterov``), so ``adam(0.1).update == adam(0.2).update``
and one compiled training step serves every hyperparameter value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any
Hparams = dict[str, Array]


# ------------------------------------------------------------------- states --
class OptState(NamedTuple):
    """State of one transform: step count, hyperparameters, per-weight buffers."""

    count: Array  # int32 scalar: updates already applied
    hparams: Hparams  # e.g. {"b1": 0.9, "b2": 0.999, ...} as arrays
    slots: dict[str, PyTree]  # e.g. {"mu": tree, "nu": tree}, shaped like params


class ChainState(NamedTuple):
    """State of ``chain(...)``: one state per link, in order (a link may be a chain)."""

    states: tuple


class Optimizer(NamedTuple):
    """``init(params) -> state``; ``update(updates, state, params=None) -> (updates, state)``.

    optax calls the same pair a ``GradientTransformation``; each works where the
    other is expected (``optax.chain(funcnn_adam, ...)``, ``fit(..., optax.adam(...))``).
    """

    init: Callable[[PyTree], Any]
    update: Callable[..., tuple[PyTree, Any]]


GradientTransformation = Optimizer  # optax's name for the same pair


# --------------------------------------------------------------- validation --
# A check is (test on a float64 numpy array, what is expected). NaN fails every test.
AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
POSITIVE = (lambda v: v > 0, "> 0")
FRACTION = (lambda v: (v >= 0) & (v < 1), "in [0, 1)")
UNIT = (lambda v: (v >= 0) & (v <= 1), "in [0, 1]")
ANY = (lambda v: v == v, "a number")


def concrete(value: Any, name: str, where: str) -> np.ndarray | None:
    """``value`` as a float64 numpy array, or None for a tracer (inside jit/vmap)."""
    if isinstance(value, (str, bytes, bool)):  # numpy would read "0.1" as 0.1
        raise TypeError(f"{where}: {name} must be a number or a float array, got "
                        f"{value!r} of type {type(value).__name__}.")
    try:
        return np.asarray(value, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be a number or a float array, got "
                        f"{value!r} of type {type(value).__name__}.") from None


def validate(values: dict[str, Any], checks: dict[str, tuple], where: str) -> None:
    """Raise ValueError for any concrete value outside its allowed range.

    ``checks`` maps a name to one of the checks above; names without one only
    need to be finite. Traced values (inside jit or vmap) are not checked.
    """
    for name, value in values.items():
        v = concrete(value, name, where)
        test, expected = checks.get(name, ANY)
        if v is not None and not (np.all(np.isfinite(v)) and np.all(test(v))):
            raise ValueError(f"{where}: {name} must be finite and {expected}, got "
                             f"{value!r}. Fix: pass a finite {name} {expected}.")


def float_dtype(params: PyTree, where: str) -> np.dtype:
    """The widest float dtype among the leaves; hyperparameters are stored in it.

    With no leaves (``init(None)``, as optax allows) it is JAX's default float.
    """
    leaves = jax.tree.leaves(params)
    if not leaves:
        return jnp.asarray(0.0).dtype
    dtypes = [jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype for x in leaves]
    for d in dtypes:
        if not jnp.issubdtype(d, jnp.floating):
            raise TypeError(f"{where}.init: every parameter must be a float array, got a leaf "
                            f"of dtype {d}. Fix: cast it, e.g. x.astype(jnp.float32).")
    return jnp.result_type(*dtypes)


def tmap(fn: Callable, *trees: PyTree) -> PyTree:
    """``jax.tree.map``, short because every rule maps over the update tree."""
    return jax.tree.map(fn, *trees)


# ---------------------------------------------------------------- transform --
@dataclass(frozen=True)
class Transform:
    """Base of every funcnn transform's ``update``: hashable, equal across hyperparameters.

    A subclass implements ``rule(updates, state, params) -> (updates, slots)``, reading
    its hyperparameters from ``state.hparams`` and the step from ``state.count``
    (updates already applied, 0 at the first call). This base checks the state,
    keeps every dtype fixed (so a ``lax.scan`` carry never changes type) and counts.
    """

    def rule(self, updates: PyTree, state: OptState, params: PyTree | None
             ) -> tuple[PyTree, dict[str, PyTree]]:
        raise NotImplementedError

    def __call__(self, updates: PyTree, state: OptState,
                 params: PyTree | None = None) -> tuple[PyTree, OptState]:
        name = type(self).__name__.lstrip("_")
        if not isinstance(state, OptState):
            raise TypeError(f"{name}.update: expected the state made by this transform's init, "
                            f"got {type(state).__name__}.")
        for slot in state.slots.values():
            if jax.tree.structure(slot) != jax.tree.structure(updates):
                raise ValueError(f"{name}.update: updates have structure "
                                 f"{jax.tree.structure(updates)} but the state was built for "
                                 f"{jax.tree.structure(slot)}.")
        new, slots = self.rule(updates, state, params)
        new = tmap(lambda u, g: u.astype(jnp.asarray(g).dtype), new, updates)
        slots = tmap(lambda s, old: s.astype(old.dtype), slots, state.slots)
        return new, OptState(state.count + 1, state.hparams, slots)


def transform(update: Transform, hparams: dict[str, Any], checks: dict[str, tuple],
              where: str, slots: dict[str, Any] | None = None,
              slot_dtypes: dict[str, Any] | None = None) -> Optimizer:
    """``Optimizer(init, update)`` for a funcnn transform.

    ``hparams`` are validated now and stored as arrays in the params' float dtype at
    ``init``; ``slots`` maps a buffer name to its fill value (a tree shaped like the
    params), ``slot_dtypes`` optionally a buffer name to its dtype.
    """
    validate(hparams, checks, where)
    slots, slot_dtypes = slots or {}, slot_dtypes or {}

    def init(params: PyTree) -> OptState:
        dtype = float_dtype(params, where)

        def fill(name: str, value: Any) -> PyTree:
            dt = slot_dtypes.get(name)
            return tmap(lambda p: jnp.full(jnp.shape(p), value, dt or jnp.asarray(p).dtype),
                        params)

        h = {k: jnp.asarray(v, dtype=dtype) for k, v in hparams.items()}
        for k, v in h.items():  # e.g. a learning rate of 1e39 is inf in float32
            c = concrete(v, k, where)
            if c is not None and not np.all(np.isfinite(c)):
                raise ValueError(f"{where}.init: {k}={hparams[k]!r} is not finite in the params' "
                                 f"dtype {np.dtype(dtype).name}. Fix: pass a smaller {k}, or "
                                 "float64 params (jax_enable_x64).")
        return OptState(count=jnp.zeros((), jnp.int32), hparams=h,
                        slots={k: fill(k, v) for k, v in slots.items()})

    return Optimizer(init, update)


def is_transform(obj: Any) -> bool:
    """True for anything with callable ``init`` and ``update``: ours, optax's, MultiSteps."""
    return callable(getattr(obj, "init", None)) and callable(getattr(obj, "update", None))


def check_state_leaves(state: PyTree, where: str) -> None:
    """Raise TypeError unless every leaf of an optimizer state is an array.

    A state is the carry of a compiled loop: a Python float or string in it would be
    baked in as a constant or refused by ``jit`` far from its cause.
    """
    leaves, _ = jax.tree.flatten_with_path(state)
    for path, leaf in leaves:
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic)):  # tracers are Arrays
            raise TypeError(
                f"{where}: the optimizer state must be a pytree of arrays, but "
                f"state{jax.tree_util.keystr(path)} is {leaf!r} of type {type(leaf).__name__}. "
                "Fix: in the transform's init, wrap numbers with jnp.asarray(...) and keep "
                "non-array settings in the update function (a frozen dataclass) instead.")


class InjectHyperparamsState(NamedTuple):
    """State of ``inject_hyperparams(factory)(...)``: optax's layout."""

    count: Array  # int32 scalar
    hyperparams: Hparams  # the values the inner optimizer uses, by keyword name
    inner_state: Any


class MultiStepsState(NamedTuple):
    """State of ``MultiSteps``: optax's layout."""

    mini_step: Array  # int32: gradients accumulated since the last inner update
    gradient_step: Array  # int32: inner updates applied
    inner_opt_state: Any
    acc_grads: PyTree  # the running mean (or sum) of the gradients
    skip_state: PyTree = ()  # what should_skip_update_fn last reported (() without one)
