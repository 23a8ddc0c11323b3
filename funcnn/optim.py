"""Hand-written optimizers, learning-rate schedules, gradient clipping and chain.

An optimizer is a pair of pure functions, shaped like optax's:

    opt = optim.adam(learning_rate=1e-3)
    state = opt.init(params)                          # buffers + hyperparameters
    updates, state = opt.update(grads, state, params)
    params = optim.apply_updates(params, updates)     # w <- w + u, dtype kept

Everything works on any pytree of float arrays (frozen dataclasses, tuples, dicts).

**Hyperparameters live in the state as arrays** (``state.hparams``, one float
array per name, in the params' float dtype), not in the update function. So:

* ``optim.set_hyperparams(state, learning_rate=0.01)`` changes a value between
  two calls of a jitted step without retracing it;
* ``opt.update`` is a frozen dataclass that holds only the *structure* of the
  optimizer (its kind, convention, schedule kind), so ``adam(0.01).update ==
  adam(0.02).update`` and one compiled step serves both;
* ``jax.vmap`` over a batch of learning rates trains many models at once.

Counting: ``state.count`` is the number of updates already applied (NNFS's
``iterations``); the update in progress uses ``t = count`` for schedules and
``count + 1`` for Adam's bias correction.

Where the references disagree (funcnn default = optax; ``convention="nnfs"``
gives the NNFS book forms; ``u`` is the update added to the weights)::

    rule        optax (default)                     NNFS book (convention="nnfs")
    ----------  ----------------------------------  ------------------------------------
    momentum    v = mu*v + g;      u = -lr*v        v = mu*v - lr*g;  u = v
    Nesterov    u = -lr*(g + mu*v_new)              u = mu*v_new - lr*g
    Adagrad     c0 = 0.1; c += g^2                  c0 = 0; c += g^2
                u = -lr*g/sqrt(c + eps) (0 if c=0)  u = -lr*g/(sqrt(c) + eps)
    RMSprop     smoothing named `decay` (here rho)  rho; c = rho*c + (1-rho)*g^2
                u = -lr*g/sqrt(c + eps), eps 1e-8   u = -lr*g/(sqrt(c) + eps), eps 1e-7
    Adam        u = -lr*m_hat/(sqrt(v_hat) + eps)   same formula, eps 1e-7
                eps 1e-8
    lr decay    schedules (functions of t)          lr_t = lr/(1 + decay*t)

The two momentum forms agree while lr is constant (v_nnfs = -lr*v_optax) and
differ once it changes. Nielsen (``network.py``) uses plain SGD on the batch-mean
gradient, and L2 regularisation as ``w <- (1 - eta*lambda/n)*w - eta*g``; here L2
belongs in the loss, and ``adamw`` gives decoupled decay ``u = -lr*(adam + wd*w)``
as optax and PyTorch do.

Name clash: optax's ``rmsprop(decay=...)`` is the smoothing constant; here it is
``rho`` (the NNFS name) and ``decay`` is always NNFS's learning-rate decay.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Union

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


# --------------------------------------------------------------- schedules --
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


@dataclass(frozen=True)
class _ClipByGlobalNorm(_Update):
    def rule(self, grads, slots, params, h, lr, t):
        norm, max_norm = global_norm(grads), h["max_norm"]
        scale = jnp.where(norm < max_norm, 1, max_norm / norm)
        return _tmap(lambda g: g * scale, grads), {}


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


# ------------------------------------------------------- clipping, chain --
def global_norm(tree: PyTree) -> Array:
    """``sqrt(sum of squares of every element of every leaf)``."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def clip_by_global_norm(max_norm: float) -> Optimizer:
    """Scale the whole gradient tree by ``max_norm / global_norm`` when that norm exceeds it.

    Use it first in a chain: ``chain(clip_by_global_norm(1.0), adam(1e-3))``.
    """
    return _optimizer(_ClipByGlobalNorm(None), {"max_norm": max_norm}, {}, "clip_by_global_norm")


@dataclass(frozen=True)
class _Chain:
    links: tuple  # the update functions, applied in order

    def __call__(self, grads: PyTree, state: ChainState,
                 params: PyTree | None = None) -> tuple[PyTree, ChainState]:
        if not isinstance(state, ChainState) or len(state.states) != len(self.links):
            raise TypeError(f"chain.update: expected the ChainState of {len(self.links)} links "
                            f"made by this chain's init, got {type(state).__name__}.")
        new_states = []
        for update, s in zip(self.links, state.states):
            grads, s = update(grads, s, params)
            new_states.append(s)
        return grads, ChainState(tuple(new_states))


def chain(*optimizers: Optimizer) -> Optimizer:
    """Apply optimizers in sequence, each transforming the previous one's output."""
    if not optimizers or not all(isinstance(o, Optimizer) for o in optimizers):
        raise TypeError(f"chain: expected one or more Optimizers, e.g. chain(clip_by_global_norm"
                        f"(1.0), adam()), got {[type(o).__name__ for o in optimizers]}.")
    inits = tuple(o.init for o in optimizers)
    return Optimizer(lambda params: ChainState(tuple(i(params) for i in inits)),
                     _Chain(tuple(o.update for o in optimizers)))


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """``params + updates`` leaf by leaf, each leaf keeping its dtype."""
    if jax.tree.structure(params) != jax.tree.structure(updates):
        raise ValueError(f"apply_updates: params have structure {jax.tree.structure(params)} but "
                         f"updates have {jax.tree.structure(updates)}; pass matching pytrees.")
    return _tmap(lambda p, u: (p + u).astype(jnp.asarray(p).dtype), params, updates)


# -------------------------------------------------------- hyperparameters --
def _chain_names(state: ChainState) -> dict[str, tuple[int, str]]:
    """Public name -> (link index, name inside that link).

    Rule: a name found in exactly one link is public as is; a name found in
    several links (or already a path) is public only as ``"i/name"``, where i
    is the link's position. ``"i/name"`` is accepted for every name.
    """
    per_link = [list(hyperparams(s)) for s in state.states]
    counts = Counter(n for names in per_link for n in names)
    return {(n if counts[n] == 1 and "/" not in n else f"{i}/{n}"): (i, n)
            for i, names in enumerate(per_link) for n in names}


def hyperparams(state: OptState | ChainState) -> dict[str, Array]:
    """The hyperparameters held in a state, by name (see ``_chain_names`` for chains)."""
    if isinstance(state, OptState):
        return dict(state.hparams)
    if isinstance(state, ChainState):
        return {pub: hyperparams(state.states[i])[n] for pub, (i, n) in _chain_names(state).items()}
    raise TypeError(f"hyperparams: expected an optimizer state, got {type(state).__name__}.")


def set_hyperparams(state: OptState | ChainState, **values: Any) -> OptState | ChainState:
    """A copy of ``state`` with new hyperparameter values (same dtype and shape).

    In a chain, names shared by several links must be given as ``"i/name"``:
    ``set_hyperparams(state, **{"1/learning_rate": 0.1})``.
    """
    if isinstance(state, OptState):
        if unknown := sorted(set(values) - set(state.hparams)):
            raise ValueError(f"set_hyperparams: unknown hyperparameter(s) {unknown}; this "
                             f"optimizer has {sorted(state.hparams)}.")
        _validate(values, "set_hyperparams")
        new = dict(state.hparams)
        for name, value in values.items():
            new[name] = jnp.asarray(value, dtype=new[name].dtype)
            if new[name].shape != state.hparams[name].shape:
                raise ValueError(f"set_hyperparams: {name} must have shape "
                                 f"{state.hparams[name].shape}, got {new[name].shape}. "
                                 "To try many values at once, jax.vmap over set_hyperparams.")
        return state._replace(hparams=new)
    if not isinstance(state, ChainState):
        raise TypeError("set_hyperparams: expected an optimizer state, got "
                        f"{type(state).__name__}.")
    public = _chain_names(state)
    per_link: list[dict[str, Any]] = [{} for _ in state.states]
    for key, value in values.items():
        head, _, rest = key.partition("/")
        if key in public:
            i, name = public[key]
        elif rest and head.isdigit() and int(head) < len(state.states):
            i, name = int(head), rest
        else:
            paths = sorted(p for p in public if p.split("/")[-1] == key)
            hint = f" '{key}' is in several links; pass one of {paths}." if paths else ""
            raise ValueError(f"set_hyperparams: unknown hyperparameter '{key}' in this chain; "
                             f"known: {sorted(public)}.{hint}")
        per_link[i][name] = value
    return ChainState(tuple(set_hyperparams(s, **v) if v else s
                            for s, v in zip(state.states, per_link)))


def learning_rate(update: Callable, state: OptState | ChainState) -> Array | None:
    """The learning rate the next update will use (the first in a chain), for logging.

    ``update`` is ``opt.update``; returns None when no link has a learning rate.
    """
    if isinstance(update, _Chain):
        for link, s in zip(update.links, state.states):
            lr = learning_rate(link, s)
            if lr is not None:
                return lr
        return None
    if not isinstance(update, _Update) or update.schedule is None:
        return None
    h = state.hparams
    return update.schedule(h, state.count.astype(next(iter(h.values())).dtype))
