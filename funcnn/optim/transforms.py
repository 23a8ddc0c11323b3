"""The building blocks: optax's gradient transformations, one small rule each.

Each constructor returns an :class:`~funcnn.optim.base.Optimizer` whose ``update``
is a :class:`~funcnn.optim.base.Transform` and whose state holds the hyperparameters
as arrays. Names, argument order, defaults and formulas are optax's (``g`` is the
incoming update, ``u`` the outgoing one, ``t`` the count of updates already applied)::

    scale(s)                      u = s * g
    scale_by_learning_rate(lr)    u = -lr * g   (lr may be a schedule of t)
    scale_by_schedule(f)          u = f(t) * g
    trace(decay)                  v = g + decay*v;  u = v   (nesterov: u = g + decay*v);
                                  the state calls decay `momentum`
    scale_by_rss(c0, eps)         c = c + g^2;      u = g / sqrt(c + eps)   (0 where c = 0)
    scale_by_rms(decay, eps)      n = decay*n + (1-decay)*g^2;  u = g / sqrt(n + eps)
    scale_by_stddev(decay, eps)   also m = decay*m + (1-decay)*g;  u = g / sqrt(n - m^2 + eps)
    scale_by_adam(b1, b2, eps)    m = b1*m + (1-b1)*g;  n = b2*n + (1-b2)*g^2
                                  u = m_hat / (sqrt(n_hat + eps_root) + eps),
                                  m_hat = m / (1 - b1^(t+1)),  n_hat = n / (1 - b2^(t+1))
    add_decayed_weights(wd)       u = g + wd * w
    clip(d)                       u = clip(g, -d, d)
    clip_by_global_norm(c)        u = g * c / ||g||  when ||g|| >= c, else g

``eps_in_sqrt=False`` (``scale_by_rms``, and here also ``scale_by_rss``) puts ``eps``
outside the root, ``g / (sqrt(n) + eps)``: the NNFS book's form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.optim.base import (AT_LEAST_0, FRACTION, Array, Optimizer, PyTree, Transform,
                               concrete, tmap, transform, validate)
from funcnn.optim.schedules import Schedule, as_schedule


def global_norm(tree: PyTree) -> Array:
    """``sqrt(sum of squares of every element of every leaf)``."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _step(state) -> Array:
    """The count as a float of the hyperparameters' dtype, for schedules and powers."""
    h = state.hparams
    return state.count.astype(next(iter(h.values())).dtype) if h else state.count


# ---------------------------------------------------------------- scaling --
@dataclass(frozen=True)
class _Identity(Transform):
    def rule(self, g, state, params):
        return g, {}


def identity() -> Optimizer:
    """Leave the updates as they are (what optax gives for a learning rate of None)."""
    return transform(_Identity(), {}, {}, "identity")


@dataclass(frozen=True)
class _Scale(Transform):
    def rule(self, g, state, params):
        s = state.hparams["step_size"]
        return tmap(lambda g: s * g, g), {}


def scale(step_size: float) -> Optimizer:
    """Multiply every update by ``step_size``."""
    return transform(_Scale(), {"step_size": step_size}, {}, "scale")


@dataclass(frozen=True)
class _ScaleBySchedule(Transform):
    schedule: Callable  # a schedule rule (hparams, step) -> value
    sign: float = 1.0

    def rule(self, g, state, params):
        s = self.sign * self.schedule(state.hparams, _step(state))
        return tmap(lambda g: s.astype(g.dtype) * g, g), {}


def scale_by_schedule(step_size_fn: Schedule | Callable[[Array], Array]) -> Optimizer:
    """Multiply the updates by ``step_size_fn(t)``, t the count of updates applied."""
    s = as_schedule(step_size_fn, "scale_by_schedule")
    return transform(_ScaleBySchedule(s.rule), s.hparams, {}, "scale_by_schedule")


@dataclass(frozen=True)
class _ScaleByLearningRate(Transform):
    sign: float = -1.0

    def rule(self, g, state, params):
        lr = self.sign * state.hparams["learning_rate"]
        return tmap(lambda g: lr * g, g), {}


def scale_by_learning_rate(learning_rate: float | Schedule | Callable | None, *,
                           flip_sign: bool = True) -> Optimizer:
    """``u = -learning_rate * g`` (``+`` with ``flip_sign=False``); a schedule is a function
    of t. ``None`` leaves the updates as they are, as in optax.

    A float learning rate is stored as the hyperparameter ``learning_rate``; a
    schedule's hyperparameters are stored under the schedule's own names.
    """
    where = "scale_by_learning_rate"
    sign = -1.0 if flip_sign else 1.0
    if learning_rate is None:
        return identity()
    if isinstance(learning_rate, Schedule) or callable(learning_rate):
        s = as_schedule(learning_rate, where)
        first = concrete(s(0), "learning_rate", where)  # as_schedule has called it once
        if first is not None and np.any(first < 0):
            raise ValueError(f"{where}: the schedule's learning rate at step 0 is {first}, "
                             "below 0: that is gradient ascent. Fix: pass a schedule of "
                             "values >= 0 (flip_sign=False is the way to a positive scale).")
        return transform(_ScaleBySchedule(s.rule, sign), s.hparams, {}, where)
    return transform(_ScaleByLearningRate(sign), {"learning_rate": learning_rate},
                     {"learning_rate": AT_LEAST_0}, where)


# ---------------------------------------------------------------- momentum --
@dataclass(frozen=True)
class _Trace(Transform):
    nesterov: bool = False

    def rule(self, g, state, params):
        d = state.hparams["momentum"]
        v = tmap(lambda g, v: g + d * v, g, state.slots["trace"])
        u = tmap(lambda g, v: g + d * v, g, v) if self.nesterov else v
        return u, {"trace": v}


def trace(decay: float, nesterov: bool = False, accumulator_dtype: Any = None) -> Optimizer:
    """Momentum: ``v = g + decay * v``, ``u = v`` (Nesterov: ``u = g + decay * v``).

    optax's keyword is ``decay``; the state names the value ``momentum``, the name
    ``sgd`` takes and every sweep uses (and not NNFS's learning-rate ``decay``). The
    buffer exists for every value, 0 included, so a sweep can vary it.
    """
    validate({"decay": decay}, {"decay": FRACTION}, "trace")
    return transform(_Trace(bool(nesterov)), {"momentum": decay}, {}, "trace",
                     {"trace": 0.0}, {"trace": accumulator_dtype})


scale_by_momentum = trace  # the same transform, under the name momentum users look for


# ------------------------------------------------------- adaptive scalings --
@dataclass(frozen=True)
class _ScaleByRss(Transform):
    eps_in_sqrt: bool = True

    def rule(self, g, state, params):
        eps = state.hparams["eps"]
        c = tmap(lambda g, c: g * g + c, g, state.slots["sum_of_squares"])
        if self.eps_in_sqrt:
            u = tmap(lambda c, g: jnp.where(c > 0, jax.lax.rsqrt(c + eps), 0.0) * g, c, g)
        else:
            u = tmap(lambda c, g: g / (jnp.sqrt(c) + eps), c, g)
        return u, {"sum_of_squares": c}


def scale_by_rss(initial_accumulator_value: float = 0.1, eps: float = 1e-7,
                 eps_in_sqrt: bool = True) -> Optimizer:
    """Adagrad's scaling: divide by the root of the sum of all squared updates so far.

    ``eps_in_sqrt=False`` (not in optax) gives NNFS's ``g / (sqrt(c) + eps)``.
    """
    return transform(_ScaleByRss(bool(eps_in_sqrt)), {"eps": eps}, {"eps": AT_LEAST_0},
                     "scale_by_rss", {"sum_of_squares": initial_accumulator_value})


@dataclass(frozen=True)
class _ScaleByRms(Transform):
    eps_in_sqrt: bool = True
    bias_correction: bool = False
    centered: bool = False  # subtract the squared mean: scale_by_stddev

    def rule(self, g, state, params):
        d, eps = state.hparams["decay"], state.hparams["eps"]
        nu = tmap(lambda g, n: (1 - d) * (g * g) + d * n, g, state.slots["nu"])
        slots = {"nu": nu}
        if self.centered:
            slots["mu"] = tmap(lambda g, m: (1 - d) * g + d * m, g, state.slots["mu"])
        hat = dict(slots)
        if self.bias_correction:
            bc = 1 - d ** (_step(state) + 1)
            hat = {k: tmap(lambda x: x / bc.astype(x.dtype), v) for k, v in slots.items()}
        var = tmap(lambda n, m: n - m * m, hat["nu"], hat["mu"]) if self.centered else hat["nu"]
        if self.eps_in_sqrt:
            u = tmap(lambda v, g: jax.lax.rsqrt(v + eps) * g, var, g)
        else:
            u = tmap(lambda v, g: (1 / (jnp.sqrt(v) + eps)) * g, var, g)
        return u, slots


def scale_by_rms(decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0,
                 eps_in_sqrt: bool = True, bias_correction: bool = False) -> Optimizer:
    """RMSprop's scaling: divide by the root of a moving average of squared updates.

    ``decay`` is the smoothing of that average (NNFS calls it ``rho``).
    """
    return transform(_ScaleByRms(bool(eps_in_sqrt), bool(bias_correction)),
                     {"decay": decay, "eps": eps}, {"decay": FRACTION, "eps": AT_LEAST_0},
                     "scale_by_rms", {"nu": initial_scale})


def scale_by_stddev(decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0,
                    eps_in_sqrt: bool = True, bias_correction: bool = False) -> Optimizer:
    """Centered RMSprop's scaling: divide by the root of the moving variance,
    ``n - m^2`` with ``m`` the moving mean of the updates."""
    return transform(_ScaleByRms(bool(eps_in_sqrt), bool(bias_correction), True),
                     {"decay": decay, "eps": eps}, {"decay": FRACTION, "eps": AT_LEAST_0},
                     "scale_by_stddev", {"nu": initial_scale, "mu": 0.0})


@dataclass(frozen=True)
class _ScaleByAdam(Transform):
    nesterov: bool = False

    def rule(self, g, state, params):
        h = state.hparams
        b1, b2, eps, eps_root = h["b1"], h["b2"], h["eps"], h["eps_root"]
        mu = tmap(lambda g, m: (1 - b1) * g + b1 * m.astype(g.dtype), g, state.slots["mu"])
        nu = tmap(lambda g, n: (1 - b2) * (g * g) + b2 * n, g, state.slots["nu"])
        t = _step(state) + 1  # bias corrections use the count including this update

        def corrected(tree, b, k):
            c = 1 - b ** k
            return tmap(lambda x: x / c.astype(x.dtype), tree)

        if self.nesterov:
            mu_hat = tmap(lambda m, g: b1 * m + (1 - b1) * g,
                          corrected(mu, b1, t + 1), corrected(g, b1, t))
        else:
            mu_hat = corrected(mu, b1, t)
        nu_hat = corrected(nu, b2, t)
        u = tmap(lambda m, n: m / (jnp.sqrt(n + eps_root) + eps), mu_hat, nu_hat)
        return u, {"mu": mu, "nu": nu}


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
                  mu_dtype: Any = None, *, nesterov: bool = False) -> Optimizer:
    """Adam's scaling (Kingma & Ba): bias-corrected first moment over the root of the second.

    ``nesterov=True`` is NAdam (Dozat 2016), as optax writes it.
    """
    return transform(_ScaleByAdam(bool(nesterov)),
                     {"b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root},
                     {"b1": FRACTION, "b2": FRACTION, "eps": AT_LEAST_0, "eps_root": AT_LEAST_0},
                     "scale_by_adam", {"mu": 0.0, "nu": 0.0}, {"mu": mu_dtype})


# ---------------------------------------------------------- weight decay --
class _Static:
    """Wraps a mask so the update stays hashable; compares by identity."""

    def __init__(self, value: Any):
        self.value = value


@dataclass(frozen=True)
class _AddDecayedWeights(Transform):
    schedule: Callable | None = None  # None: the hyperparameter weight_decay
    mask: _Static | None = None

    def rule(self, g, state, params):
        if params is None:
            raise ValueError("add_decayed_weights.update: needs the params. "
                             "Fix: call opt.update(grads, state, params).")
        wd = state.hparams["weight_decay"] if self.schedule is None else \
            self.schedule(state.hparams, _step(state))
        if self.mask is None:
            return tmap(lambda g, p: g + wd * p, g, params), {}
        m = self.mask.value(params) if callable(self.mask.value) else self.mask.value
        # the mask may be a prefix of the params' tree: map over it, then inside
        return tmap(lambda on, g, p: tmap(lambda g, p: g + wd * p, g, p) if on else g,
                    m, g, params), {}


def add_decayed_weights(weight_decay: float | Schedule = 0.0, mask: Any = None) -> Optimizer:
    """``u = g + weight_decay * w``: decoupled weight decay, when it comes before the lr.

    ``mask``: a tree of booleans shaped like the params (or a function of the params
    returning one); decay applies where it is True.
    """
    where = "add_decayed_weights"
    m = None if mask is None else _Static(mask)
    if isinstance(weight_decay, Schedule) or callable(weight_decay):
        s = as_schedule(weight_decay, where)
        return transform(_AddDecayedWeights(s.rule, m), s.hparams, {}, where)
    return transform(_AddDecayedWeights(None, m), {"weight_decay": weight_decay},
                     {"weight_decay": AT_LEAST_0}, where)


# --------------------------------------------------------------- clipping --
@dataclass(frozen=True)
class _Clip(Transform):
    def rule(self, g, state, params):
        d = state.hparams["max_delta"]
        return tmap(lambda g: jnp.clip(g, min=-d, max=d), g), {}


def clip(max_delta: float) -> Optimizer:
    """Clip every element of the updates to ``[-max_delta, max_delta]``."""
    return transform(_Clip(), {"max_delta": max_delta}, {"max_delta": AT_LEAST_0}, "clip")


@dataclass(frozen=True)
class _ClipByGlobalNorm(Transform):
    def rule(self, g, state, params):
        norm, c = global_norm(g), state.hparams["max_norm"]
        safe = jnp.where(norm > 0, norm, 1)

        def clipped(t):
            return jnp.where(norm < c, t, jnp.where(norm > 0, (t / safe.astype(t.dtype)) * c, 0))

        return tmap(clipped, g), {}


def clip_by_global_norm(max_norm: float) -> Optimizer:
    """Scale the whole update tree down to global norm ``max_norm`` when it is larger.

    As optax, ``max_norm=0`` zeroes every update (optax gives NaN for an all-zero
    update there; this gives 0). Use it first: ``chain(clip_by_global_norm(1.0), adam(1e-3))``.
    """
    return transform(_ClipByGlobalNorm(), {"max_norm": max_norm}, {"max_norm": AT_LEAST_0},
                     "clip_by_global_norm")
