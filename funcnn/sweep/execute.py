"""The compiled program: one configuration trained as ``fit`` would, and every
configuration run vmapped, chunked, sharded over devices, or in a Python loop."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from funcnn import distributed, nn, optim, train

Array = jax.Array

SEED = "seed"
#: names that set penalty strengths when ``run(penalty=None)``
PENALTY_NAMES = ("l1", "l2", "weight_l1", "weight_l2", "bias_l1", "bias_l2")
_SCALAR_PENALTY = ("l1", "l2")
_DENSE_PENALTY = ("weight_l1", "weight_l2", "bias_l1", "bias_l2")
_AXIS = "configs"


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
    metrics: tuple  # of funcnn.metrics.Metric
    diagnostics: tuple  # of names from funcnn.diagnostics.NAMES
    diagnostics_every: int | None
    batch_size: int
    shuffle: bool
    epochs: int
    input_shape: tuple[int, ...]
    dtype: str
    keep_params: bool
    drop_remainder: bool = True


def _build_model(plan: _Plan, values: Mapping[str, Any]) -> nn.Layer:
    if isinstance(plan.model, nn.Layer):
        return plan.model
    try:
        return plan.model(**{n: values[n] for n in plan.model_names})
    except (TypeError, ValueError) as e:  # e.g. a Python `if` on a swept value
        first = (str(e).splitlines() or [""])[0]
        raise ValueError(
            f"sweep.run: the model factory failed when called with its swept values as "
            f"traced arrays ({', '.join(plan.model_names)}), as a sweep calls it inside "
            f"vmap and jit: {type(e).__name__}: {first} A swept value may "
            "only enter the network as a number (a dropout rate, a scale), not choose its "
            "structure (a layer's size, which layers): for that, call sweep.run once per "
            "architecture") from None


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
        shuffle=plan.shuffle, epochs=plan.epochs, metrics=plan.metrics,
        diagnostics=plan.diagnostics, per_step=plan.diagnostics_every is not None,
        drop_remainder=plan.drop_remainder)
    # Without a penalty run_epochs returns no data_loss (it equals loss); run fills it
    # in on the host.
    metrics = {k: v for k, v in metrics.items() if k != "bad_step"}
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


def _run_program(plan, cols, data, strategy, chunk, devs, n_configs):
    """Compiles and runs the vmapped / chunked / sharded program; drops padding."""
    values = {k: jnp.asarray(v) for k, v in cols.items()}
    mesh = None
    if strategy == "sharded":
        pad = -n_configs % len(devs)
        if pad:  # every device gets the same share; the padding repeats the last config
            values = {k: jnp.concatenate([v, jnp.repeat(v[-1:], pad, axis=0)])
                      for k, v in values.items()}
        mesh = _mesh(devs)  # may hold devices of other processes (jax.distributed)
        values = _place(values, NamedSharding(mesh, PartitionSpec(_AXIS)))
        data = _place(data, NamedSharding(mesh, PartitionSpec()))
    how = ("sharded" if strategy == "sharded" else "local",
           None if strategy == "vmap" else chunk, mesh)
    t0 = time.perf_counter()
    compiled = _PROGRAM.lower(values, data, plan=plan, how=how).compile()
    t1 = time.perf_counter()
    params, metrics = distributed.to_host(compiled(values, data))  # every process: all
    t2 = time.perf_counter()
    cut = lambda a: np.asarray(a)[:n_configs]  # noqa: E731
    return (jax.tree.map(cut, params), {k: cut(v) for k, v in metrics.items()},
            t1 - t0, t2 - t1, len(devs) if strategy == "sharded" else 1)


def _place(tree: Any, sharding: NamedSharding) -> Any:
    return jax.tree.map(lambda a: distributed.global_array(a, sharding), tree)


def _mesh(devs) -> Mesh:
    """A 1-D mesh over ``devs``; axis type Auto where JAX has axis types."""
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is None:
        return Mesh(np.asarray(devs), (_AXIS,))
    return Mesh(np.asarray(devs), (_AXIS,), axis_types=(axis_type.Auto,))


def _run_loop(plan, cols, data):
    """One compiled single-configuration program, called once per configuration."""
    rows = [{k: jnp.asarray(v[i]) for k, v in cols.items()} for i in range(len(cols[SEED]))]
    t0 = time.perf_counter()
    compiled = _ONE.lower(rows[0], *data, plan=plan).compile()
    t1 = time.perf_counter()
    outs = jax.device_get([compiled(r, *data) for r in rows])
    t2 = time.perf_counter()
    stacked = jax.tree.map(lambda *a: np.stack(a), *outs)
    return stacked[0], stacked[1], t1 - t0, t2 - t1
