"""``chain`` (transforms in sequence, to any depth) and ``apply_updates``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from funcnn.optim.base import ChainState, Optimizer, PyTree, check_state_leaves, is_transform


@dataclass(frozen=True)
class _Chain:
    links: tuple  # the links' update functions, applied in order

    def __call__(self, updates: PyTree, state: ChainState,
                 params: PyTree | None = None) -> tuple[PyTree, ChainState]:
        if not isinstance(state, ChainState) or len(state.states) != len(self.links):
            raise TypeError(f"chain.update: expected the ChainState of {len(self.links)} links "
                            f"made by this chain's init, got {type(state).__name__}.")
        new_states = []
        for update, s in zip(self.links, state.states):
            updates, s = update(updates, s, params)
            new_states.append(s)
        return updates, ChainState(tuple(new_states))


def chain(*transforms: Any) -> Optimizer:
    """Apply transforms in sequence, each to the previous one's output.

    A link may itself be a chain (``adam(...)`` is one), a ``MultiSteps``, or an optax
    transform; optax's ``chain`` takes funcnn's transforms the same way. Every link's
    ``init`` must return a pytree of arrays (checked when the chain is initialised).
    """
    if not transforms or not all(is_transform(t) for t in transforms):
        raise TypeError(f"chain: expected one or more transforms with init and update, e.g. "
                        f"chain(clip_by_global_norm(1.0), adam(1e-3)), got "
                        f"{[type(t).__name__ for t in transforms]}.")
    inits = tuple(t.init for t in transforms)

    def init(params: PyTree) -> ChainState:
        state = ChainState(tuple(i(params) for i in inits))
        check_state_leaves(state, "chain.init")
        return state

    return Optimizer(init, _Chain(tuple(t.update for t in transforms)))


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """``params + updates`` leaf by leaf, each leaf keeping its dtype."""
    if jax.tree.structure(params) != jax.tree.structure(updates):
        raise ValueError(f"apply_updates: params have structure {jax.tree.structure(params)} but "
                         f"updates have {jax.tree.structure(updates)}; pass matching pytrees.")
    return jax.tree.map(lambda p, u: (p + u).astype(jnp.asarray(p).dtype), params, updates)
