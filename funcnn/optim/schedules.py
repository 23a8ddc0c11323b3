"""Learning-rate schedules under optax's names, each a function of the step count.

A :class:`Schedule` is a static ``rule`` plus its hyperparameter values. Called on
its own, ``schedule(step)`` is the value at that step, as an optax schedule. Given to
an optimizer (``adam(learning_rate=cosine_decay_schedule(0.1, 1000))``), its values
are copied into the optimizer state as arrays, so ``set_hyperparams`` and ``jax.vmap``
reach them and a new value never recompiles.

Names, argument order and defaults are optax's, and so is every formula (the tests
compare each with optax over 1000 steps). One schedule is the NNFS book's and has a
name optax does not use: ``inverse_time_decay(learning_rate, decay)``,
``lr_t = learning_rate / (1 + decay * t)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np

from funcnn.optim.base import (AT_LEAST_0, POSITIVE, UNIT, Array, Hparams, concrete,
                               validate)


@dataclass(frozen=True, eq=False)
class Schedule:
    """A schedule: a static ``rule(hparams, step) -> value`` plus its hyperparameters."""

    rule: Callable[[Hparams, Array], Array]
    hparams: dict[str, Any]

    def __call__(self, step: Any) -> Array:
        kind = getattr(step, "dtype", None)
        if step is None or isinstance(step, (str, bytes)) or kind is not None and not any(
                jnp.issubdtype(kind, k) for k in (jnp.integer, jnp.floating, jnp.bool_)):
            raise TypeError(f"a schedule takes the step count (an int or int array); got "
                            f"{step!r}")
        dtype = jnp.asarray(0.0).dtype  # float64 when x64 is on, else float32
        h = {k: jnp.asarray(v, dtype=dtype) for k, v in self.hparams.items()}
        return self.rule(h, jnp.asarray(step, dtype=dtype))


def _make(rule: Callable, where: str, checks: dict[str, tuple], **hparams: Any) -> Schedule:
    validate(hparams, checks, where)
    s = Schedule(rule, hparams)
    v0 = concrete(s(0), "value at step 0", where)
    if v0 is not None and not np.all(np.isfinite(v0)):
        raise ValueError(f"{where}: the value at step 0 is {v0}; pass finite values.")
    return s


# ------------------------------------------------------------------- rules --
def _constant(h: Hparams, step: Array) -> Array:
    return h["value"]


def _inverse_time(h: Hparams, step: Array) -> Array:
    return h["learning_rate"] / (1 + h["decay"] * step)  # NNFS: lr / (1 + decay*t)


@dataclass(frozen=True)
class _Polynomial:
    linear: bool  # frac itself, not frac**1.0 (which pow may round)

    def __call__(self, h: Hparams, step: Array) -> Array:
        n = h["transition_steps"]
        safe_n = jnp.where(n > 0, n, 1)
        t = jnp.clip(step - jnp.maximum(h["transition_begin"], 0), min=0, max=safe_n)
        frac = 1 - t / safe_n
        decayed = frac if self.linear else frac ** h["power"]
        value = (h["init_value"] - h["end_value"]) * decayed + h["end_value"]
        return jnp.where(n > 0, value, h["init_value"])  # optax: n <= 0 is constant


@dataclass(frozen=True)
class _Exponential:
    staircase: bool
    bounded: bool  # an end_value was given

    def __call__(self, h: Hparams, step: Array) -> Array:
        n, rate, v0 = h["transition_steps"], h["decay_rate"], h["init_value"]
        t = step - jnp.maximum(h["transition_begin"], 0)
        p = t / jnp.where(n > 0, n, 1)
        if self.staircase:
            p = jnp.floor(p)
        value = jnp.where(t <= 0, v0, v0 * jnp.power(rate, p))
        if self.bounded:
            end = h["end_value"]
            value = jnp.where(rate < 1, jnp.maximum(value, end), jnp.minimum(value, end))
        return jnp.where((n > 0) & (rate != 0), value, v0)  # optax: constant then


def _cosine_value(v0: Array, steps: Array, alpha: Array, exponent: Array,
                  step: Array) -> Array:
    t = jnp.minimum(step, steps)
    cos = 0.5 * (1 + jnp.cos(jnp.pi * t / steps))
    return v0 * ((1 - alpha) * cos ** exponent + alpha)


def _cosine(h: Hparams, step: Array) -> Array:
    return _cosine_value(h["init_value"], h["decay_steps"], h["alpha"], h["exponent"], step)


def _warmup_cosine(h: Hparams, step: Array) -> Array:
    w, v0, peak, end = h["warmup_steps"], h["init_value"], h["peak_value"], h["end_value"]
    safe_w = jnp.where(w > 0, w, 1)
    frac = 1 - jnp.clip(step, min=0, max=safe_w) / safe_w
    ramp = jnp.where(w > 0, (v0 - peak) * frac + peak, v0)
    alpha = jnp.where(peak == 0, 0.0, end / jnp.where(peak == 0, 1, peak))
    after = _cosine_value(peak, h["decay_steps"] - w, alpha, h["exponent"], step - w)
    return jnp.where(step < w, ramp, after)


def _piecewise(h: Hparams, step: Array) -> Array:
    v = h["init_value"]
    for i in range(h["boundaries"].shape[0]):  # optax's form, so values agree to the bit
        indicator = jnp.maximum(0.0, jnp.sign(h["boundaries"][i] - step))
        v = v * indicator + (1 - indicator) * h["scales"][i] * v
    return v


@dataclass(frozen=True)
class _Join:
    rules: tuple  # one rule per piece; piece i's hparams are named "i.name"

    def __call__(self, h: Hparams, step: Array) -> Array:
        def piece(i: int, t: Array) -> Array:
            prefix = f"{i}."
            return self.rules[i]({k[len(prefix):]: v for k, v in h.items()
                                  if k.startswith(prefix)}, t)

        out = piece(0, step)
        for i in range(1, len(self.rules)):
            b = h["boundaries"][i - 1]
            out = jnp.where(step < b, out, piece(i, step - b))
        return out


@dataclass(frozen=True)
class _Plain:
    fn: Callable[[Array], Array]  # a user's step -> value function, no hparams

    def __call__(self, h: Hparams, step: Array) -> Array:
        return self.fn(step)


# ------------------------------------------------------------ constructors --
def constant_schedule(value: float) -> Schedule:
    """``value`` at every step."""
    return _make(_constant, "constant_schedule", {}, value=value)


def inverse_time_decay(learning_rate: float, decay: float) -> Schedule:
    """The NNFS book's decay, ``learning_rate / (1 + decay * t)`` (optax has no such name)."""
    return _make(_inverse_time, "inverse_time_decay",
                 {"learning_rate": AT_LEAST_0, "decay": AT_LEAST_0},
                 learning_rate=learning_rate, decay=decay)


def polynomial_schedule(init_value: float, end_value: float, power: float,
                        transition_steps: int, transition_begin: int = 0) -> Schedule:
    """From ``init_value`` to ``end_value`` as ``(init - end) * (1 - t/T)**power + end``.

    ``t`` counts from ``transition_begin`` and stops at ``T = transition_steps``; as in
    optax, ``T <= 0`` gives the constant ``init_value``.
    """
    return _make(_Polynomial(False), "polynomial_schedule", {"power": AT_LEAST_0},
                 init_value=init_value,
                 end_value=end_value, power=power, transition_steps=transition_steps,
                 transition_begin=transition_begin)


def linear_schedule(init_value: float, end_value: float, transition_steps: int,
                    transition_begin: int = 0) -> Schedule:
    """``polynomial_schedule`` with ``power=1``: a straight line from init to end."""
    return _make(_Polynomial(True), "linear_schedule", {}, init_value=init_value,
                 end_value=end_value, transition_steps=transition_steps,
                 transition_begin=transition_begin)


def exponential_decay(init_value: float, transition_steps: int, decay_rate: float,
                      transition_begin: int = 0, staircase: bool = False,
                      end_value: float | None = None) -> Schedule:
    """``init_value * decay_rate ** ((t - transition_begin) / transition_steps)``.

    optax's argument order. The exponent is floored when ``staircase``; ``end_value``
    bounds the value (a floor when decaying, a ceiling when growing). A ``decay_rate``
    above 1 without an ``end_value`` grows without bound, usually arguments in
    another order, so it is refused.
    """
    where = "exponential_decay"
    if not isinstance(staircase, (bool, np.bool_)):
        raise TypeError(f"{where}: staircase must be True or False; got {staircase!r}.")
    h = dict(init_value=init_value, transition_steps=transition_steps, decay_rate=decay_rate,
             transition_begin=transition_begin)
    rate = concrete(decay_rate, "decay_rate", where)
    if end_value is None and rate is not None and np.any(rate > 1):
        raise ValueError(
            f"{where}: decay_rate={decay_rate} > 1 makes the value grow without bound. The "
            "arguments are optax's: exponential_decay(init_value, transition_steps, "
            "decay_rate); e.g. exponential_decay(0.1, 1000, 0.99) multiplies 0.1 by 0.99 every "
            "1000 steps. To grow on purpose, pass end_value= as the ceiling.")
    if end_value is not None:
        h["end_value"] = end_value
    return _make(_Exponential(bool(staircase), end_value is not None), where,
                 {"init_value": AT_LEAST_0, "decay_rate": AT_LEAST_0}, **h)


def cosine_decay_schedule(init_value: float, decay_steps: int, alpha: float = 0.0,
                          exponent: float = 1.0) -> Schedule:
    """``init_value * ((1 - alpha) * c**exponent + alpha)``, ``c = (1 + cos(pi*min(t,T)/T))/2``.

    ``T = decay_steps``; after T steps the value stays at ``alpha * init_value``.
    """
    return _make(_cosine, "cosine_decay_schedule",
                 {"decay_steps": POSITIVE, "alpha": UNIT, "exponent": AT_LEAST_0},
                 init_value=init_value, decay_steps=decay_steps, alpha=alpha, exponent=exponent)


def warmup_cosine_decay_schedule(init_value: float, peak_value: float, warmup_steps: int,
                                 decay_steps: int, end_value: float = 0.0,
                                 exponent: float = 1.0) -> Schedule:
    """Linear warmup ``init_value -> peak_value``, then cosine decay to ``end_value``.

    As optax: ``decay_steps`` is the total length, warmup included, so the cosine spans
    ``decay_steps - warmup_steps``.
    """
    where = "warmup_cosine_decay_schedule"
    w = concrete(warmup_steps, "warmup_steps", where)
    d = concrete(decay_steps, "decay_steps", where)
    if w is not None and d is not None and not np.all(d > w):
        raise ValueError(f"{where}: decay_steps (the total, warmup included) must exceed "
                         f"warmup_steps, got decay_steps={decay_steps}, "
                         f"warmup_steps={warmup_steps}.")
    return _make(_warmup_cosine, where, {"warmup_steps": AT_LEAST_0, "exponent": AT_LEAST_0},
                 init_value=init_value, peak_value=peak_value,
                 warmup_steps=warmup_steps, decay_steps=decay_steps, end_value=end_value,
                 exponent=exponent)


def piecewise_constant_schedule(init_value: float,
                                boundaries_and_scales: dict[int, float] | None = None
                                ) -> Schedule:
    """``init_value`` times every ``scale`` whose boundary the step has reached.

    As optax: ``{1000: 0.1, 2000: 0.5}`` multiplies by 0.1 from step 1000 on, and by
    0.5 more from step 2000 on. Scales must be >= 0.
    """
    where = "piecewise_constant_schedule"
    if not isinstance(boundaries_and_scales, (dict, type(None))):
        raise TypeError(f"{where}: boundaries_and_scales must be a dict {{step: scale}}, got "
                        f"{type(boundaries_and_scales).__name__}; e.g. {{1000: 0.1, 2000: 0.5}}.")
    for b, sc in (boundaries_and_scales or {}).items():
        if not _is_number(b) or not _is_number(sc):
            raise TypeError(f"{where}: boundaries_and_scales maps step numbers to scales, "
                            f"e.g. {{1000: 0.1}}; got the entry {b!r}: {sc!r}.")
    items = sorted((boundaries_and_scales or {}).items())
    scales = np.asarray([s for _, s in items], dtype=np.float64)
    if np.any(scales < 0):
        raise ValueError(f"{where}: scales must be >= 0, got {scales.tolist()}.")
    return _make(_piecewise, where, {}, init_value=init_value,
                 boundaries=np.asarray([b for b, _ in items], dtype=np.float64), scales=scales)


def join_schedules(schedules: Sequence[Schedule | Callable], boundaries: Sequence[int]
                   ) -> Schedule:
    """Schedule i from ``boundaries[i-1]`` on, evaluated at ``step - boundaries[i-1]``.

    The joined schedule keeps each piece's hyperparameters, named ``"i.name"``.
    """
    where = "join_schedules"
    if isinstance(schedules, Schedule) or callable(schedules) or not isinstance(
            schedules, Sequence):
        raise TypeError(f"{where}: schedules must be a list of schedules, e.g. "
                        f"[linear_schedule(0, 0.1, 100), constant_schedule(0.1)]; got "
                        f"{type(schedules).__name__}.")
    if isinstance(boundaries, (str, bytes)) or not hasattr(boundaries, "__len__"):
        raise TypeError(f"{where}: boundaries must be a list of step numbers (one fewer than "
                        f"the schedules), e.g. [100]; got {type(boundaries).__name__}.")
    pieces = [as_schedule(s, where) for s in schedules]
    if len(boundaries) != len(pieces) - 1:
        raise ValueError(f"{where}: need len(boundaries) == len(schedules) - 1, got "
                         f"{len(boundaries)} boundaries for {len(pieces)} schedules.")
    if not all(_is_number(b) for b in boundaries):
        raise TypeError(f"{where}: boundaries must be step numbers; got {list(boundaries)!r}.")
    if np.any(np.diff(np.asarray(boundaries, dtype=np.float64)) < 0):
        raise ValueError(f"{where}: boundaries must be in increasing order (schedule i runs "
                         f"from boundaries[i-1] to boundaries[i]); got {list(boundaries)!r}.")
    h: dict[str, Any] = {f"{i}.{k}": v for i, p in enumerate(pieces) for k, v in p.hparams.items()}
    h["boundaries"] = np.asarray(boundaries, dtype=np.float64)
    return _make(_Join(tuple(p.rule for p in pieces)), where, {}, **h)


def _is_number(v: Any) -> bool:
    """A real number (int, float, or a 0-d numpy/jax array of one), not a bool or string."""
    if isinstance(v, (bool, np.bool_, str, bytes)):
        return False
    dtype = getattr(v, "dtype", None)
    if dtype is not None:
        return np.ndim(v) == 0 and np.dtype(dtype).kind in "iuf"
    return isinstance(v, (int, float))


def as_schedule(value: Any, where: str) -> Schedule:
    """A ``Schedule`` as is; a plain ``step -> value`` callable wrapped (no hyperparameters)."""
    if isinstance(value, Schedule):
        return value
    if any(value is c for c in _CONSTRUCTORS):  # e.g. optim.linear_schedule, not called
        raise TypeError(f"{where}: got the function {value.__name__} itself; call it with its "
                        f"arguments, e.g. {value.__name__}(...), to make the schedule.")
    if callable(value):
        plain = Schedule(_Plain(value), {})
        name = getattr(value, "__name__", value)
        try:  # once, now: a function that cannot take a step fails here, not in a trace
            v0 = concrete(plain(0), "value at step 0", where)
        except Exception as e:  # noqa: BLE001 - any failure of the user's function
            raise TypeError(f"{where}: a schedule function takes the step count and returns "
                            f"the value, but {name!s}(0) raised {type(e).__name__}: {e}") from None
        if v0 is not None and not np.all(np.isfinite(v0)):
            raise ValueError(f"{where}: the schedule function {name!s} gives {v0} at step 0; "
                             "it must give finite values.")
        return plain
    raise TypeError(f"{where}: expected a schedule (e.g. optim.linear_schedule(...)) or a "
                    f"function of the step, got {type(value).__name__}.")


_CONSTRUCTORS = (constant_schedule, inverse_time_decay, polynomial_schedule, linear_schedule,
                 exponential_decay, cosine_decay_schedule, warmup_cosine_decay_schedule,
                 piecewise_constant_schedule, join_schedules)
