"""Reading and changing the hyperparameters held in an optimizer state, at any depth.

Every funcnn transform keeps its hyperparameters in its own state. A chain's state
holds its links' states, maybe chains themselves, so each hyperparameter has a *path*:
the link indices down to it and its name, ``"1/0/decay"``. Its public name is the
bare name (``"decay"``) when only one link has it, else the path. The path is always
accepted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import jax.numpy as jnp

from funcnn.optim.base import (AT_LEAST_0, FRACTION, Array, ChainState, InjectHyperparamsState,
                               MultiStepsState, OptState, validate)
from funcnn.optim.transforms import _ScaleByLearningRate, _ScaleBySchedule

Path = tuple[int, ...]
# Ranges checked by set_hyperparams, by name (each transform checks its own at construction).
_CHECKS = {**dict.fromkeys(["b1", "b2", "momentum"], FRACTION),
           **dict.fromkeys(["learning_rate", "eps", "eps_root", "weight_decay", "max_norm",
                            "max_delta", "decay"], AT_LEAST_0)}


def _holders(state: Any, path: Path = ()) -> list[tuple[Path, dict[str, Array]]]:
    """Every (path, hparams dict) in ``state``, depth first."""
    if isinstance(state, OptState):
        return [(path, state.hparams)]
    if isinstance(state, InjectHyperparamsState):
        return [(path, state.hyperparams)]
    if isinstance(state, ChainState):
        return [h for i, s in enumerate(state.states) for h in _holders(s, path + (i,))]
    if isinstance(state, MultiStepsState):
        return _holders(state.inner_opt_state, path)
    return []  # a state of optax's or a user's own transform: nothing to name


def _public(state: Any) -> dict[str, tuple[Path, str]]:
    """Public name -> (path, name inside its holder); see the module docstring."""
    holders = _holders(state)
    counts = Counter(n for _, h in holders for n in h)
    return {(n if counts[n] == 1 and "/" not in n else "/".join(map(str, p + (n,)))): (p, n)
            for p, h in holders for n in h}


def hyperparams(state: Any) -> dict[str, Array]:
    """The hyperparameters held in an optimizer state, by public name."""
    if not isinstance(state, (OptState, ChainState, InjectHyperparamsState, MultiStepsState)):
        raise TypeError(f"hyperparams: expected an optimizer state, got {type(state).__name__}.")
    holders = dict(_holders(state))
    return {pub: holders[p][n] for pub, (p, n) in _public(state).items()}


def _set(state: Any, path: Path, values: dict[str, Any]) -> Any:
    """A copy of ``state`` with ``values`` set in the holder at ``path``."""
    if isinstance(state, MultiStepsState):
        return state._replace(inner_opt_state=_set(state.inner_opt_state, path, values))
    if path:
        i, rest = path[0], path[1:]
        return ChainState(tuple(_set(s, rest, values) if j == i else s
                                for j, s in enumerate(state.states)))
    old = state.hparams if isinstance(state, OptState) else state.hyperparams
    new = dict(old)
    for name, value in values.items():
        new[name] = jnp.asarray(value, dtype=old[name].dtype)
        if new[name].shape != old[name].shape:
            raise ValueError(f"set_hyperparams: {name} must have shape {old[name].shape}, got "
                             f"{new[name].shape}. To try many values at once, jax.vmap over "
                             "set_hyperparams.")
    if isinstance(state, OptState):
        return state._replace(hparams=new)
    return state._replace(hyperparams=new)


def set_hyperparams(state: Any, **values: Any) -> Any:
    """A copy of ``state`` with new hyperparameter values (same dtype and shape).

    A name held by several links is given as its path:
    ``set_hyperparams(state, **{"1/decay": 1e-3})``.
    """
    if not isinstance(state, (OptState, ChainState, InjectHyperparamsState, MultiStepsState)):
        raise TypeError("set_hyperparams: expected an optimizer state, got "
                        f"{type(state).__name__}.")
    public = _public(state)
    by_path: dict[Path, dict[str, Any]] = {}
    for key, value in values.items():
        full = {"/".join(map(str, p + (n,))): (p, n) for p, n in public.values()}
        if key in public or key in full:
            path, name = public.get(key) or full[key]
        else:
            paths = sorted(p for p in public if p.split("/")[-1] == key)
            hint = f" '{key}' is held by several links; pass one of {paths}." if paths else ""
            raise ValueError(f"set_hyperparams: unknown hyperparameter '{key}'; this state "
                             f"has {sorted(public)}.{hint}")
        validate({name: value}, _CHECKS, "set_hyperparams")
        by_path.setdefault(path, {})[name] = value
    for path, vals in by_path.items():
        state = _set(state, path, vals)
    return state


def learning_rate(update: Callable, state: Any) -> Array | None:
    """The learning rate the next update will use (the first found in a chain), for logging.

    ``update`` is ``opt.update``; None when nothing in it is a learning rate.
    """
    from funcnn.optim.combine import _Chain
    from funcnn.optim.wrappers import MultiSteps, _Inject

    if isinstance(update, _Chain):
        for link, s in zip(update.links, state.states):
            lr = learning_rate(link, s)
            if lr is not None:
                return lr
        return None
    if isinstance(update, _Inject):
        return state.hyperparams.get("learning_rate")
    if getattr(update, "__self__", None) is not None and isinstance(update.__self__, MultiSteps):
        return learning_rate(update.__self__.inner_opt.update, state.inner_opt_state)
    if isinstance(update, _ScaleByLearningRate):
        return state.hparams["learning_rate"]
    if isinstance(update, _ScaleBySchedule) and update.sign < 0:
        h = state.hparams
        step = state.count.astype(next(iter(h.values())).dtype) if h else state.count
        return update.schedule(h, step)
    return None

