"""Gradient clipping, ``chain`` and ``apply_updates``."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from funcnn.optim.base import Array, ChainState, Optimizer, PyTree, _tmap, _Update
from funcnn.optim.optimizers import _optimizer


def global_norm(tree: PyTree) -> Array:
    """``sqrt(sum of squares of every element of every leaf)``."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


@dataclass(frozen=True)
class _ClipByGlobalNorm(_Update):
    def rule(self, grads, slots, params, h, lr, t):
        norm, max_norm = global_norm(grads), h["max_norm"]
        scale = jnp.where(norm < max_norm, 1, max_norm / norm)
        return _tmap(lambda g: g * scale, grads), {}


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
