"""Hyperparameter sweeps: many configurations of one model trained as one program.

Describe the configurations as a :class:`Space` (a grid, a list, random draws, or
products and sums of them), then train every one with the same model, data and number
of epochs::

    space = sweep.grid(learning_rate=np.geomspace(1e-3, 1e-1, 8),
                       decay=[0.0, 1e-4, 1e-3, 1e-2])
    res = sweep.run(model, losses.softmax_cross_entropy, optim.adam(convention="nnfs"),
                    x, y, space, epochs=500)
    res.best("accuracy")            # {'index': 13, 'learning_rate': ..., 'accuracy': ...}
    res.to_csv("sweep.csv"); res.plot_heatmap("accuracy").savefig("heatmap.png")

**What can be swept.** Each name in the space is one of:

* an optimizer hyperparameter, as :func:`funcnn.optim.hyperparams` names it
  (``learning_rate``, ``decay``, ``momentum``, ``b1``, ``b2``, ``eps``,
  ``weight_decay``, ``"1/learning_rate"`` in a chain, ...). Values are put into each
  configuration's optimizer state with :func:`funcnn.optim.set_hyperparams`;
  hyperparameters not swept keep the optimizer's own values;
* ``seed``: the integer seed of ``jax.random.key(seed)``, which
  :func:`funcnn.train.init_state` splits into the initial weights' key and the run's
  key (dropout masks, shuffles). Not swept, it is ``run(seed=0)`` for every
  configuration;
* penalty strengths: ``l1`` and ``l2`` (one coefficient on every weight and bias,
  ``train.Penalty(l1, l2)``) or ``weight_l1``, ``weight_l2``, ``bias_l1``, ``bias_l2``
  (the NNFS per-dense-layer form, :func:`funcnn.train.dense_penalty`); or the
  arguments of a penalty factory ``penalty=lambda l2: train.Penalty(l2=l2)``;
* the arguments of a model factory, such as a dropout rate (below).

**Model factories (dropout rate and other model settings).** A model is a
description (:class:`funcnn.nn.Layer`), and its dropout rate is part of it. To sweep
such a setting, pass a function instead of a layer; the sweep calls it by keyword with
this configuration's values, *inside* the compiled program, so the rate arrives as a
traced array (``nn.dropout`` accepts one) and every rate shares one compiled program::

    def make_model(dropout_rate):
        return nn.serial(nn.dense(64), nn.relu(), nn.dropout(dropout_rate), nn.dense(3))

    sweep.run(make_model, loss, opt, x, y, sweep.grid(dropout_rate=[0.0, 0.1, 0.3]), ...)

The factory's parameters name the values it takes; a parameter with a default need not
be swept. It must build the same architecture for every value (only numbers change).

**Same training as fit.** Each configuration runs :func:`funcnn.train.run_epochs` (the
nested ``lax.scan`` of whole epochs that ``fit`` jit-compiles) from
``train.init_state(model, optimizer, jax.random.key(seed), input_shape, dtype=dtype)``,
on the data as ``fit`` prepares it. So configuration ``i`` follows, to float rounding,
the trajectory of ``train.fit`` with the same seed, data, penalty and epochs; the tests
check this for every strategy in float64.

**Execution strategies** (``run(strategy=...)``):

* ``"vmap"``: ``jax.vmap`` over all configurations: one batched program.
* ``"chunked"``: ``lax.map(..., batch_size=chunk_size)``: ``chunk_size``
  configurations vmapped at a time, the chunks one after another inside one compiled
  program, so peak memory is that of one chunk. ``chunk_size=1`` is a loop over the
  configurations inside one program: compiled once, no per-configuration dispatch.
* ``"sharded"``: the configurations split over devices along a 1-D
  ``jax.sharding.Mesh`` (``jax.shard_map``), each device running its share chunked as
  above (``chunk_size=None``: its whole share vmapped at once).
* ``"loop"``: a Python loop calling one compiled single-configuration program (the
  reference; the least memory).

``strategy="auto"`` (the default) picks, from measurements on a 2-core CPU
(``benchmarks/bench_sweep.py``; speedups over a Python loop calling a jitted
``lax.scan`` once per configuration; A: 64 configs x 500 full-batch Adam steps of the
2-64-3 spiral model; B: 16 configs x 1 epoch, batch 128, of a 784-128-10 model):

* CPU, several devices: ``"sharded"`` with ``chunk_size=1``: each device (core) loops
  over its share inside one program. A: 1.8-1.9x, B: 1.5-1.6x. The same with a vmap per
  device: A 1.05-1.25x, B 1.45-1.55x.
* CPU, one device: ``"chunked"`` with ``chunk_size=1``: the loop moved inside one
  compiled program, as fast as the Python loop (A 0.98-1.0x, B 0.93-1.0x, within the
  noise) and never far slower, whereas a vmap over configurations ran at 0.57-0.95x on
  A (XLA's CPU backend executes the small batched matmuls of A poorly) though 1.15-1.3x
  on B. A CPU is one device unless JAX is told otherwise *before it starts*: call
  :func:`use_cpu_devices` right after ``import jax`` (or set
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N``) to turn each core into a
  device, and the sweep uses them all.
* GPU / TPU: ``"vmap"`` (one device) or ``"sharded"`` with a vmap per device (several):
  a batch of small networks fills the accelerator, where a loop leaves it idle (A ran
  6.5x faster than the loop on an H100, as measured by the issue's author; not
  re-measured here). Pass ``chunk_size`` to bound memory when the whole sweep does not
  fit, and ``keep_params=False`` when the final weights of every configuration do not.

Compilation is cached: a second sweep with the same model, loss and optimizer objects,
data shapes and strategy, differing only in the values, reuses the compiled program.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import inspect
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from funcnn import nn, optim, train

Array = jax.Array

__all__ = ["Space", "grid", "configs", "zipped", "random", "uniform", "log_uniform",
           "choice", "randint", "run", "SweepResults", "default_strategy",
           "use_cpu_devices", "STRATEGIES", "SEED", "PENALTY_NAMES"]

STRATEGIES = ("auto", "vmap", "chunked", "sharded", "loop")
SEED = "seed"
#: names that set penalty strengths when ``run(penalty=None)``
PENALTY_NAMES = ("l1", "l2", "weight_l1", "weight_l2", "bias_l1", "bias_l2")
_SCALAR_PENALTY = ("l1", "l2")
_DENSE_PENALTY = ("weight_l1", "weight_l2", "bias_l1", "bias_l2")
_AXIS = "configs"


# --------------------------------------------------------------------------------------
# Describing a sweep: spaces of configurations
# --------------------------------------------------------------------------------------

def _column(name: str, values: Any, where: str) -> np.ndarray:
    """``values`` as a numeric array with one entry per configuration (leading axis)."""
    if isinstance(values, (str, bytes)) or isinstance(values, Mapping):
        raise TypeError(f"{where}: {name} must be a sequence of numbers, e.g. "
                        f"[0.001, 0.01]; got {values!r}")
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
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
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
    rows = list(rows)
    if not rows:
        raise ValueError("sweep.configs: empty list; give at least one configuration dict")
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


def uniform(low: float, high: float) -> _Distribution:
    """Uniform on ``[low, high)``, for :func:`random`."""
    if not low < high:
        raise ValueError(f"sweep.uniform: need low < high; got low={low}, high={high}")
    return _Distribution("uniform", float(low), float(high))


def log_uniform(low: float, high: float) -> _Distribution:
    """Log-uniform on ``[low, high)`` (``exp`` of a uniform draw): the usual prior for
    learning rates and penalty strengths."""
    if not 0 < low < high:
        raise ValueError(f"sweep.log_uniform: need 0 < low < high; got low={low}, high={high}")
    return _Distribution("log_uniform", float(low), float(high))


def randint(low: int, high: int) -> _Distribution:
    """An integer in ``[low, high)``, e.g. ``seed=sweep.randint(0, 2**31 - 1)``."""
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
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"sweep.random: n must be a positive int; got {n!r}")
    if not distributions:
        raise ValueError("sweep.random: no names given; e.g. learning_rate="
                         "sweep.log_uniform(1e-4, 1e-1)")
    cols = {}
    for i, (name, dist) in enumerate(distributions.items()):
        if not isinstance(dist, _Distribution):
            dist = choice(dist)
        cols[name] = dist.sample(jax.random.fold_in(key, i), int(n))
    return Space(cols)


# --------------------------------------------------------------------------------------
# Choosing how to run
# --------------------------------------------------------------------------------------

def default_strategy(backend: str | None = None,
                     device_count: int | None = None) -> tuple[str, int | None]:
    """``(strategy, chunk_size)`` that ``run(strategy="auto")`` uses on ``backend``.

    From measurements (see the module docstring): on a CPU a loop over configurations
    inside one program per device beats vmap, and several CPU devices run in parallel;
    on accelerators vmap fills the device.
    """
    backend = jax.default_backend() if backend is None else backend
    n = jax.device_count(backend) if device_count is None else int(device_count)
    if backend == "cpu":
        return ("sharded", 1) if n > 1 else ("chunked", 1)
    return ("sharded", None) if n > 1 else ("vmap", None)


def use_cpu_devices(n: int | None = None) -> int:
    """Makes JAX present ``n`` CPU devices (default: one per usable core); returns ``n``.

    A sweep on a CPU runs its devices in parallel, so this is what lets it use every
    core. It sets ``jax_num_cpu_devices``, which JAX reads when its backends start:
    call it right after ``import jax``, before any array is created. The same can be
    done from outside with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``.
    Raises RuntimeError when JAX has already started.
    """
    if n is None:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            n = os.cpu_count() or 1
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"use_cpu_devices: n must be a positive int; got {n!r}")
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except RuntimeError as e:
        raise RuntimeError(
            "use_cpu_devices: JAX has already started (an array was created or "
            "jax.devices() was called), so its CPU device count is fixed. Call "
            "sweep.use_cpu_devices() right after `import jax`, or run with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n}. ({e})") from None
    return int(n)


# --------------------------------------------------------------------------------------
# The compiled program
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything static about a sweep: hashable, and equal for two sweeps that differ
    only in values, so they share one compiled program."""

    model: Any  # nn.Layer, or a factory called with model_names
    model_names: tuple[str, ...]
    loss: Callable
    optimizer: optim.Optimizer
    hparam_names: tuple[str, ...]
    penalty: str  # "none" | "fixed" | "scalar" | "dense" | "factory"
    penalty_fn: Callable | None
    penalty_names: tuple[str, ...]
    engine: str
    batch_size: int
    shuffle: bool
    epochs: int
    input_shape: tuple[int, ...]
    dtype: str
    keep_params: bool


def _build_model(plan: _Plan, values: Mapping[str, Any]) -> nn.Layer:
    if isinstance(plan.model, nn.Layer):
        return plan.model
    return plan.model(**{n: values[n] for n in plan.model_names})


def _build_penalty(plan: _Plan, values, params, fixed):
    dtype = jnp.dtype(plan.dtype)
    if plan.penalty == "none":
        return None
    if plan.penalty == "fixed":
        pen = fixed
    elif plan.penalty == "scalar":
        pen = train.Penalty(**{n: values.get(n, 0.0) for n in _SCALAR_PENALTY})
    elif plan.penalty == "dense":
        pen = train.dense_penalty(params, **{n: values.get(n, 0.0) for n in _DENSE_PENALTY})
    else:
        pen = plan.penalty_fn(**{n: values[n] for n in plan.penalty_names})
    return jax.tree.map(lambda c: jnp.asarray(c, dtype), pen)  # as fit casts it


def _train_one(values: dict[str, Array], fixed_penalty: Any, x: Array, y: Array,
               val: Any, *, plan: _Plan) -> tuple[Any, dict[str, Array]]:
    """Trains one configuration exactly as ``fit`` would; pure, so it can be vmapped."""
    model = _build_model(plan, values)
    state = train.init_state(model, plan.optimizer, jax.random.key(values[SEED]),
                             plan.input_shape, dtype=jnp.dtype(plan.dtype))
    if plan.hparam_names:
        hp = {n: values[n] for n in plan.hparam_names}
        state = dataclasses.replace(state,
                                    opt_state=optim.set_hyperparams(state.opt_state, **hp))
    penalty = _build_penalty(plan, values, state.params, fixed_penalty)
    final, metrics = train.run_epochs(
        state, x, y, penalty, val, model=model, loss=plan.loss,
        update=plan.optimizer.update, engine=plan.engine, batch_size=plan.batch_size,
        shuffle=plan.shuffle, epochs=plan.epochs)
    drop = {"bad_step"}
    if plan.penalty == "none":
        # Without a penalty data_loss is loss, the same value. Returning it twice made
        # XLA:CPU's program for a lax.map over configurations ~1.5x slower (measured: it
        # is loss + data_loss + finite together that does it), so it is copied on the host.
        drop.add("data_loss")
    metrics = {k: v for k, v in metrics.items() if k not in drop}
    return (final.params if plan.keep_params else None), metrics


def _program(values, data, *, plan: _Plan, how: tuple):
    """All configurations: vmapped, chunked or sharded, as ``how = (kind, chunk, mesh)``."""
    kind, chunk, mesh = how

    def local(values, data):
        one = functools.partial(_train_one, plan=plan)
        n = jax.tree.leaves(values)[0].shape[0]
        if chunk is None or chunk >= n:
            return jax.vmap(one, in_axes=(0, None, None, None, None))(values, *data)
        return jax.lax.map(lambda v: one(v, *data), values,
                           batch_size=None if chunk == 1 else chunk)

    if kind == "sharded":
        # check_vma=False: the initial biases are constants, the same on every device,
        # while the trained ones differ; each device's work is independent anyway.
        return jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(_AXIS), PartitionSpec()),
                             out_specs=PartitionSpec(_AXIS), check_vma=False)(values, data)
    return local(values, data)


_PROGRAM = jax.jit(_program, static_argnames=("plan", "how"))
_ONE = jax.jit(_train_one, static_argnames=("plan",))


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------

def _py(v: Any) -> Any:
    """A numpy value as a plain Python value (NaN/inf kept)."""
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


def _json_safe(v: Any) -> Any:
    """Non-finite floats become None, so the file is strict JSON."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    return v


@dataclasses.dataclass(frozen=True, eq=False)
class SweepResults:
    """The outcome of :func:`run`: one row per configuration.

    Attributes:
      values: ``{name: (C, ...) array}``, the swept values as given (``seed`` always
        included); training used them cast to the weights' dtype.
      history: ``{metric: (C, epochs) array}``: ``loss``, ``data_loss``, ``accuracy``,
        ``learning_rate`` and, with validation data, ``val_loss``, ``val_accuracy``.
      diverged: ``(C,)`` bool: the loss or the weights became NaN/inf at some epoch;
        ``diverged_epoch``: the first such epoch (1-based), 0 where none.
      params: the final weights, every leaf with a leading ``(C,)`` axis (None with
        ``keep_params=False``).
      names: the swept names; grid_axes: the grid's axes when the space is a grid.
      strategy, chunk_size, devices: how it ran; compile_s, run_s: seconds spent
        compiling (tracing included) and running (results fetched to the host).
      note: why this strategy was chosen.
    """

    values: dict[str, np.ndarray]
    history: dict[str, np.ndarray]
    diverged: np.ndarray
    diverged_epoch: np.ndarray
    params: Any
    names: tuple[str, ...]
    grid_axes: tuple[tuple[str, np.ndarray], ...] | None
    strategy: str
    chunk_size: int | None
    devices: int
    compile_s: float
    run_s: float
    note: str = ""

    def __len__(self) -> int:
        return len(self.diverged)

    @property
    def final(self) -> dict[str, np.ndarray]:
        """``{metric: (C,) array}``: each configuration's last-epoch metrics."""
        return {k: v[:, -1] for k, v in self.history.items()}

    def config(self, i: int) -> dict[str, Any]:
        """Configuration ``i``'s values (seed included)."""
        return {k: _py(v[i]) for k, v in self.values.items()}

    def params_of(self, i: int) -> Any:
        """Configuration ``i``'s final weights."""
        if self.params is None:
            raise ValueError("params_of: the sweep ran with keep_params=False")
        return jax.tree.map(lambda a: a[i], self.params)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per configuration: ``index``, its values, final metrics, ``diverged``
        and ``diverged_epoch``. A metric named like a swept value (``learning_rate``,
        the rate in effect at the end) is called ``final_learning_rate``."""
        final = {(f"final_{k}" if k in self.values else k): v for k, v in self.final.items()}
        return [{"index": i, **self.config(i), **{k: _py(v[i]) for k, v in final.items()},
                 "diverged": bool(self.diverged[i]),
                 "diverged_epoch": int(self.diverged_epoch[i])} for i in range(len(self))]

    def _mode(self, metric: str, mode: str | None) -> str:
        if metric not in self.history:
            raise ValueError(f"unknown metric {metric!r}; the history has "
                             f"{sorted(self.history)}")
        mode = mode or ("max" if "acc" in metric else "min")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max'; got {mode!r}")
        return mode

    def ranking(self, metric: str = "loss", mode: str | None = None) -> np.ndarray:
        """Configuration indices from best to worst by the final ``metric`` (``mode``:
        "min" or "max"; default max for accuracies, min otherwise). Diverged or NaN
        configurations come last."""
        mode = self._mode(metric, mode)
        v = np.asarray(self.final[metric], np.float64)
        score = -v if mode == "max" else v.copy()
        score[self.diverged | ~np.isfinite(score)] = np.inf
        return np.argsort(score, kind="stable")

    def best(self, metric: str = "loss", mode: str | None = None) -> dict[str, Any]:
        """The best configuration's row (see :meth:`rows`) by the final ``metric``."""
        i = int(self.ranking(metric, mode)[0])
        if self.diverged[i] or not np.isfinite(self.final[metric][i]):
            raise ValueError(f"best: every configuration diverged or has a NaN {metric}")
        return self.rows()[i]

    def summary(self, metric: str = "loss", top: int = 10, mode: str | None = None) -> str:
        """A Markdown table of the ``top`` configurations by ``metric``."""
        order = self.ranking(metric, mode)[:top]
        metrics = [m for m in ("loss", "accuracy", "val_loss", "val_accuracy")
                   if m in self.history]
        head = ["#"] + list(self.values) + metrics + ["diverged"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        final = self.final
        for i in order:
            cells = [str(i)] + [f"{_py(self.values[k][i]):.4g}" if np.ndim(self.values[k][i])
                                == 0 else str(_py(self.values[k][i])) for k in self.values]
            cells += [f"{final[m][i]:.4f}" for m in metrics] + [str(bool(self.diverged[i]))]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"SweepResults({len(self)} configurations, names={list(self.names)}, "
                f"strategy={self.strategy!r}, chunk_size={self.chunk_size}, "
                f"devices={self.devices}, compile {self.compile_s:.2f} s, run "
                f"{self.run_s:.2f} s, diverged {int(self.diverged.sum())})")

    # -- export -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Everything but the weights, as plain Python values (NaN/inf as None)."""
        rows = self.rows()
        for i, r in enumerate(rows):
            r["history"] = {k: _py(v[i]) for k, v in self.history.items()}
        out = {"names": list(self.names), "strategy": self.strategy,
               "chunk_size": self.chunk_size, "devices": self.devices,
               "compile_s": self.compile_s, "run_s": self.run_s, "note": self.note,
               "epochs": int(next(iter(self.history.values())).shape[1]),
               "grid": None if self.grid_axes is None else
               {k: _py(v) for k, v in self.grid_axes}, "rows": rows}
        return _json_safe(out)

    def to_json(self, path: str | os.PathLike) -> None:
        """Writes :meth:`to_dict` as JSON: settings, then one row per configuration with
        its values, final metrics and per-epoch history."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1, allow_nan=False)

    def to_csv(self, path: str | os.PathLike, *, history: bool = False) -> None:
        """Writes one line per configuration (values, final metrics, diverged); with
        ``history=True``, one line per configuration and epoch instead."""
        rows = self.rows()
        with open(path, "w", newline="") as f:
            if not history:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
                return
            metrics = list(self.history)
            w = csv.writer(f)
            w.writerow(["index", *self.values, "epoch", *metrics])
            for i in range(len(self)):
                vals = [_py(self.values[k][i]) for k in self.values]
                for e in range(self.history[metrics[0]].shape[1]):
                    w.writerow([i, *vals, e + 1, *(_py(self.history[m][i, e])
                                                   for m in metrics)])

    # -- plots (matplotlib, imported here only) ----------------------------------------

    def plot_curves(self, metric: str = "loss", by: str | None = None, *, ax: Any = None,
                    log_color: bool | None = None, logy: bool | None = None) -> Any:
        """Every configuration's ``metric`` per epoch, coloured by the value of ``by``
        (default: the first swept name) with a colour bar. Returns the Figure.

        Needs matplotlib (``pip install funcnn[viz]``); uses no global pyplot state.
        """
        Figure, cm, colors = _matplotlib()
        if metric not in self.history:
            raise ValueError(f"plot_curves: unknown metric {metric!r}; the history has "
                             f"{sorted(self.history)}")
        by = by or self.names[0]
        if by not in self.values:
            raise ValueError(f"plot_curves: by={by!r} is not swept; choose one of "
                             f"{list(self.values)}")
        v = np.asarray(self.values[by], np.float64)
        if v.ndim != 1:
            raise ValueError(f"plot_curves: {by} is not a scalar per configuration")
        if log_color is None:
            log_color = bool(np.all(v > 0) and v.max() / v.min() > 20)
        norm = (colors.LogNorm if log_color else colors.Normalize)(v.min(), v.max()
                                                                   if v.max() > v.min()
                                                                   else v.min() + 1)
        fig, ax = _figure(Figure, ax)
        cmap = cm.get_cmap("viridis") if hasattr(cm, "get_cmap") else cm.viridis
        h = self.history[metric]
        epochs = np.arange(1, h.shape[1] + 1)
        for i in np.argsort(v):
            ax.plot(epochs, h[i], color=cmap(norm(v[i])), lw=0.8, alpha=0.8,
                    ls=":" if self.diverged[i] else "-")
        if logy if logy is not None else ("loss" in metric and np.nanmin(h) > 0):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} by {by} ({len(self)} configurations)")
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=by)
        return fig

    def plot_heatmap(self, metric: str = "accuracy", x: str | None = None,
                     y: str | None = None, *, ax: Any = None, annotate: bool = True) -> Any:
        """The final ``metric`` over a two-dimensional grid (``x`` across, ``y`` down;
        default: the grid's second and first axes). Diverged cells are blank and marked.
        Returns the Figure. Needs matplotlib."""
        Figure, _, _ = _matplotlib()
        axes = [(k, v) for k, v in (self.grid_axes or ()) if len(v) > 1]
        if len(axes) != 2:
            raise ValueError(f"plot_heatmap: needs a sweep over a two-dimensional grid "
                             f"(sweep.grid with two names of several values); this one's "
                             f"grid axes are {[k for k, _ in self.grid_axes or ()]}")
        names = [k for k, _ in axes]
        y = y or names[0]
        x = x or names[1 - names.index(y)]
        if sorted([x, y]) != sorted(names):
            raise ValueError(f"plot_heatmap: x and y must be the grid's axes {names}; got "
                             f"x={x!r}, y={y!r}")
        if metric not in self.history:
            raise ValueError(f"plot_heatmap: unknown metric {metric!r}; the history has "
                             f"{sorted(self.history)}")
        xv, yv = dict(axes)[x], dict(axes)[y]
        z = np.full((len(yv), len(xv)), np.nan)
        bad = np.zeros(z.shape, bool)
        final = self.final[metric]
        for i in range(len(self)):
            r = [int(np.flatnonzero(yv == self.values[y][i])[0]),
                 int(np.flatnonzero(xv == self.values[x][i])[0])]
            z[r[0], r[1]] = np.nan if self.diverged[i] else final[i]
            bad[r[0], r[1]] = self.diverged[i]
        fig, ax = _figure(Figure, ax)
        im = ax.imshow(np.ma.masked_invalid(z), cmap="viridis", aspect="auto",
                       origin="lower")
        ax.set_xticks(range(len(xv)), [f"{_py(v):.3g}" for v in xv], rotation=45)
        ax.set_yticks(range(len(yv)), [f"{_py(v):.3g}" for v in yv])
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(f"final {metric}")
        if annotate and z.size <= 400:
            for (r, c), val in np.ndenumerate(z):
                bright = np.isfinite(val) and im.norm(val) > 0.6  # dark text on yellow
                ax.text(c, r, "NaN" if bad[r, c] else f"{val:.3g}", ha="center",
                        va="center", fontsize=7, color="k" if bright else "w")
        fig.colorbar(im, ax=ax, label=metric)
        return fig


def _matplotlib():
    try:
        from matplotlib import cm, colors
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("sweep plots need matplotlib: pip install 'funcnn[viz]' "
                          "(or pip install matplotlib)") from None
    return Figure, cm, colors


def _figure(Figure, ax):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    return fig, fig.subplots()


# --------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------

def _factory_names(fn: Callable, what: str) -> tuple[list[str], list[str]]:
    """``(all keyword-capable parameter names, those without defaults)`` of a factory."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise TypeError(f"sweep.run: cannot read the parameters of the {what} factory "
                        f"{fn!r}; pass a plain function") from None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = [p for p in sig.parameters.values() if p.kind in kinds]
    return [p.name for p in params], [p.name for p in params if p.default is p.empty]


def _check_names(space: Space, hp0: dict, model_args: list, penalty_args: list,
                 builtin_penalty: bool) -> None:
    known = {**{n: "optimizer hyperparameter" for n in hp0}, SEED: "initialization seed",
             **{n: "model factory argument" for n in model_args},
             **{n: "penalty factory argument" for n in penalty_args}}
    if builtin_penalty:
        known.update({n: "penalty strength" for n in PENALTY_NAMES})
    for name in space.names:
        if name in known:
            continue
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        if name in PENALTY_NAMES:
            hint += (" (Penalty names apply when penalty=None; with a penalty factory, "
                     "sweep its arguments.)")
        raise ValueError(
            f"sweep.run: unknown name {name!r} in the space.{hint} Names this sweep can "
            f"vary: optimizer hyperparameters {sorted(hp0)}; {SEED!r}"
            + (f"; penalty strengths {list(PENALTY_NAMES)}" if builtin_penalty else "")
            + (f"; model factory arguments {model_args}" if model_args else "")
            + (f"; penalty factory arguments {penalty_args}" if penalty_args else "")
            + ". (A dropout rate is swept through a model factory: pass "
            "model=lambda dropout_rate: nn.serial(..., nn.dropout(dropout_rate), ...).)")


def _check_shape(name: str, col: np.ndarray, shape: tuple, what: str) -> None:
    if col.shape[1:] != tuple(shape):
        want = (len(col),) + tuple(shape)
        raise ValueError(
            f"sweep.run: {name} ({what}) needs one value of shape {tuple(shape)} per "
            f"configuration, i.e. values of shape {want}; got {col.shape}. Fix: give "
            f"{name} as a flat list of numbers" if shape == () else
            f"sweep.run: {name} ({what}) needs values of shape {want}; got {col.shape}")


def _unique_rows(cols: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for i in range(len(next(iter(cols.values())))):
        row = {k: v[i] for k, v in cols.items()}
        key = tuple((k, np.asarray(v).tobytes()) for k, v in row.items())
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _resolve_strategy(strategy, chunk_size, n_configs, devices):
    if strategy not in STRATEGIES:
        raise ValueError(f"sweep.run: strategy must be one of {STRATEGIES}; got {strategy!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(
            chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"sweep.run: chunk_size must be an int >= 1 (configurations "
                         f"vmapped at a time), or None; got {chunk_size!r}")
    backend = devices[0].platform
    note = ""
    if strategy == "auto":
        strategy, default_chunk = default_strategy(backend, len(devices))
        note = f"auto on {backend} with {len(devices)} device(s)"
        if backend == "cpu" and len(devices) == 1 and (os.cpu_count() or 1) > 1:
            note += ("; call sweep.use_cpu_devices() right after `import jax` to run on "
                     "every core")
        if chunk_size is None:
            chunk_size = default_chunk
        elif strategy == "vmap":
            strategy = "chunked"
    elif strategy in ("vmap", "loop"):
        if chunk_size is not None:
            raise ValueError(f"sweep.run: chunk_size applies to the 'chunked' and "
                             f"'sharded' strategies, not {strategy!r}; drop it or pick "
                             "strategy='chunked'")
    elif strategy == "chunked" and chunk_size is None:
        chunk_size = 1 if backend == "cpu" else max(1, math.ceil(n_configs / 4))
    return strategy, (None if chunk_size is None else int(chunk_size)), note


def _checked_columns(space: Space, hparam_names, hp0, opt_state0, pen_names,
                     dtype) -> dict[str, np.ndarray]:
    """Each swept column checked (shape, range) and cast to the dtype training uses."""
    where = "sweep.run"
    names = space.names
    cols = {}
    for name in names:
        col = space.columns[name]
        if name in hparam_names:
            _check_shape(name, col, hp0[name].shape, "optimizer hyperparameter")
            for v in np.unique(col.reshape(len(col), -1), axis=0):
                try:
                    optim.set_hyperparams(opt_state0, **{name: v.reshape(hp0[name].shape)})
                except (ValueError, TypeError) as e:
                    raise ValueError(f"{where}: {name}={_py(v.reshape(hp0[name].shape))!r} "
                                     f"is not a valid value: {e}") from None
            cols[name] = np.asarray(col, dtype)
        elif name == SEED:
            _check_shape(name, col, (), "initialization seed")
            if not np.all(np.isfinite(col)) or np.any(col != np.round(col)) or \
                    np.any(col < 0) or np.any(col >= 2**31):
                raise ValueError(f"{where}: seed values must be integers in [0, 2**31); "
                                 f"got {col.tolist()}")
            cols[name] = np.asarray(col, np.int32)
        else:
            what = "penalty strength" if name in pen_names else "factory argument"
            _check_shape(name, col, (), what)
            if name in pen_names and not (np.all(np.isfinite(col)) and np.all(col >= 0)):
                raise ValueError(f"{where}: {name} (a penalty strength) must be finite and "
                                 f">= 0; got {col.tolist()}")
            cols[name] = np.asarray(col, dtype)
    return cols


def run(model: nn.Layer | Callable[..., nn.Layer], loss: Callable,
        optimizer: optim.Optimizer, x: Any, y: Any, space: Space, *, epochs: int,
        batch_size: int | None = None, input_shape: Sequence[int] | None = None,
        dtype: Any = jnp.float32, seed: int = 0,
        penalty: train.Penalty | Callable[..., train.Penalty] | None = None,
        validation_data: tuple[Any, Any] | None = None, engine: str = "backprop",
        shuffle: bool = True, strategy: str = "auto", chunk_size: int | None = None,
        devices: int | Sequence[Any] | None = None, keep_params: bool = True,
        ) -> SweepResults:
    """Trains every configuration of ``space`` for ``epochs`` epochs; returns the results.

    Args:
      model: an :class:`funcnn.nn.Layer`, or a factory ``f(**values) -> Layer`` whose
        parameters are swept names (e.g. a dropout rate; see the module docstring).
      loss, optimizer: as for :func:`funcnn.train.fit`. Reuse the same objects to reuse
        the compiled program across sweeps.
      x, y: the training set (checked and prepared as ``fit`` does).
      space: the configurations (:func:`grid`, :func:`random`, ...).
      epochs, batch_size, shuffle, engine, validation_data: as for ``fit``; every
        configuration uses them. With ``batch_size=None`` (the whole set) an epoch is one
        step.
      input_shape: one example's shape (default ``x.shape[1:]``); dtype: the weights'
        dtype (as :func:`funcnn.train.init_state`).
      seed: the seed of every configuration when ``seed`` is not swept.
      penalty: None (then ``l1``, ``l2``, ``weight_l1``, ... may be swept), a fixed
        :class:`funcnn.train.Penalty` for all, or a factory ``f(**values) -> Penalty``.
      strategy: "auto", "vmap", "chunked", "sharded" or "loop" (module docstring).
      chunk_size: configurations vmapped at a time ("chunked"; per device for
        "sharded"); 1 means one at a time inside the compiled program.
      devices: for "sharded": how many of ``jax.devices()`` to use, or a list of
        devices (default: all).
      keep_params: keep every configuration's final weights in the results.

    Raises:
      ValueError / TypeError: an empty space, a name that is neither an optimizer
        hyperparameter, ``seed``, a penalty strength nor a factory argument, values of
        the wrong shape or out of range, a bad strategy or chunk size.

    A configuration whose loss or weights become NaN/inf does not stop the others: it
    is marked in ``results.diverged`` (its metrics are NaN from there on).
    """
    where = "sweep.run"
    if not isinstance(space, Space):
        raise TypeError(f"{where}: space must be a sweep.Space (from sweep.grid, "
                        f"sweep.random, ...); got {type(space).__name__}")
    if engine not in train.ENGINES:
        raise ValueError(f"{where}: engine must be one of {train.ENGINES}; got {engine!r}")
    if not isinstance(optimizer, optim.Optimizer):
        raise TypeError(f"{where}: optimizer must be a funcnn.optim.Optimizer (e.g. "
                        f"optim.adam()); got {type(optimizer).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"{where}: epochs must be a positive int; got {epochs!r}")
    n_configs = len(space)
    dtype = jnp.dtype(dtype)
    if input_shape is None:
        input_shape = tuple(np.shape(x)[1:])
    input_shape = tuple(int(d) for d in input_shape)

    # -- the model (or its factory), checked with the first configuration --------------
    if isinstance(model, nn.Layer):
        model_args, model_required = [], []
    elif callable(model):
        model_args, model_required = _factory_names(model, "model")
    else:
        raise TypeError(f"{where}: model must be an nn.Layer or a function returning one; "
                        f"got {type(model).__name__}")
    if missing := [n for n in model_required if n not in space.names]:
        raise ValueError(f"{where}: the model factory needs {missing}, which the space does "
                         f"not sweep; add them to the space or give them defaults")
    model_names = tuple(n for n in model_args if n in space.names)
    if model_names:  # let the factory check its values (e.g. a dropout rate in [0, 1))
        for row in _unique_rows({k: space.columns[k] for k in model_names}):
            row = {k: _py(v) for k, v in row.items()}
            try:
                model(**row)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{where}: the model factory rejected {row}: {e}") from None
    first = {k: v[0] for k, v in space.columns.items()}
    ref_model = model if isinstance(model, nn.Layer) else \
        model(**{n: _py(first[n]) for n in model_names})
    if not isinstance(ref_model, nn.Layer):
        raise TypeError(f"{where}: the model factory must return an nn.Layer; got "
                        f"{type(ref_model).__name__}")
    params0 = train.init_state(ref_model, optimizer, jax.random.key(0), input_shape,
                               dtype=dtype).params
    xd, yd = train._device_data(ref_model, loss, params0, x, y)
    n = xd.shape[0]
    batch_size = n if batch_size is None else batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or \
            not 1 <= batch_size <= n:
        raise ValueError(f"{where}: batch_size must be an int in [1, {n}] (the number of "
                         f"examples); got {batch_size!r}")
    val = None
    if validation_data is not None:
        val = train._device_data(ref_model, loss, params0, *validation_data)

    # -- what each name is, and whether its values are valid --------------------------
    opt_state0 = optimizer.init(params0)
    hp0 = optim.hyperparams(opt_state0)
    if penalty is None or isinstance(penalty, train.Penalty):
        penalty_args = []
    elif callable(penalty):
        penalty_args, penalty_required = _factory_names(penalty, "penalty")
        if missing := [p for p in penalty_required if p not in space.names]:
            raise ValueError(f"{where}: the penalty factory needs {missing}, which the "
                             "space does not sweep")
    else:
        raise TypeError(f"{where}: penalty must be None, a train.Penalty or a function "
                        f"returning one; got {type(penalty).__name__}")
    _check_names(space, hp0, model_args, penalty_args, penalty is None)
    names = space.names
    hparam_names = tuple(n for n in names if n in hp0 and n not in model_names
                         and n not in penalty_args)
    pen_names = tuple(n for n in names if n in PENALTY_NAMES and penalty is None)
    if set(pen_names) & set(_SCALAR_PENALTY) and set(pen_names) & set(_DENSE_PENALTY):
        raise ValueError(f"{where}: sweep either l1/l2 (every weight and bias) or "
                         f"weight_l1/weight_l2/bias_l1/bias_l2 (dense layers), not both; "
                         f"got {list(pen_names)}")
    cols = _checked_columns(space, hparam_names, hp0, opt_state0, pen_names, dtype)
    if SEED not in cols:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or \
                not 0 <= seed < 2**31:
            raise ValueError(f"{where}: seed must be an int in [0, 2**31); got {seed!r}")
        cols[SEED] = np.full((n_configs,), seed, np.int32)

    if penalty is None:
        kind = ("scalar" if set(pen_names) & set(_SCALAR_PENALTY) else "dense") \
            if pen_names else "none"
        fixed = None
    elif isinstance(penalty, train.Penalty):
        kind, fixed = "fixed", jax.tree.map(lambda c: jnp.asarray(c, dtype), penalty)
    else:
        kind, fixed = "factory", None
    plan = _Plan(model=model, model_names=model_names, loss=loss, optimizer=optimizer,
                 hparam_names=hparam_names, penalty=kind,
                 penalty_fn=penalty if kind == "factory" else None,
                 penalty_names=tuple(n for n in penalty_args if n in names),
                 engine=engine, batch_size=int(batch_size), shuffle=bool(shuffle),
                 epochs=int(epochs), input_shape=input_shape, dtype=dtype.name,
                 keep_params=bool(keep_params))

    # -- how to run ---------------------------------------------------------------------
    if devices is None:
        devs = jax.devices()
    elif isinstance(devices, (int, np.integer)):
        if not 1 <= devices <= jax.device_count():
            raise ValueError(f"{where}: devices must be in [1, {jax.device_count()}] (the "
                             f"devices JAX has); got {devices}")
        devs = jax.devices()[:int(devices)]
    else:
        devs = list(devices)
    strategy, chunk, note = _resolve_strategy(strategy, chunk_size, n_configs, devs)
    data = (fixed, xd, yd, val)

    if strategy == "loop":
        params, metrics, compile_s, run_s = _run_loop(plan, cols, data)
        used = 1
    else:
        params, metrics, compile_s, run_s, used = _run_program(
            plan, cols, data, strategy, chunk, devs, n_configs)

    if "data_loss" not in metrics:  # dropped from the program: equal to loss (no penalty)
        metrics["data_loss"] = np.array(metrics["loss"])
    metrics = {k: metrics[k] for k in ("loss", "data_loss", *[k for k in metrics
                                                             if k not in ("loss", "data_loss")])}
    finite = np.asarray(metrics.pop("finite"), bool)
    diverged = ~finite.all(axis=1)
    first_bad = np.where(diverged, np.argmin(finite, axis=1) + 1, 0)
    values = {k: (space.columns[k] if k in names else cols[k])
              for k in (*names, *([SEED] if SEED not in names else []))}
    return SweepResults(values=values, history={k: np.asarray(v) for k, v in metrics.items()},
                        diverged=diverged, diverged_epoch=first_bad, params=params,
                        names=names, grid_axes=space.grid_axes, strategy=strategy,
                        chunk_size=chunk, devices=used, compile_s=compile_s, run_s=run_s,
                        note=note)


def _run_program(plan, cols, data, strategy, chunk, devs, n_configs):
    """Compiles and runs the vmapped / chunked / sharded program; drops padding."""
    values = {k: jnp.asarray(v) for k, v in cols.items()}
    mesh = None
    if strategy == "sharded":
        pad = -n_configs % len(devs)
        if pad:  # every device gets the same share; the padding repeats the last config
            values = {k: jnp.concatenate([v, jnp.repeat(v[-1:], pad, axis=0)])
                      for k, v in values.items()}
        mesh = _mesh(devs)
        values = jax.device_put(values, NamedSharding(mesh, PartitionSpec(_AXIS)))
        data = jax.device_put(data, NamedSharding(mesh, PartitionSpec()))
    how = ("sharded" if strategy == "sharded" else "local",
           None if strategy == "vmap" else chunk, mesh)
    t0 = time.perf_counter()
    compiled = _PROGRAM.lower(values, data, plan=plan, how=how).compile()
    t1 = time.perf_counter()
    params, metrics = jax.device_get(compiled(values, data))
    t2 = time.perf_counter()
    cut = lambda a: np.asarray(a)[:n_configs]  # noqa: E731
    return (jax.tree.map(cut, params), {k: cut(v) for k, v in metrics.items()},
            t1 - t0, t2 - t1, len(devs) if strategy == "sharded" else 1)


def _mesh(devs) -> Mesh:
    """A 1-D mesh over ``devs``; axis type Auto where JAX has axis types."""
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is None:
        return Mesh(np.asarray(devs), (_AXIS,))
    return Mesh(np.asarray(devs), (_AXIS,), axis_types=(axis_type.Auto,))


def _run_loop(plan, cols, data):
    """One compiled single-configuration program, called once per configuration."""
    rows = [{k: jnp.asarray(v[i]) for k, v in cols.items()}
            for i in range(len(next(iter(cols.values()))))]
    t0 = time.perf_counter()
    compiled = _ONE.lower(rows[0], *data, plan=plan).compile()
    t1 = time.perf_counter()
    outs = jax.device_get([compiled(r, *data) for r in rows])
    t2 = time.perf_counter()
    stacked = jax.tree.map(lambda *a: np.stack(a), *outs) if len(outs) > 1 else \
        jax.tree.map(lambda a: np.asarray(a)[None], outs[0])
    return stacked[0], stacked[1], t1 - t0, t2 - t1

