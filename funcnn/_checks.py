"""Small helpers for checking inputs at the boundary (shared by every module)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np


def concrete(x: Any) -> np.ndarray | None:
    """``x`` as a numpy array when its value is known now, ``None`` inside a trace.

    Inside ``jit`` or ``vmap`` values are abstract tracers: only shapes and dtypes can be
    checked there, which is why funcnn checks values at its public boundary.
    """
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError,
            TypeError):
        return None


def tree_mismatch(expected: Any, given: Any) -> str | None:
    """Where ``given`` differs from ``expected`` in structure or leaf shapes, as text
    naming the first differing leaf (``None`` when they match). Leaves may be arrays,
    tracers or ``jax.ShapeDtypeStruct``; only shapes are compared, never values, so
    this works inside ``jit``."""
    want = jax.tree_util.tree_flatten_with_path(expected)[0]
    got = jax.tree_util.tree_flatten_with_path(given)[0]
    for (wp, wl), (gp, gl) in zip(want, got):
        if wp != gp:
            return (f"expected a leaf at {jax.tree_util.keystr(wp) or '(root)'}, found one at "
                    f"{jax.tree_util.keystr(gp) or '(root)'}")
        ws, gs = tuple(np.shape(wl)), tuple(np.shape(gl))
        if ws != gs:
            return f"{jax.tree_util.keystr(wp) or '(root)'} has shape {gs}, expected {ws}"
    if len(want) != len(got):
        extra = (got if len(got) > len(want) else want)[min(len(want), len(got))][0]
        which = "unexpected leaf" if len(got) > len(want) else "missing leaf"
        return f"{which} at {jax.tree_util.keystr(extra) or '(root)'}"
    if jax.tree.structure(expected) != jax.tree.structure(given):
        return (f"the tree's node types differ: expected {jax.tree.structure(expected)}, got "
                f"{jax.tree.structure(given)}")
    return None


def keyword_hints(prefix: str, spellings: Mapping[str, str],
                  special: Callable[[str, str], str | None] | None = None) -> Callable:
    """A decorator: an unknown keyword argument of the function becomes a TypeError
    that says what to write instead: the hint ``spellings[keyword]`` (for another
    library's name for one of ours, e.g. optax's ``lr`` or Flax's ``strides``), ``special(name,
    keyword)`` when it gives one, or else the function's keywords. ``prefix`` goes
    before the function's name in the message (``"optim."``, ``"nn."``)."""
    def decorate(fn: Callable) -> Callable:
        params = inspect.signature(fn).parameters

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for k in kwargs:
                if k in params:
                    continue
                hint = special(fn.__name__, k) if special is not None else None
                if hint is None:
                    hint = spellings.get(k, f"its keywords are {list(params)}")
                raise TypeError(f"{prefix}{fn.__name__}() got an unexpected keyword {k!r}: "
                                f"{hint}.")
            return fn(*args, **kwargs)
        return wrapper
    return decorate
