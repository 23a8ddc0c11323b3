"""Optimizer states, the ``Optimizer`` pair, hyperparameter validation and ``_Update``.

``_Update`` is the base of every update function: a frozen dataclass holding only
the optimizer's structure, so equal across hyperparameter values (see the package
docstring).
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
CONVENTIONS = ("optax", "nnfs")


# ------------------------------------------------------------------- state --
class OptState(NamedTuple):
    """State of one optimizer: step count, hyperparameters, per-weight buffers."""

    count: Array  # int32 scalar: updates already applied
    hparams: Hparams  # e.g. {"learning_rate": 0.001, "b1": 0.9, ...} as arrays
    slots: dict[str, PyTree]  # e.g. {"m": tree, "v": tree}, shaped like params


class ChainState(NamedTuple):
    """State of ``chain(...)``: one state per link, in order."""

    states: tuple


class Optimizer(NamedTuple):
    """``init(params) -> state``; ``update(grads, state, params=None) -> (updates, state)``."""

    init: Callable[[PyTree], Any]
    update: Callable[..., tuple[PyTree, Any]]


# -------------------------------------------------------------- validation --
# name -> (test on a numpy array, what is expected). NaN fails every test.
_AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
_POSITIVE = (lambda v: v > 0, "> 0")
_FRACTION = (lambda v: (v >= 0) & (v < 1), "in [0, 1)")
_CHECKS = {
    **dict.fromkeys(["learning_rate", "decay", "eps", "weight_decay", "value", "init_value",
                     "peak_value", "start_value", "end_value", "values", "boundaries",
                     "initial_accumulator_value"], _AT_LEAST_0),
    **dict.fromkeys(["momentum", "b1", "b2", "rho"], _FRACTION),
    **dict.fromkeys(["decay_rate", "transition_steps", "decay_steps", "warmup_steps",
                     "max_norm"], _POSITIVE),
    "alpha": (lambda v: (v >= 0) & (v <= 1), "in [0, 1]"),
}


def _concrete(value: Any, name: str, where: str) -> np.ndarray | None:
    """``value`` as a float numpy array, or None for a tracer (inside jit/vmap)."""
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


def _validate(values: dict[str, Any], where: str) -> None:
    """Raise ValueError for any concrete value outside its allowed range."""
    for name, value in values.items():
        v = _concrete(value, name, where)
        test, expected = _CHECKS.get(name, (lambda v: True, "a number"))
        if v is not None and not (np.all(np.isfinite(v)) and np.all(test(v))):
            raise ValueError(f"{where}: {name} must be finite and {expected}, got "
                             f"{value!r}. Fix: pass a finite {name} {expected}.")


def _check_convention(convention: str, where: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"{where}: convention must be one of {CONVENTIONS}, got "
                         f"{convention!r}. Use 'optax' (default) or 'nnfs' (NNFS book forms).")


def _default_eps(eps: float | None, convention: str, optax_eps: float) -> float:
    """``eps`` if given, else NNFS's 1e-7 or optax's default for this optimizer."""
    return eps if eps is not None else (1e-7 if convention == "nnfs" else optax_eps)


def _float_dtype(params: PyTree, where: str) -> np.dtype:
    """The widest float dtype among the leaves; hyperparameters are stored in it."""
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(f"{where}.init: params has no arrays; pass the model's parameter pytree.")
    dtypes = [jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype for x in leaves]
    for d in dtypes:
        if not jnp.issubdtype(d, jnp.floating):
            raise TypeError(f"{where}.init: every parameter must be a float array, got a leaf "
                            f"of dtype {d}. Fix: cast it, e.g. x.astype(jnp.float32).")
    return jnp.result_type(*dtypes)


# ----------------------------------------------------------- update rules --
def _tmap(fn: Callable, *trees: PyTree) -> PyTree:
    return jax.tree.map(fn, *trees)


@dataclass(frozen=True)
class _Update:
    """Base of every update function: hashable and equal across hyperparameter values.

    Subclasses implement ``rule(grads, slots, params, h, lr, t)`` returning
    ``(updates, new_slots)``; ``lr`` is the schedule's value at ``t = count``.
    """

    schedule: Callable | None  # a schedule rule, or None (clipping has no lr)

    def __call__(self, grads: PyTree, state: OptState,
                 params: PyTree | None = None) -> tuple[PyTree, OptState]:
        name = type(self).__name__.lstrip("_")
        if not isinstance(state, OptState):
            raise TypeError(f"{name}.update: expected the state made by this optimizer's init, "
                            f"got {type(state).__name__}.")
        for slot in state.slots.values():
            if jax.tree.structure(slot) != jax.tree.structure(grads):
                raise ValueError(f"{name}.update: grads have structure {jax.tree.structure(grads)}"
                                 f" but the state was built for {jax.tree.structure(slot)}.")
        h = state.hparams
        t = state.count.astype(next(iter(h.values())).dtype)
        lr = None if self.schedule is None else self.schedule(h, t)
        updates, slots = self.rule(grads, state.slots, params, h, lr, t)
        # Keep dtypes fixed so a lax.scan / fori_loop carry never changes type.
        updates = _tmap(lambda u, g: u.astype(g.dtype), updates, grads)
        slots = _tmap(lambda new, old: new.astype(old.dtype), slots, state.slots)
        return updates, OptState(state.count + 1, h, slots)
