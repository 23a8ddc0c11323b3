"""Wrappers around a whole optimizer: ``inject_hyperparams`` and ``MultiSteps`` (optax's),
with ``MultiSteps``'s skip functions."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.optim.base import (ChainState, InjectHyperparamsState, MultiStepsState, Optimizer,
                               OptState, PyTree, float_dtype, is_transform, tmap)
from funcnn.optim.schedules import Schedule, as_schedule


def _copy_hparams(state: Any, fresh: Any) -> Any:
    """``state`` with every hyperparameter taken from ``fresh`` (same structure)."""
    if isinstance(state, OptState):
        return state._replace(hparams={k: jnp.asarray(fresh.hparams[k], v.dtype)
                                       for k, v in state.hparams.items()})
    if isinstance(state, ChainState):
        return ChainState(tuple(_copy_hparams(s, f) for s, f in zip(state.states, fresh.states)))
    if isinstance(state, InjectHyperparamsState):
        return state._replace(hyperparams={k: jnp.asarray(fresh.hyperparams[k], v.dtype)
                                           for k, v in state.hyperparams.items()},
                              inner_state=_copy_hparams(state.inner_state, fresh.inner_state))
    if isinstance(state, MultiStepsState):
        return state._replace(inner_opt_state=_copy_hparams(state.inner_opt_state,
                                                            fresh.inner_opt_state))
    return state


def _as_hparam(value: Any, dtype: Any) -> jax.Array:
    """Floats in ``dtype``; integers stay integers (step counts), as optax does."""
    a = jnp.asarray(value)
    return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a


@dataclass(frozen=True, eq=False)  # identity: one compiled step per injected optimizer
class _Inject:
    factory: Callable[..., Any]
    static: dict[str, Any]  # keywords passed to the factory as they are
    schedules: dict[str, Schedule]  # keywords whose value is a function of the step
    dtype: Any

    def build(self, hparams: dict[str, Any]) -> Any:
        return self.factory(**self.static, **hparams)

    def __call__(self, updates: PyTree, state: InjectHyperparamsState,
                 params: PyTree | None = None) -> tuple[PyTree, InjectHyperparamsState]:
        if not isinstance(state, InjectHyperparamsState):
            raise TypeError("inject_hyperparams.update: expected the state made by its init, got "
                            f"{type(state).__name__}.")
        h = dict(state.hyperparams)
        dtype = self.dtype or float_dtype(updates, "inject_hyperparams")
        for k, s in self.schedules.items():
            h[k] = _as_hparam(s(state.count), dtype)
        inner = self.build(h)
        # The factory's values reach the inner transforms' states through a fresh init:
        # under jit only its hyperparameters survive, its buffers are never computed.
        inner_state = _copy_hparams(state.inner_state, inner.init(updates))
        updates, inner_state = inner.update(updates, inner_state, params)
        return updates, InjectHyperparamsState(state.count + 1, h, inner_state)


def inject_hyperparams(inner_factory: Callable[..., Any], static_args: str | Iterable[str] = (),
                       hyperparam_dtype: Any = None) -> Callable[..., Optimizer]:
    """Make an optimizer's keyword arguments visible and settable in its state, as optax.

    ``opt = inject_hyperparams(optim.adam)(learning_rate=optim.cosine_decay_schedule(0.1,
    1000))``: ``state.hyperparams["learning_rate"]`` holds the value the last update
    used; a number may be changed between steps (``set_hyperparams`` or a new dict).
    Numbers become arrays (floats in ``hyperparam_dtype``, default the params' dtype),
    functions of the step are evaluated at every update, booleans, ``None`` and
    ``static_args`` are passed as they are.

    Every funcnn optimizer already keeps its hyperparameters in its state; this wrapper
    is for code written against optax's ``state.hyperparams`` and for factories of
    your own whose keywords are not the transforms' names.
    """
    static_args = {static_args} if isinstance(static_args, str) else set(static_args)
    sig = inspect.signature(inner_factory)
    if unknown := static_args - set(sig.parameters):
        raise ValueError(f"inject_hyperparams: static_args {sorted(unknown)} are not keywords "
                         f"of {getattr(inner_factory, '__name__', inner_factory)}; it has "
                         f"{list(sig.parameters)}.")

    def wrapped(*args: Any, **kwargs: Any) -> Optimizer:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        static, schedules, numeric = {}, {}, {}
        for name, value in bound.arguments.items():
            if name in static_args or isinstance(value, bool) or value is None:
                static[name] = value
            elif isinstance(value, Schedule) or callable(value):
                schedules[name] = as_schedule(value, "inject_hyperparams")
            elif isinstance(value, (int, float, jax.Array, np.ndarray, np.generic)):
                numeric[name] = value
            else:
                static[name] = value
        update = _Inject(inner_factory, static, schedules, hyperparam_dtype)

        def init(params: PyTree) -> InjectHyperparamsState:
            dtype = hyperparam_dtype or float_dtype(params, "inject_hyperparams")
            h = {k: _as_hparam(v, dtype) for k, v in numeric.items()}
            h.update({k: _as_hparam(s(0), dtype) for k, s in schedules.items()})
            return InjectHyperparamsState(jnp.zeros((), jnp.int32), h,
                                          update.build(h).init(params))

        return Optimizer(init, update)

    return wrapped


def skip_not_finite(updates: PyTree, gradient_step: jax.Array, params: PyTree | None
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """For ``MultiSteps(should_skip_update_fn=)``: skip a gradient with a NaN or inf in it.

    Returns ``(skip, {"should_skip": skip, "num_not_finite": count})`` as optax's does
    (the count always int32 here, so a state's dtypes do not depend on x64).
    """
    count = sum(jnp.sum(~jnp.isfinite(g)) for g in jax.tree.leaves(updates))
    count = jnp.asarray(count, jnp.int32)
    return count > 0, {"should_skip": count > 0, "num_not_finite": count}


def skip_large_updates(updates: PyTree, gradient_step: jax.Array, params: PyTree | None,
                       max_squared_norm: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """For ``MultiSteps(should_skip_update_fn=functools.partial(skip_large_updates,
    max_squared_norm=m))``: skip a gradient whose squared global norm is not below ``m``
    (a NaN norm included).

    Returns ``(skip, {"should_skip": skip, "norm_squared": ||g||^2})`` (optax's).
    """
    norm_sq = sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(updates))
    skip = jnp.logical_not(norm_sq < max_squared_norm)
    return skip, {"should_skip": skip, "norm_squared": norm_sq}


class MultiSteps:
    """Accumulate gradients over ``every_k_schedule`` calls, then apply one inner update.

    optax's ``MultiSteps``: between inner updates the returned updates are zero; the
    inner optimizer sees the mean of the k gradients (their sum with
    ``use_grad_mean=False``). Training with batch B and k steps equals training with
    batch k*B (for a loss that averages over the batch) at a k-th of the memory.
    ``every_k_schedule`` is an int or a function of the inner update count.

    ``should_skip_update_fn(updates, gradient_step, params) -> (skip, skip_state)``
    (optax's): when ``skip`` (a boolean scalar) is true, this call's gradient is left
    out: the updates are zero, the accumulator, the counts and the inner state stay as
    they were, and only ``state.skip_state`` changes. :func:`skip_not_finite` drops
    gradients with a NaN or inf in them, ``functools.partial(skip_large_updates,
    max_squared_norm=m)`` those with ``||g||^2 >= m``; what they report (whether they
    skipped, the count or the squared norm) is ``state.skip_state``. In ``fit`` a NaN
    or inf loss still stops training (its guard checks the loss before the optimizer
    runs), so there ``skip_not_finite`` catches gradients that are not finite under a
    finite loss; in a loop of your own it catches every one.
    """

    def __init__(self, opt: Any, every_k_schedule: int | Callable[[jax.Array], jax.Array],
                 use_grad_mean: bool = True, should_skip_update_fn: Callable | None = None,
                 accumulator_dtype: Any = jnp.float32):
        if not is_transform(opt):
            raise TypeError(f"MultiSteps: opt must be an optimizer (init and update), got "
                            f"{type(opt).__name__}.")
        if should_skip_update_fn is not None and not callable(should_skip_update_fn):
            raise TypeError(f"MultiSteps: should_skip_update_fn must be a function "
                            f"(updates, gradient_step, params) -> (skip, skip_state), got "
                            f"{type(should_skip_update_fn).__name__}.")
        if isinstance(every_k_schedule, (bool, float)) or (
                isinstance(every_k_schedule, int) and every_k_schedule < 1):
            raise ValueError(f"MultiSteps: every_k_schedule must be an int >= 1 or a function of "
                             f"the step, got {every_k_schedule!r}.")
        self._opt = opt
        self._every_k = every_k_schedule
        self._use_grad_mean = bool(use_grad_mean)
        self._acc_dtype = accumulator_dtype
        self._should_skip = should_skip_update_fn

    @property
    def inner_opt(self) -> Any:
        return self._opt

    def _k(self, gradient_step: jax.Array) -> Any:
        return self._every_k(gradient_step) if callable(self._every_k) else self._every_k

    def init(self, params: PyTree) -> MultiStepsState:
        zero = jnp.zeros((), jnp.int32)
        acc = tmap(lambda p: jnp.zeros(jnp.shape(p), self._acc_dtype or jnp.asarray(p).dtype),
                   params)
        skip_state = ()
        if self._should_skip is not None:
            _, skip_state = self._skip(tmap(jnp.zeros_like, params), zero, params)
        return MultiStepsState(zero, zero, self._opt.init(params), acc, skip_state)

    def _skip(self, updates: PyTree, gradient_step: jax.Array, params: PyTree | None
              ) -> tuple[jax.Array, PyTree]:
        skip, skip_state = self._should_skip(updates, gradient_step, params)
        skip = jnp.asarray(skip)
        if skip.dtype != jnp.bool_ or skip.shape != ():
            raise ValueError(f"MultiSteps: should_skip_update_fn must return a boolean "
                             f"scalar first; it returned dtype {skip.dtype}, shape "
                             f"{skip.shape}.")
        return skip, skip_state

    def update(self, updates: PyTree, state: MultiStepsState, params: PyTree | None = None
               ) -> tuple[PyTree, MultiStepsState]:
        if not isinstance(state, MultiStepsState):
            raise TypeError("MultiSteps.update: expected the state made by its init, got "
                            f"{type(state).__name__}.")
        k = self._k(state.gradient_step)
        n = state.mini_step
        if self._use_grad_mean:  # Welford's running mean, as optax
            acc = tmap(lambda g, a: a + (g - a) / (n + 1), updates, state.acc_grads)
        else:
            acc = tmap(lambda g, a: g + a, updates, state.acc_grads)
        final, inner = self._opt.update(tmap(lambda a, g: a.astype(g.dtype), acc, updates),
                                        state.inner_opt_state, params)
        emit = n == k - 1
        new = MultiStepsState(
            mini_step=(n + 1) % k,
            gradient_step=jnp.where(emit, state.gradient_step + 1, state.gradient_step),
            inner_opt_state=tmap(lambda old, new: jnp.where(emit, new, old).astype(old.dtype),
                                 state.inner_opt_state, inner),
            acc_grads=tmap(lambda a, old: ((1 - emit) * a).astype(old.dtype), acc,
                           state.acc_grads),
            skip_state=state.skip_state,
        )
        out = tmap(lambda u: emit * u, final)
        if self._should_skip is None:
            return out, new
        skip, skip_state = self._skip(updates, state.gradient_step, params)
        # A skipped gradient changes nothing but what the skip function reports.
        kept = state._replace(skip_state=skip_state)
        new = new._replace(skip_state=skip_state)
        return (tmap(lambda u: jnp.where(skip, jnp.zeros_like(u), u), out),
                tmap(lambda a, b: jnp.where(skip, a, b), kept, new))

    def has_updated(self, state: MultiStepsState) -> jax.Array:
        """True right after an inner update was applied."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> Optimizer:
        """The plain ``Optimizer(init, update)`` pair."""
        return Optimizer(self.init, self.update)
