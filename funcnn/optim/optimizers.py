"""SGD, Adagrad, RMSprop, Adam and AdamW: their update rules and constructors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import jax.numpy as jnp

from funcnn.optim.base import (Array, Optimizer, OptState, PyTree, _check_convention,
                               _default_eps, _float_dtype, _tmap, _Update, _validate)
from funcnn.optim.schedules import Schedule, _as_schedule


@dataclass(frozen=True)
class _SGD(_Update):
    convention: str = "optax"
    nesterov: bool = False

    def rule(self, grads, slots, params, h, lr, t):
        mu = h["momentum"]
        if self.convention == "nnfs":  # velocity already holds -lr*g terms
            v = _tmap(lambda v, g: mu * v - lr * g, slots["velocity"], grads)
            u = _tmap(lambda v, g: mu * v - lr * g, v, grads) if self.nesterov else v
        else:
            v = _tmap(lambda v, g: g + mu * v, slots["velocity"], grads)
            u = _tmap(lambda v, g: -lr * (g + mu * v) if self.nesterov else -lr * v, v, grads)
        return u, {"velocity": v}


@dataclass(frozen=True)
class _Adagrad(_Update):
    convention: str = "optax"

    def rule(self, grads, slots, params, h, lr, t):
        eps = h["eps"]
        cache = _tmap(lambda c, g: c + g * g, slots["cache"], grads)
        if self.convention == "nnfs":
            u = _tmap(lambda c, g: -lr * g / (jnp.sqrt(c) + eps), cache, grads)
        else:
            u = _tmap(lambda c, g: jnp.where(c > 0, -lr * g / jnp.sqrt(c + eps), 0), cache, grads)
        return u, {"cache": cache}


@dataclass(frozen=True)
class _RMSprop(_Update):
    convention: str = "optax"

    def rule(self, grads, slots, params, h, lr, t):
        rho, eps = h["rho"], h["eps"]
        cache = _tmap(lambda c, g: rho * c + (1 - rho) * g * g, slots["cache"], grads)
        if self.convention == "nnfs":
            u = _tmap(lambda c, g: -lr * g / (jnp.sqrt(c) + eps), cache, grads)
        else:
            u = _tmap(lambda c, g: -lr * g / jnp.sqrt(c + eps), cache, grads)
        return u, {"cache": cache}


@dataclass(frozen=True)
class _Adam(_Update):
    decoupled_weight_decay: bool = False  # True: AdamW

    def rule(self, grads, slots, params, h, lr, t):
        b1, b2, eps = h["b1"], h["b2"], h["eps"]
        m = _tmap(lambda m, g: b1 * m + (1 - b1) * g, slots["m"], grads)
        v = _tmap(lambda v, g: b2 * v + (1 - b2) * g * g, slots["v"], grads)
        c1, c2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)  # bias corrections
        u = _tmap(lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + eps), m, v)
        if self.decoupled_weight_decay:
            if params is None:
                raise ValueError("adamw.update: needs params for weight decay. "
                                 "Fix: call opt.update(grads, state, params).")
            u = _tmap(lambda u, p: u + h["weight_decay"] * p, u, params)
        return _tmap(lambda u: -lr * u, u), {"m": m, "v": v}


def _optimizer(update: _Update, hparams: dict[str, Any], slots: dict[str, Any],
               where: str, schedule: Schedule | None = None) -> Optimizer:
    """Build ``Optimizer(init, update)``; ``slots`` maps buffer name -> initial fill value."""
    _validate(hparams, where)
    if schedule is not None:
        if clash := set(hparams) & set(schedule.hparams):
            raise ValueError(f"{where}: schedule hyperparameters {sorted(clash)} clash with the "
                             "optimizer's own names; use another schedule.")
        hparams = {**schedule.hparams, **hparams}

    def init(params: PyTree) -> OptState:
        dtype = _float_dtype(params, where)
        return OptState(
            count=jnp.zeros((), jnp.int32),
            hparams={k: jnp.asarray(v, dtype=dtype) for k, v in hparams.items()},
            slots={k: _tmap(lambda p: jnp.full_like(p, fill), params) for k, fill in slots.items()},
        )

    return Optimizer(init, update)


LearningRate = Union[float, Array, Schedule, Callable[[Array], Array]]


def sgd(learning_rate: LearningRate, momentum: float = 0.0, nesterov: bool = False,
        decay: float = 0.0, convention: str = "optax") -> Optimizer:
    """SGD with optional (Nesterov) momentum; see the module table for the two forms.

    The velocity buffer exists even for ``momentum=0`` so that momentum can be
    changed or vmapped later without changing the state's structure.
    """
    _check_convention(convention, "sgd")
    s = _as_schedule(learning_rate, decay, "sgd")
    return _optimizer(_SGD(s.rule, convention, bool(nesterov)), {"momentum": momentum},
                      {"velocity": 0.0}, "sgd", s)


def adagrad(learning_rate: LearningRate, eps: float | None = None, decay: float = 0.0,
            initial_accumulator_value: float | None = None,
            convention: str = "optax") -> Optimizer:
    """Adagrad: divide by the root of the sum of all squared gradients so far.

    ``eps`` defaults to 1e-7 in both conventions; the accumulator starts at 0.1
    (optax) or 0 (NNFS) unless ``initial_accumulator_value`` is given.
    """
    _check_convention(convention, "adagrad")
    eps = _default_eps(eps, convention, 1e-7)
    c0 = (0.0 if convention == "nnfs" else 0.1) if initial_accumulator_value is None \
        else initial_accumulator_value
    _validate({"initial_accumulator_value": c0}, "adagrad")
    s = _as_schedule(learning_rate, decay, "adagrad")
    return _optimizer(_Adagrad(s.rule, convention), {"eps": eps}, {"cache": c0}, "adagrad", s)


def rmsprop(learning_rate: LearningRate = 1e-3, rho: float = 0.9, eps: float | None = None,
            decay: float = 0.0, convention: str = "optax") -> Optimizer:
    """RMSprop: divide by the root of a moving average of squared gradients.

    ``rho`` is the smoothing constant (optax calls it ``decay``; here ``decay``
    is the learning-rate decay). ``eps`` defaults to 1e-8 inside the root
    (optax) or 1e-7 outside it (NNFS).
    """
    _check_convention(convention, "rmsprop")
    eps = _default_eps(eps, convention, 1e-8)
    s = _as_schedule(learning_rate, decay, "rmsprop")
    return _optimizer(_RMSprop(s.rule, convention), {"rho": rho, "eps": eps},
                      {"cache": 0.0}, "rmsprop", s)


def adam(learning_rate: LearningRate = 1e-3, b1: float = 0.9, b2: float = 0.999,
         eps: float | None = None, decay: float = 0.0, convention: str = "optax") -> Optimizer:
    """Adam (Kingma & Ba). ``eps`` defaults to 1e-8 (optax) or 1e-7 (NNFS)."""
    _check_convention(convention, "adam")
    s = _as_schedule(learning_rate, decay, "adam")
    eps = _default_eps(eps, convention, 1e-8)
    return _optimizer(_Adam(s.rule), {"b1": b1, "b2": b2, "eps": eps},
                      {"m": 0.0, "v": 0.0}, "adam", s)


def adamw(learning_rate: LearningRate = 1e-3, b1: float = 0.9, b2: float = 0.999,
          eps: float | None = None, weight_decay: float = 1e-4, decay: float = 0.0,
          convention: str = "optax") -> Optimizer:
    """AdamW: Adam plus decoupled weight decay, ``u = -lr*(adam_step + weight_decay*w)``."""
    _check_convention(convention, "adamw")
    eps = _default_eps(eps, convention, 1e-8)
    s = _as_schedule(learning_rate, decay, "adamw")
    return _optimizer(_Adam(s.rule, decoupled_weight_decay=True),
                      {"b1": b1, "b2": b2, "eps": eps, "weight_decay": weight_decay},
                      {"m": 0.0, "v": 0.0}, "adamw", s)
