"""Learning-rate schedules: ``Schedule`` plus its rules, as functions of the step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from funcnn.optim.base import Array, Hparams, _concrete, _validate


# A schedule *rule* maps (hparams, step) -> value. Rules are module functions
# or frozen dataclasses, so they are hashable and compare by structure only.
@dataclass(frozen=True, eq=False)
class Schedule:
    """A learning-rate schedule: a static ``rule`` plus its hyperparameter values.

    ``schedule(step)`` evaluates it on its own; inside an optimizer the values
    are copied into ``state.hparams`` (under the names below) and can be changed
    there with ``set_hyperparams``.
    """

    rule: Callable[[Hparams, Array], Array]
    hparams: dict[str, Any]

    def __call__(self, step: Any) -> Array:
        dtype = jnp.asarray(0.0).dtype  # float64 when x64 is on, else float32
        h = {k: jnp.asarray(v, dtype=dtype) for k, v in self.hparams.items()}
        return self.rule(h, jnp.asarray(step, dtype=dtype))


def _schedule(rule: Callable, where: str, **hparams: Any) -> Schedule:
    _validate(hparams, where)
    return Schedule(rule, hparams)


def _constant(h: Hparams, step: Array) -> Array:
    return h["value"]


def _inverse_time(h: Hparams, step: Array) -> Array:
    return h["learning_rate"] / (1 + h["decay"] * step)  # NNFS: lr / (1 + decay*t)


@dataclass(frozen=True)
class _Exponential:
    staircase: bool

    def __call__(self, h: Hparams, step: Array) -> Array:
        p = step / h["transition_steps"]
        return h["init_value"] * h["decay_rate"] ** (jnp.floor(p) if self.staircase else p)


def _cosine(h: Hparams, step: Array) -> Array:
    t = jnp.minimum(step, h["decay_steps"])
    cos = 0.5 * (1 + jnp.cos(jnp.pi * t / h["decay_steps"]))
    return h["init_value"] * ((1 - h["alpha"]) * cos + h["alpha"])


@dataclass(frozen=True)
class _Warmup:
    then: Callable | None  # rule used from step warmup_steps on (at step - warmup_steps)

    def __call__(self, h: Hparams, step: Array) -> Array:
        w, start, peak = h["warmup_steps"], h["start_value"], h["peak_value"]
        ramp = start + (peak - start) * step / w
        after = peak if self.then is None else self.then(h, jnp.maximum(step - w, 0))
        return jnp.where(step < w, ramp, after)


def _warmup_cosine(h: Hparams, step: Array) -> Array:
    w, init, peak, end = h["warmup_steps"], h["init_value"], h["peak_value"], h["end_value"]
    span = h["decay_steps"] - w  # decay_steps counts the warmup, as optax
    ramp = init + (peak - init) * step / w
    t = jnp.clip(step - w, min=0, max=span)
    return jnp.where(step < w, ramp, end + (peak - end) * 0.5 * (1 + jnp.cos(jnp.pi * t / span)))


def _piecewise(h: Hparams, step: Array) -> Array:
    return h["values"][jnp.sum(step >= h["boundaries"])]  # boundaries passed so far


@dataclass(frozen=True)
class _Plain:
    fn: Callable[[Array], Array]  # a user's step -> value function, no hparams

    def __call__(self, h: Hparams, step: Array) -> Array:
        return self.fn(step)


def constant(value: float) -> Schedule:
    """``value`` at every step. Hyperparameter: ``value``."""
    return _schedule(_constant, "constant", value=value)


def inverse_time_decay(learning_rate: float, decay: float) -> Schedule:
    """NNFS decay ``lr_t = learning_rate / (1 + decay*t)``. Hparams: same names."""
    return _schedule(_inverse_time, "inverse_time_decay", learning_rate=learning_rate, decay=decay)


def exponential_decay(init_value: float, decay_rate: float, transition_steps: float,
                      staircase: bool = False) -> Schedule:
    """``init_value * decay_rate**(t/transition_steps)`` (exponent floored if staircase).

    Note the argument order differs from optax's; pass them by name.
    """
    return _schedule(_Exponential(bool(staircase)), "exponential_decay", init_value=init_value,
                     decay_rate=decay_rate, transition_steps=transition_steps)


def cosine_decay(init_value: float, decay_steps: float, alpha: float = 0.0) -> Schedule:
    """``init_value * ((1-alpha)*c + alpha)`` with ``c = (1 + cos(pi*min(t, T)/T))/2``.

    ``T = decay_steps``; after T steps the value stays at ``alpha * init_value``.
    """
    return _schedule(_cosine, "cosine_decay", init_value=init_value,
                     decay_steps=decay_steps, alpha=alpha)


def linear_warmup(peak_value: float, warmup_steps: float, start_value: float = 0.0,
                  then: Schedule | None = None) -> Schedule:
    """Rise linearly from ``start_value`` to ``peak_value`` over ``warmup_steps``.

    Afterwards stay at ``peak_value``, or follow ``then`` evaluated at
    ``t - warmup_steps`` (so ``then`` starts from its own step 0). The hparams
    are ``start_value, peak_value, warmup_steps`` plus those of ``then``.
    """
    h = dict(start_value=start_value, peak_value=peak_value, warmup_steps=warmup_steps)
    if then is None:
        return _schedule(_Warmup(None), "linear_warmup", **h)
    if not isinstance(then, Schedule):
        raise TypeError(f"linear_warmup: then must be a Schedule (e.g. cosine_decay(...)), "
                        f"got {type(then).__name__}.")
    if clash := set(h) & set(then.hparams):
        raise ValueError(f"linear_warmup: hyperparameter names {sorted(clash)} appear in both the "
                         "warmup and `then`; use another kind of schedule for `then`.")
    return _schedule(_Warmup(then.rule), "linear_warmup", **h, **then.hparams)


def warmup_cosine_decay(init_value: float, peak_value: float, warmup_steps: float,
                        decay_steps: float, end_value: float = 0.0) -> Schedule:
    """Linear warmup ``init_value -> peak_value``, then cosine decay to ``end_value``.

    As optax's ``warmup_cosine_decay_schedule``: ``decay_steps`` is the total
    length including the warmup, so the cosine spans ``decay_steps - warmup_steps``.
    """
    h = dict(init_value=init_value, peak_value=peak_value, warmup_steps=warmup_steps,
             decay_steps=decay_steps, end_value=end_value)
    s = _schedule(_warmup_cosine, "warmup_cosine_decay", **h)
    w, d = (_concrete(h[k], k, "warmup_cosine_decay") for k in ("warmup_steps", "decay_steps"))
    if w is not None and d is not None and not d > w:
        raise ValueError(f"warmup_cosine_decay: decay_steps (total, warmup included) must "
                         f"exceed warmup_steps, got decay_steps={decay_steps}, "
                         f"warmup_steps={warmup_steps}.")
    return s


def piecewise_constant(boundaries: Any, values: Any) -> Schedule:
    """``values[i]`` for ``boundaries[i-1] <= t < boundaries[i]``, as optax.

    ``len(values) == len(boundaries) + 1``; boundaries strictly increasing.
    """
    s = _schedule(_piecewise, "piecewise_constant", boundaries=boundaries, values=values)
    nb, nv = np.shape(boundaries), np.shape(values)
    if len(nb) != 1 or len(nv) != 1 or nv[0] != nb[0] + 1:
        raise ValueError(f"piecewise_constant: need 1-D boundaries and values with len(values) == "
                         f"len(boundaries) + 1, got shapes {nb} and {nv}.")
    b = _concrete(boundaries, "boundaries", "piecewise_constant")
    if b is not None and np.any(np.diff(b) <= 0):
        raise ValueError(f"piecewise_constant: boundaries must be strictly increasing, got {b}.")
    return s


def _as_schedule(learning_rate: Any, decay: Any, where: str) -> Schedule:
    """A float learning rate becomes ``inverse_time_decay(lr, decay)`` (decay 0: constant)."""
    if isinstance(learning_rate, Schedule) or callable(learning_rate):
        d = _concrete(decay, "decay", where)
        if d is None or np.any(d != 0):
            raise ValueError(f"{where}: decay only applies to a float learning_rate, got a "
                             f"schedule and decay={decay!r}. Fix: pass decay=0 or build the "
                             "decay into the schedule.")
        if isinstance(learning_rate, Schedule):
            return learning_rate
        return Schedule(_Plain(learning_rate), {})
    _validate({"learning_rate": learning_rate, "decay": decay}, where)
    return Schedule(_inverse_time, {"learning_rate": learning_rate, "decay": decay})
