"""``run``: a sweep's inputs checked, its program compiled and run, its results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import diagnostics as diagnostics_lib
from funcnn import distributed, nn, optim, train
from funcnn.data.batching import batches_per_epoch
from funcnn.train.loop import check_penalty

from ._common import _py
from .checks import _check_names, _checked_columns, _factory_names, _unique_rows
from .execute import (_DENSE_PENALTY, _SCALAR_PENALTY, PENALTY_NAMES, SEED, _Plan,
                      _run_loop, _run_program)
from .results import SweepResults
from .space import Space
from .strategies import _resolve_strategy


def _param_shapes(model: Any, input_shape: Any, dtype: Any) -> list | None:
    """The shapes of ``model``'s parameters for ``input_shape`` (no computation), or
    None when they cannot be found here (the checks after this report why)."""
    if not isinstance(model, nn.Layer):
        return None
    try:
        tree = jax.eval_shape(lambda: model.init(jax.random.key(0), input_shape, dtype))
    except Exception:  # a bad input_shape or dtype: reported with the first row later
        return None
    return [tuple(leaf.shape) for leaf in jax.tree.leaves(tree)]


def run(model: nn.Layer | Callable[..., nn.Layer], loss: Callable,
        optimizer: optim.Optimizer, x: Any, y: Any, space: Space, *, epochs: int,
        batch_size: int | None = None, input_shape: Sequence[int] | None = None,
        dtype: Any = jnp.float32, seed: int = 0,
        penalty: train.Penalty | Callable[..., train.Penalty] | None = None,
        validation_data: tuple[Any, Any] | None = None, engine: str = "backprop",
        metrics: Any = None, diagnostics: Any = None, diagnostics_every: int | None = None,
        shuffle: bool = True, strategy: str = "auto", chunk_size: int | None = None,
        devices: int | Sequence[Any] | None = None, keep_params: bool = True,
        drop_remainder: bool = True) -> SweepResults:
    """Trains every configuration of ``space`` for ``epochs`` epochs; returns the results.

    Args:
      model: an :class:`funcnn.nn.Layer`, or a factory ``f(**values) -> Layer`` whose
        parameters are swept names (e.g. a dropout rate; see :mod:`funcnn.sweep`).
      loss, optimizer: as for :func:`funcnn.train.fit`. Reuse the same objects to reuse
        the compiled program across sweeps.
      x, y: the training set (checked and prepared as ``fit`` does).
      space: the configurations (:func:`grid`, :func:`random`, ...).
      epochs, batch_size, shuffle, engine, metrics, diagnostics, diagnostics_every,
        validation_data: as for ``fit`` (per-epoch diagnostics are history columns such
        as ``history["grad_norm[0].b"]``, per-block ones in ``results.steps``); every
        configuration uses them. With ``batch_size=None`` (the whole set) an epoch is one
        step.
      drop_remainder: as for ``fit``: when ``batch_size`` does not divide the examples,
        True leaves the rest of each epoch's shuffle out, False trains on it as one
        smaller last batch.
      input_shape: one example's shape (default ``x.shape[1:]``); dtype: the weights'
        dtype (as :func:`funcnn.train.init_state`).
      seed: the seed of every configuration when ``seed`` is not swept.
      penalty: None (then ``l1``, ``l2``, ``weight_l1``, ... may be swept), a fixed
        :class:`funcnn.train.Penalty` for all, or a factory ``f(**values) -> Penalty``.
      strategy: "auto", "vmap", "chunked", "sharded" or "loop" (:mod:`funcnn.sweep`).
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
    # Checked before anything runs; a sweep over the devices of several processes
    # (jax.distributed) checks that every process runs the same one (distributed).
    across = strategy in ("auto", "sharded") and _spans_processes(devices)
    with distributed.checked_together(where, across) as agree:
        if not isinstance(space, Space):
            raise TypeError(f"{where}: space must be a sweep.Space (from sweep.grid, "
                            f"sweep.random, ...); got {type(space).__name__}")
        if not isinstance(optimizer, optim.Optimizer):
            raise TypeError(f"{where}: optimizer must be a funcnn.optim.Optimizer (e.g. "
                            f"optim.adam(1e-3)); got {type(optimizer).__name__}")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"{where}: epochs must be a positive int; got {epochs!r}")
        n_configs = len(space)
        try:
            dtype = jnp.dtype(dtype)
        except TypeError as e:
            raise TypeError(f"{where}: dtype must be a float dtype such as jnp.float32; got "
                            f"{dtype!r} ({e})") from None
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{where}: dtype is the weights' dtype and must be a float dtype such "
                            f"as jnp.float32; got {dtype.name}")
        if input_shape is None:
            input_shape = tuple(np.shape(x)[1:])
        if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__iter__") or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d > 0
                for d in input_shape):
            raise TypeError(f"{where}: input_shape must be a tuple of positive ints, one example's "
                            f"shape without the batch axis, e.g. (2,) or (28, 28, 1); got "
                            f"{input_shape!r}")
        input_shape = tuple(int(d) for d in input_shape)
        for flag, value in (("shuffle", shuffle), ("keep_params", keep_params),
                            ("drop_remainder", drop_remainder)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{where}: {flag} must be True or False; got {value!r}")
        if validation_data is not None and (not isinstance(validation_data, (tuple, list))
                                            or len(validation_data) != 2):
            raise TypeError(f"{where}: validation_data must be a pair (x_val, y_val); got "
                            f"{type(validation_data).__name__}"
                            + (f" of length {len(validation_data)}"
                               if hasattr(validation_data, "__len__") else ""))

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
            first = None
            rows = _unique_rows({k: space.columns[k] for k in model_names})
            # Architectures compared on up to 16 rows spread over the space (tracing an
            # init costs milliseconds); a factory that still builds another network on
            # some other row fails later, when called with traced values, by name.
            compared = set(range(0, len(rows), max(1, len(rows) // 16)))
            for i, row in enumerate(rows):
                row = {k: _py(v) for k, v in row.items()}
                try:
                    built = model(**row)
                except (ValueError, TypeError) as e:
                    raise ValueError(f"{where}: the model factory rejected {row}: {e}") from None
                if i not in compared:
                    continue
                shapes = _param_shapes(built, input_shape, dtype)
                if first is None:
                    first = row, shapes
                elif shapes is not None and first[1] is not None and shapes != first[1]:
                    raise ValueError(
                        f"{where}: the model factory builds a different network for {row} "
                        f"than for {first[0]} (parameter shapes {shapes} against "
                        f"{first[1]}). A sweep trains one architecture, the swept values "
                        "being arrays (so vmap and jit never recompile); for layer sizes "
                        "or counts, call sweep.run once per architecture")
        ref_model = model if isinstance(model, nn.Layer) else \
            model(**{n: _py(space.columns[n][0]) for n in model_names})
        if not isinstance(ref_model, nn.Layer):
            raise TypeError(f"{where}: the model factory must return an nn.Layer; got "
                            f"{type(ref_model).__name__}")
        train.check_engine(engine, ref_model, loss, where)
        chosen_metrics = train.metric_set(loss, metrics, where)
        diag_names, every = diagnostics_lib.check_names(diagnostics, diagnostics_every, where)
        params0 = train.init_state(ref_model, optimizer, jax.random.key(0), input_shape,
                                   dtype=dtype).params
        xd, yd = train.prepare_data(ref_model, loss, params0, x, y, where=where)
        n = xd.shape[0]
        batch_size = n if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or \
                not 1 <= batch_size <= n:
            raise ValueError(f"{where}: batch_size must be an int in [1, {n}] (the number of "
                             f"examples); got {batch_size!r}")
        val = None
        if validation_data is not None:
            val = train.prepare_data(ref_model, loss, params0, *validation_data,
                                     where=f"{where} (validation_data)")
        if diag_names:
            total = int(epochs) * batches_per_epoch(n, int(batch_size),
                                                    drop_remainder=bool(drop_remainder))
            diag_names = diagnostics_lib.check_model(diag_names, every, ref_model, params0, xd,
                                                     total, where, strict=diagnostics is not True)

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
            check_penalty(penalty, where, dtype)  # a negative l2 would reward large weights
            kind, fixed = "fixed", jax.tree.map(lambda c: jnp.asarray(c, dtype), penalty)
        else:
            kind, fixed = "factory", None
        plan = _Plan(model=model, model_names=model_names, loss=loss, optimizer=optimizer,
                     hparam_names=hparam_names, penalty=kind,
                     penalty_fn=penalty if kind == "factory" else None,
                     penalty_names=tuple(n for n in penalty_args if n in names),
                     engine=engine, metrics=chosen_metrics, diagnostics=diag_names,
                     diagnostics_every=every,
                     batch_size=int(batch_size), shuffle=bool(shuffle),
                     epochs=int(epochs), input_shape=input_shape, dtype=dtype.name,
                     keep_params=bool(keep_params), drop_remainder=bool(drop_remainder))

        # -- how to run ---------------------------------------------------------------------
        if devices is None:
            devs = jax.devices()
        elif isinstance(devices, (int, np.integer)) and not isinstance(devices, (bool, np.bool_)):
            if not 1 <= devices <= jax.device_count():
                raise ValueError(f"{where}: devices must be in [1, {jax.device_count()}] (the "
                                 f"devices JAX has); got {devices}")
            devs = jax.devices()[:int(devices)]
        else:
            if isinstance(devices, (str, bytes)) or not hasattr(devices, "__iter__"):
                raise TypeError(f"{where}: devices must be a number of devices or a list of "
                                f"jax devices (from jax.devices()); got {devices!r}")
            devs = list(devices)
            if not devs or not all(isinstance(d, jax.Device) for d in devs):
                raise TypeError(f"{where}: devices must be a non-empty list of jax devices (from "
                                f"jax.devices()), or how many to use; got {devices!r}")
        strategy, chunk, note = _resolve_strategy(strategy, chunk_size, n_configs, devs)
        if strategy == "sharded":
            distributed.check_all_processes(devs, where)
        if across:  # every process must run the same sweep, or a collective would hang
            agree.same("the configuration table", cols,
                       "build the space the same way on every process (a random space from "
                       "the same seed)")
            agree.same("the training data", (xd, yd),
                       "pass the whole data set on every process, or gather each process's "
                       "part with funcnn.distributed.gather_processes(x_part, y_part)")
            agree.same("the validation data", val)
            for name, value in dict(
                    epochs=epochs, batch_size=batch_size, dtype=dtype.name,
                    input_shape=input_shape, strategy=strategy, chunk_size=chunk,
                    devices=[d.id for d in devs], engine=engine,
                    metrics=[m.name for m in chosen_metrics], diagnostics=diag_names,
                    diagnostics_every=every, shuffle=bool(shuffle),
                    keep_params=bool(keep_params), drop_remainder=bool(drop_remainder),
                    penalty=kind).items():
                agree.same(name, value)
            agree.same("the penalty", fixed)
    data = (fixed, xd, yd, val)

    if strategy == "loop":
        params, metrics, compile_s, run_s = _run_loop(plan, cols, data)
        used = 1
    else:
        params, metrics, compile_s, run_s, used = _run_program(
            plan, cols, data, strategy, chunk, devs, n_configs)

    # Without a penalty run_epochs returns no data_loss: it equals loss, and is copied
    # here on the host rather than returned twice from the program (measured: loss,
    # data_loss and finite together made XLA:CPU's lax.map over configurations ~1.5x
    # slower).
    metrics.setdefault("data_loss", np.array(metrics["loss"]))
    metrics = {"loss": metrics.pop("loss"), "data_loss": metrics.pop("data_loss"), **metrics}
    finite = np.asarray(metrics.pop("finite"), bool)
    steps = {}
    if every is not None:  # (C, epochs, steps) per-step diagnostics -> block means
        per_step = {k: metrics.pop(k) for k in list(metrics)
                    if diagnostics_lib.is_column(k)}
        rows = [diagnostics_lib.block_means({k: v[c] for k, v in per_step.items()}, 0,
                                            every)[0] for c in range(n_configs)]
        steps = {"step": rows[0]["step"], **{k: np.stack([r[k] for r in rows])
                                             for k in per_step}}
    diverged = ~finite.all(axis=1)
    first_bad = np.where(diverged, np.argmin(finite, axis=1) + 1, 0)
    values = {k: space.columns[k] for k in names}
    values.setdefault(SEED, cols[SEED])  # the seed every configuration used
    return SweepResults(values=values, history={k: np.asarray(v) for k, v in metrics.items()},
                        diverged=diverged, diverged_epoch=first_bad, params=params,
                        names=names, grid_axes=space.grid_axes, strategy=strategy,
                        chunk_size=chunk, devices=used, compile_s=compile_s, run_s=run_s,
                        note=note, steps=steps)


def _spans_processes(devices: Any) -> bool:
    """Whether a sweep on ``devices`` (as ``run`` takes them) would use devices of other
    processes; False for a value that ``run`` will refuse."""
    if devices is None:
        return jax.process_count() > 1
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, (bool, np.bool_)):
        return distributed.spans_processes(jax.devices()[:max(int(devices), 0)])
    try:
        return distributed.spans_processes([d for d in devices if isinstance(d, jax.Device)])
    except TypeError:
        return False
