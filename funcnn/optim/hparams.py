"""Reading and changing the hyperparameters held in an optimizer state."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import jax.numpy as jnp

from funcnn.optim.base import Array, ChainState, OptState, _Update, _validate
from funcnn.optim.transforms import _Chain


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
