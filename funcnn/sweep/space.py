"""Describing a sweep: a :class:`Space` of configurations and how to build one.

:func:`grid`, :func:`zipped` and :func:`configs` list configurations; :func:`random`
draws them from :func:`uniform`, :func:`log_uniform`, :func:`randint` and
:func:`choice`; ``a * b`` and ``a + b`` combine spaces.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._common import _py

Array = jax.Array


def _column(name: str, values: Any, where: str) -> np.ndarray:
    """``values`` as a numeric array with one entry per configuration (leading axis)."""
    if isinstance(values, (str, bytes, Mapping, set, frozenset)) or hasattr(values, "__next__"):
        raise TypeError(f"{where}: {name} must be a sequence of numbers (a list or an array, "
                        f"in order), e.g. [0.001, 0.01]; got {values!r}")
    try:
        arr = np.asarray(values)
    except ValueError as e:  # ragged lists
        raise ValueError(f"{where}: {name} must be a sequence of numbers of one shape; "
                         f"got {values!r} ({e})") from None
    if arr.ndim == 0:
        raise ValueError(f"{where}: {name} must be a sequence of values (one per "
                         f"configuration), got the single value {values!r}. Fix: "
                         f"{name}=[{values!r}]")
    if arr.shape[0] == 0:
        raise ValueError(f"{where}: {name} has no values; give at least one, e.g. "
                         f"{name}=[0.01]")
    if np.issubdtype(arr.dtype, np.complexfloating) or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{where}: {name} must hold numbers; got dtype {arr.dtype} from "
                        f"{values!r}")
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class Space:
    """A finite list of configurations: ``columns[name][i]`` is configuration ``i``'s value.

    Build one with :func:`grid`, :func:`configs`, :func:`zipped` or :func:`random`, and
    combine: ``a * b`` is every configuration of ``a`` with every one of ``b`` (``a``
    varying slowest), ``a + b`` the configurations of ``a`` then those of ``b`` (same
    names). ``grid_axes`` remembers the axes of a pure grid, for heatmaps.
    """

    columns: Mapping[str, np.ndarray]
    grid_axes: tuple[tuple[str, np.ndarray], ...] | None = None

    def __post_init__(self):
        if not self.columns:
            raise ValueError("sweep: the space is empty (no names); give at least one, "
                             "e.g. sweep.grid(learning_rate=[0.01, 0.1])")
        lengths = {name: len(v) for name, v in self.columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"sweep: every name needs one value per configuration; got "
                             f"lengths {lengths}")
        if min(lengths.values()) == 0:
            raise ValueError("sweep: the space has no configurations")

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    @property
    def names(self) -> tuple[str, ...]:
        """The swept names, in order."""
        return tuple(self.columns)

    def rows(self) -> list[dict[str, Any]]:
        """The configurations as a list of ``{name: value}`` dicts."""
        return [{k: _py(v[i]) for k, v in self.columns.items()} for i in range(len(self))]

    def __mul__(self, other: Space) -> Space:
        if not isinstance(other, Space):
            return NotImplemented
        if clash := sorted(set(self.names) & set(other.names)):
            raise ValueError(f"sweep: cannot take the product of two spaces that both "
                             f"sweep {clash}; each name may appear in one factor only")
        n, m = len(self), len(other)
        cols = {k: np.repeat(v, m, axis=0) for k, v in self.columns.items()}
        cols.update({k: np.tile(v, (n,) + (1,) * (v.ndim - 1))
                     for k, v in other.columns.items()})
        axes = (self.grid_axes + other.grid_axes
                if self.grid_axes is not None and other.grid_axes is not None else None)
        return Space(cols, axes)

    def __add__(self, other: Space) -> Space:
        if not isinstance(other, Space):
            return NotImplemented
        if set(self.names) != set(other.names):
            raise ValueError(f"sweep: can only concatenate spaces with the same names; got "
                             f"{sorted(self.names)} and {sorted(other.names)}")
        cols = {}
        for k in self.names:
            a, b = self.columns[k], other.columns[k]
            if a.shape[1:] != b.shape[1:]:
                raise ValueError(f"sweep: {k} has values of shape {a.shape[1:]} in one "
                                 f"space and {b.shape[1:]} in the other")
            cols[k] = np.concatenate([a, b])
        return Space(cols, None)

    def __repr__(self) -> str:
        kind = "grid " + " x ".join(f"{k}[{len(v)}]" for k, v in self.grid_axes) \
            if self.grid_axes else "list"
        return f"Space({len(self)} configurations, {kind}, names={list(self.names)})"


def grid(**axes: Sequence[Any]) -> Space:
    """Every combination of the given values (Cartesian product; the first name varies
    slowest, as ``itertools.product``)::

        sweep.grid(learning_rate=[1e-3, 1e-2, 1e-1], decay=[0.0, 1e-3])   # 6 configs
    """
    if not axes:
        raise ValueError("sweep.grid: empty grid; give at least one name with values, "
                         "e.g. sweep.grid(learning_rate=[0.01, 0.1])")
    cols = {name: _column(name, v, "sweep.grid") for name, v in axes.items()}
    index = np.meshgrid(*[np.arange(len(v)) for v in cols.values()], indexing="ij")
    columns = {name: v[idx.ravel()] for (name, v), idx in zip(cols.items(), index)}
    return Space(columns, tuple(cols.items()))


def zipped(**columns: Sequence[Any]) -> Space:
    """Configurations given column-wise: ``zipped(learning_rate=[.1, .01], b1=[.9, .8])``
    is two configurations, ``(0.1, 0.9)`` and ``(0.01, 0.8)``."""
    if not columns:
        raise ValueError("sweep.zipped: no names given; e.g. sweep.zipped(learning_rate="
                         "[0.1, 0.01], b1=[0.9, 0.8])")
    return Space({name: _column(name, v, "sweep.zipped") for name, v in columns.items()})


def configs(rows: Sequence[Mapping[str, Any]]) -> Space:
    """Configurations given as a list of dicts, all with the same names::

        sweep.configs([{"learning_rate": 0.1, "decay": 0.0},
                       {"learning_rate": 0.01, "decay": 1e-3}])
    """
    if isinstance(rows, Mapping):
        raise TypeError("sweep.configs: expected a list of configuration dicts; got one dict. "
                        "For columns of values use sweep.zipped(**columns), for one "
                        "configuration sweep.configs([config])")
    if isinstance(rows, (str, bytes)) or not hasattr(rows, "__iter__"):
        raise TypeError(f"sweep.configs: expected a list of configuration dicts; got "
                        f"{type(rows).__name__}")
    rows = list(rows)
    if not rows:
        raise ValueError("sweep.configs: empty list; give at least one configuration dict")
    if not isinstance(rows[0], Mapping):
        raise TypeError(f"sweep.configs: every configuration must be a dict of "
                        f"{{name: value}}; configuration 0 is {rows[0]!r}")
    names = list(rows[0])
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping) or set(r) != set(names):
            raise ValueError(f"sweep.configs: every configuration needs the names {names}; "
                             f"configuration {i} is {r!r}")
    return Space({n: _column(n, [r[n] for r in rows], "sweep.configs") for n in names})


# -- random draws ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Distribution:
    kind: str
    low: float = 0.0
    high: float = 1.0
    values: tuple = ()

    def sample(self, key: Array, n: int) -> np.ndarray:
        if self.kind == "uniform":
            return np.asarray(jax.random.uniform(key, (n,), jnp.float32, self.low, self.high),
                              np.float64)
        if self.kind == "log_uniform":
            u = np.asarray(jax.random.uniform(key, (n,), jnp.float32), np.float64)
            lo, hi = math.log(self.low), math.log(self.high)
            return np.exp(lo + u * (hi - lo))
        if self.kind == "randint":
            return np.asarray(jax.random.randint(key, (n,), int(self.low), int(self.high)))
        idx = np.asarray(jax.random.randint(key, (n,), 0, len(self.values)))
        return np.asarray(self.values)[idx]


def _bounds(low: Any, high: Any, where: str, integer: bool = False) -> None:
    """Both bounds real numbers (ints for :func:`randint`), finite, or a clear error."""
    for name, v in (("low", low), ("high", high)):
        ok = (isinstance(v, (int, np.integer)) if integer else
              isinstance(v, (int, float, np.integer, np.floating)))
        if isinstance(v, (bool, np.bool_)) or not ok:
            kind = "an int" if integer else "a number"
            raise TypeError(f"{where}: {name} must be {kind}; got {v!r}")
        if not integer and not math.isfinite(v):
            raise ValueError(f"{where}: {name} must be finite; got {v!r}")


def uniform(low: float, high: float) -> _Distribution:
    """Uniform on ``[low, high)``, for :func:`random`."""
    _bounds(low, high, "sweep.uniform")
    if not low < high:
        raise ValueError(f"sweep.uniform: need low < high; got low={low}, high={high}")
    return _Distribution("uniform", float(low), float(high))


def log_uniform(low: float, high: float) -> _Distribution:
    """Log-uniform on ``[low, high)`` (``exp`` of a uniform draw): the usual prior for
    learning rates and penalty strengths."""
    _bounds(low, high, "sweep.log_uniform")
    if not 0 < low < high:
        raise ValueError(f"sweep.log_uniform: need 0 < low < high; got low={low}, high={high}")
    return _Distribution("log_uniform", float(low), float(high))


def randint(low: int, high: int) -> _Distribution:
    """An integer in ``[low, high)``, e.g. ``seed=sweep.randint(0, 2**31 - 1)``."""
    _bounds(low, high, "sweep.randint", integer=True)
    info = np.iinfo(jax.dtypes.canonicalize_dtype(np.int64))  # int32 unless jax_enable_x64
    if not (info.min <= low and high - 1 <= info.max):
        raise ValueError(f"sweep.randint: low and high - 1 must lie in [{info.min}, "
                         f"{info.max}] (jax's {info.dtype} draws); got low={low}, high={high}")
    if not int(low) < int(high):
        raise ValueError(f"sweep.randint: need low < high; got low={low}, high={high}")
    return _Distribution("randint", int(low), int(high))


def choice(values: Sequence[Any]) -> _Distribution:
    """One of ``values``, each equally likely."""
    col = _column("values", values, "sweep.choice")
    return _Distribution("choice", values=tuple(col.tolist()))


def random(key: Array, n: int, **distributions: _Distribution | Sequence[Any]) -> Space:
    """``n`` random configurations; each name draws from its distribution
    (:func:`uniform`, :func:`log_uniform`, :func:`randint`, :func:`choice`, or a plain
    list, which means :func:`choice`). Draws are made with ``key``, the name's position
    folded in, so the same key gives the same configurations::

        sweep.random(jax.random.key(0), 32, learning_rate=sweep.log_uniform(1e-4, 1e-1),
                     b1=sweep.uniform(0.8, 0.95))
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"sweep.random: n must be a positive int; got {n!r}")
    if not (isinstance(key, jax.Array) and (
            jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 0
            or key.dtype == np.uint32 and key.shape == (2,))):
        raise TypeError(f"sweep.random: key must be one jax.random.key; got {key!r}. Fix: "
                        "sweep.random(jax.random.key(0), n, ...)")
    if not distributions:
        raise ValueError("sweep.random: no names given; e.g. learning_rate="
                         "sweep.log_uniform(1e-4, 1e-1)")
    cols = {}
    for i, (name, dist) in enumerate(distributions.items()):
        if any(dist is f for f in (uniform, log_uniform, randint, choice)):
            raise TypeError(f"sweep.random: {name}=sweep.{dist.__name__} is the function itself; "
                            f"call it, e.g. {name}=sweep.{dist.__name__}(...)")
        if not isinstance(dist, _Distribution):
            dist = choice(dist)
        cols[name] = dist.sample(jax.random.fold_in(key, i), int(n))
    return Space(cols)
