"""``fit``: the host side of training (checks, chunks of compiled work, the history,
logging, divergence), around the compiled programs of :mod:`funcnn.train.compiled`."""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import distributed, nn, optim, parallel
from funcnn._checks import concrete
from funcnn.data.batching import batches_per_epoch
from funcnn.diagnostics import check_model, check_names
from funcnn.diagnostics import is_column as is_diagnostic
from funcnn.train.compiled import _run_epochs, _run_steps, run_epochs, run_steps  # noqa: F401
from funcnn.train.history import History
from funcnn.train.inputs import DeviceData, prepare_data
from funcnn.train.state import Penalty, TrainState, check_opt_state
from funcnn.train.step import check_engine, check_loss_domain, metric_set

Array = jax.Array

# Steps per compiled call that fit aims for by default: Python then runs once per this
# much work, while the progress bar, the log and on_chunk still come often.
_STEPS_PER_CALL = 2048


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------

class DivergedError(FloatingPointError):
    """The loss or the weights stopped being finite during training.

    ``state`` is the last state whose loss and weights were finite, ``history`` the
    rows completed before, ``epoch`` and ``step`` where it happened (the epoch of the
    run, from 1, and the step within it, from 1).
    """

    def __init__(self, message: str, *, state: TrainState, history: History, epoch: int,
                 step: int):
        super().__init__(message)
        self.state, self.history, self.epoch, self.step = state, history, epoch, step


def _progress_bar(total: int, enabled: bool | None, unit: str = "epoch"):
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit=unit, leave=False)


def _format(where: str, m: dict[str, float], names: tuple[str, ...]) -> str:
    """An NNFS-style log line (``acc`` for ``accuracy``, as the book prints it);
    ``where`` is ``"epoch: 3"`` or ``"step: 300"``."""
    short = lambda k: "acc" if k == "accuracy" else k  # noqa: E731
    line = f"{where}, " + "".join(f"{short(k)}: {m[k]:.3f}, " for k in names)
    line += f"loss: {m['loss']:.3f}"
    if "data_loss" in m:
        line += f" (data_loss: {m['data_loss']:.3f}, reg_loss: {m['loss'] - m['data_loss']:.3f})"
    if "learning_rate" in m:
        line += f", lr: {m['learning_rate']:.6g}"
    if "val_loss" in m:
        line += "".join(f", val_{short(k)}: {m['val_' + k]:.3f}" for k in names)
        line += f", val_loss: {m['val_loss']:.3f}"
    return line


def _positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


def _check_length(epochs: Any, steps: Any, eval_every: Any,
                  epochs_per_call: Any) -> None:
    """How long to train: exactly one of ``epochs`` and ``steps``, and ``eval_every``
    (with ``steps`` only) within it. Checked before anything else runs."""
    if epochs is None and steps is None:
        raise ValueError("fit: say how long to train: pass epochs= (passes over the data) "
                         "or steps= (optimizer updates); got neither")
    if epochs is not None and steps is not None:
        raise ValueError(f"fit: pass either epochs= or steps=, not both; got epochs={epochs!r} "
                         f"and steps={steps!r}")
    if epochs is not None and not _positive_int(epochs):
        raise ValueError(f"fit: epochs must be a positive int; got {epochs!r}")
    if steps is not None and not _positive_int(steps):
        raise ValueError(f"fit: steps must be a positive int (optimizer updates); got "
                         f"{steps!r}")
    if eval_every is not None:
        if steps is None:
            raise ValueError(f"fit: eval_every={eval_every!r} counts steps, so it needs steps=; "
                             "with epochs= a row is recorded (and validation run) after "
                             "every epoch")
        if not _positive_int(eval_every):
            raise ValueError(f"fit: eval_every must be a positive int (steps between rows); "
                             f"got {eval_every!r}")
        if eval_every > steps:
            raise ValueError(f"fit: eval_every={eval_every} is beyond steps={steps}, so no row "
                             "would come before the end; use eval_every <= steps")
    if epochs_per_call is not None and steps is not None:
        raise ValueError("fit: epochs_per_call applies to epochs=; with steps= each compiled "
                         "call runs whole rows of eval_every steps (about "
                         f"{_STEPS_PER_CALL} steps a call)")


def _check_split(mesh: Any, batch_axis: Any, n: int, batch_size: int | None,
                 per_epoch: int, val: tuple[Array, Array] | None) -> None:
    """With a mesh, every batch split over its batch axis must divide evenly: the
    minibatch (``batch_size``; None: the whole set), the smaller last one
    (``drop_remainder=False``) and the validation set. Checked before anything runs."""
    if batch_size is None:
        parallel.check_divisible(n, mesh, batch_axis, "the training set as one batch "
                                 "(no batch_size given)", "fit", "or pass a batch_size")
        return
    parallel.check_divisible(batch_size, mesh, batch_axis, "batch_size", "fit")
    full = n // batch_size
    if per_epoch > full and n - full * batch_size:
        parallel.check_divisible(
            n - full * batch_size, mesh, batch_axis,
            "the smaller last batch of each epoch with drop_remainder=False", "fit",
            f"or keep drop_remainder=True ({n} examples in batches of {batch_size} leave "
            f"{n - full * batch_size} over)")
    if val is not None:
        parallel.check_divisible(val[0].shape[0], mesh, batch_axis, "the validation set",
                                 "fit", "trim it, or evaluate it after fit without a mesh")


def _calls(*, epochs: int | None, steps: int | None, eval_every: int, per_epoch: int,
           epochs_per_call: int | None, config: dict[str, Any]
           ) -> Iterator[tuple[Callable, int, int]]:
    """The compiled calls that make up a fit: ``(run, rows, steps per row)`` each, with
    ``run(state, x, y, penalty, val, guard=False)``. Few distinct shapes, so few
    compilations: the usual chunk, a shorter last chunk, and (with ``steps``) a last
    shorter row."""
    if epochs is not None:
        if epochs_per_call is None:
            epochs_per_call = max(1, min(epochs, math.ceil(_STEPS_PER_CALL / per_epoch)))
        done = 0
        while done < epochs:
            k = min(epochs_per_call, epochs - done)
            yield functools.partial(_run_epochs, epochs=k, **config), k, per_epoch
            done += k
        return
    whole, tail = divmod(steps, eval_every)
    rows_per_call = max(1, min(whole, math.ceil(_STEPS_PER_CALL / eval_every)))
    done = 0
    while done < whole:
        k = min(rows_per_call, whole - done)
        yield functools.partial(_run_steps, rows=k, row_steps=eval_every, **config), k, eval_every
        done += k
    if tail:
        yield functools.partial(_run_steps, rows=1, row_steps=tail, **config), 1, tail


def fit(model: nn.Layer, loss: Callable, optimizer: optim.Optimizer, state: TrainState,
        x: Any, y: Any = None, *, epochs: int | None = None, steps: int | None = None,
        eval_every: int | None = None, batch_size: int | None = None,
        drop_remainder: bool = True, validation_data: tuple[Any, Any] | None = None,
        engine: str = "backprop", metrics: Any = None, diagnostics: Any = None,
        diagnostics_every: int | None = None, penalty: Penalty | None = None,
        shuffle: bool = True, log_every: int | None = None, progress: bool | None = None,
        epochs_per_call: int | None = None,
        on_chunk: Callable[[TrainState, History], None] | None = None,
        mesh: jax.sharding.Mesh | None = None,
        batch_axis: str | tuple[str, ...] = parallel.DEFAULT_AXIS,
        ) -> tuple[TrainState, History]:
    """Trains for ``epochs`` epochs (or ``steps`` updates) of minibatches; returns the
    final state and the history.

    Args:
      model, loss, optimizer: what to train, on what objective, with what rule.
      state: from :func:`init_state` (or a loaded checkpoint).
      x, y: the training set, batch-first; checked for matching lengths, NaN/inf and
        labels within the model's classes before anything runs. For many calls on the
        same data pass ``x=train.device_data(x, y, ...)`` and ``y=None``: checked once.
      epochs: passes over the data; one history row each.
      steps: optimizer updates instead of epochs (exactly one of the two), as in
        Equinox's tutorials: ``steps=300, eval_every=100``. Any number: the last epoch
        may be partial, and the next call (or a resumed run) carries on mid-epoch with
        the same batches; ``steps = k * B`` (``B`` =
        :func:`funcnn.data.batches_per_epoch`) trains exactly as ``epochs = k``.
      eval_every: with ``steps``, a history row (training means since the last row,
        validation, the log line) every this many steps from this call's first, and
        one at the end; default one per epoch's worth of steps, ``min(steps, B)``.
      batch_size: examples per step (default: the whole set).
      drop_remainder: when ``batch_size`` does not divide the ``N`` examples, True (the
        default) leaves the last ``N % batch_size`` of each shuffled epoch out, a
        different few each epoch; False trains on them too, as one smaller last batch
        per epoch (as Nielsen's ``network.py`` and JAX's MNIST example do), whose
        gradient is the mean over its own examples. It is a separate step in the same
        compiled program (the step is compiled for both batch shapes).
      validation_data: ``(x_val, y_val)`` evaluated after every row.
      engine: ``"backprop"`` (hand-derived rules only; a layer or loss without one is an
        error), ``"mixed"`` (hand rules, and ``jax.vjp`` where a layer or loss has none)
        or ``"jax"`` (``jax.grad`` throughout).
      metrics: what to report besides the loss, per row: a list of
        :class:`~funcnn.metrics.Metric` or functions ``(pred, target) -> scalar``, or a
        dict name -> function; default the loss's natural metric (``loss.metric``).
      diagnostics: gradient-flow diagnostics to record inside the compiled loop (a list
        of :data:`funcnn.diagnostics.NAMES`, or True for all that apply): per-layer gradient norms
        (Nielsen's speed of learning), update-to-weight ratios, saturated and dead
        units; history columns such as ``grad_norm[0].b``, the mean over each row.
      diagnostics_every: record them every this many steps instead (means over each
        block of steps, in ``history.steps``).
      penalty: optional :class:`Penalty` (L1/L2 on the weights).
      log_every: print an NNFS-style line every this many rows (epochs, or with
        ``steps`` rows of ``eval_every`` steps), and after the last.
      progress: a tqdm progress bar (default: only on a terminal, if tqdm is installed).
      epochs_per_call: epochs compiled into one call (default: enough for ~2048 steps).
        Only with ``epochs``: with ``steps`` each call holds whole rows, ~2048 steps.
      on_chunk: called with ``(state, history)`` after each compiled call (checkpoints).
      mesh: data parallelism (:mod:`funcnn.parallel`): a ``jax.sharding.Mesh``, e.g.
        ``jax.make_mesh((jax.device_count(),), ("data",))``, Explicit or Auto. Every
        minibatch is split over its axis ``batch_axis``; the parameters, the optimizer
        state and the data set are replicated on its devices, and the state returned
        stays there. The batches, shuffles and keys are those of a run without a mesh,
        so the result equals it to float rounding (the sums over the batch add in
        another order). ``batch_size`` (and with ``drop_remainder=False`` the last
        smaller batch, and the validation set) must be a multiple of the axis's size:
        a ValueError before training otherwise. Default None: one device, as before.
        A mesh over the devices of several processes (``jax.distributed``) works the
        same: every process calls ``fit`` with the same arguments, the whole data set
        (or its part gathered by :func:`funcnn.distributed.gather_processes`) and the
        same initial state; a check that fails on any process, or a value that differs
        between them, is the same ValueError on every process before training
        (:func:`funcnn.distributed.checked_together`).
      batch_axis: the mesh axis (or a tuple of axes) to split the batch over.

    The history (:class:`History`) also keeps each row's ``step``, ``epoch`` and wall
    ``time_s`` in ``history.clock``: the seconds of each compiled call, measured on the
    host once its results are ready, shared among its rows. The rows of a call that had
    to compile first (the first call of a fit; a shorter last chunk or row) include the
    compilation. Measuring adds no work, and no synchronisation, inside the compiled
    program.

    Raises:
      DivergedError: the loss or weights became NaN/inf; it names the epoch and step and
        carries the last finite state.
    """
    # Checked before anything runs; over a mesh across processes, all fail or go on
    # together, and what must be equal on every process is compared (distributed).
    across = isinstance(mesh, jax.sharding.Mesh) and distributed.spans_processes(mesh)
    with distributed.checked_together("fit", across) as agree:
        _check_length(epochs, steps, eval_every, epochs_per_call)
        if mesh is not None:
            batch_axis = parallel.check_mesh(mesh, batch_axis, "fit")
            distributed.check_all_processes(mesh, "fit")
            if across and isinstance(state, TrainState):  # e.g. from an earlier fit
                state = distributed.local(state)
        if not isinstance(drop_remainder, (bool, np.bool_)):
            raise TypeError(f"fit: drop_remainder must be True or False; got {drop_remainder!r}")
        drop_remainder = bool(drop_remainder)
        check_engine(engine, model, loss, "fit")
        chosen = metric_set(loss, metrics, "fit")
        diag_names, every = check_names(diagnostics, diagnostics_every, "fit")
        if not isinstance(state, TrainState):
            raise TypeError(f"fit: state must be a TrainState from train.init_state; got "
                            f"{type(state).__name__}")
        for name, value in (("log_every", log_every), ("epochs_per_call", epochs_per_call)):
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, (int, np.integer)) or value < 1):
                raise ValueError(f"fit: {name} must be a positive int or None; got {value!r}")
        if validation_data is not None and not isinstance(validation_data, DeviceData) and (
                not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2):
            raise TypeError("fit: validation_data must be a pair (x_val, y_val) or a "
                            f"train.DeviceData; got {type(validation_data).__name__}"
                            + (f" of length {len(validation_data)}" if hasattr(
                                validation_data, "__len__") else ""))
        xd, yd = prepare_data(model, loss, state.params, x, y, where="fit")
        check_opt_state(optimizer, state, "fit")
        if penalty is not None:
            check_penalty(penalty, "fit", xd.dtype)
        if bad := _nonfinite_leaves(state.params):
            raise ValueError(f"fit: the given params already hold NaN or inf (at "
                             f"{', '.join(bad)}); there is no finite state to train from. "
                             "Re-initialise them (train.init_state) or load an earlier "
                             "checkpoint.")
        check_loss_domain(model, loss, state.params, xd, yd, "fit")
        n = xd.shape[0]
        whole_set = batch_size is None
        batch_size = n if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or \
                not 1 <= batch_size <= n:
            raise ValueError(f"fit: batch_size must be an int in [1, {n}] (the number of "
                             f"examples); got {batch_size!r}")
        batch_size = int(batch_size)
        val = None
        if validation_data is not None:
            val = prepare_data(model, loss, state.params,
                               *(validation_data if not isinstance(validation_data, DeviceData)
                                 else (validation_data, None)), where="fit (validation_data)")
            check_loss_domain(model, loss, state.params, *val, "fit (validation_data)")
        if penalty is not None:
            penalty = jax.tree.map(lambda c: jnp.asarray(c, xd.dtype), penalty)
        per_epoch = batches_per_epoch(n, batch_size, drop_remainder=drop_remainder)
        if mesh is not None:
            _check_split(mesh, batch_axis, n, None if whole_set else batch_size, per_epoch, val)
        total = epochs * per_epoch if epochs is not None else steps
        if steps is not None and eval_every is None:
            eval_every = min(steps, per_epoch)
        if diag_names:
            diag_names = check_model(diag_names, every, model, state.params, xd, total,
                                     "fit", strict=diagnostics is not True)
        config = dict(model=model, loss=loss, update=optimizer.update, engine=engine,
                      batch_size=batch_size, shuffle=shuffle, metrics=chosen,
                      diagnostics=diag_names, per_step=every is not None,
                      drop_remainder=drop_remainder)
        if mesh is not None:
            config.update(mesh=mesh, batch_axis=batch_axis)
        if across:  # every process must train the same thing, or a collective would hang
            for name, value in dict(
                    epochs=epochs, steps=steps, eval_every=eval_every, batch_size=batch_size,
                    drop_remainder=drop_remainder, engine=engine, shuffle=shuffle,
                    metrics=[m.name for m in chosen], diagnostics=diag_names,
                    diagnostics_every=every, epochs_per_call=epochs_per_call,
                    mesh=distributed.layout(mesh), batch_axis=batch_axis).items():
                agree.same(name, value)
            agree.same("the training data", (xd, yd),
                       "pass the whole data set on every process, or gather each process's "
                       "part with funcnn.distributed.gather_processes(x_part, y_part)")
            agree.same("the validation data", val)
            agree.same("the initial state", state,
                       "initialise it from the same key on every process "
                       "(train.init_state(model, opt, jax.random.key(SEED), ...))")
            agree.same("the penalty", penalty)
    names = tuple(m.name for m in chosen)
    history = History()
    bar = _progress_bar(epochs if epochs is not None else steps, progress,
                        "epoch" if epochs is not None else "step")
    step0 = int(state.step)  # updates already applied, when resuming
    done = 0  # updates applied by this call
    rows_done = 0
    if mesh is not None:  # data parallel: the state and the data on every device
        xd, yd, state, penalty = parallel.replicate((xd, yd, state, penalty), mesh)
        if val is not None:
            val = parallel.shard_batch(tuple(val), mesh, batch_axis)
    # A mesh's programs trace under it (jax.set_mesh); closed in the finally below.
    mesh_scope = contextlib.ExitStack()
    mesh_scope.enter_context(parallel.mesh_context(mesh))
    try:
        for run, k, row_steps in _calls(epochs=epochs, steps=steps, eval_every=eval_every,
                                        per_epoch=per_epoch, epochs_per_call=epochs_per_call,
                                        config=config):
            start = time.perf_counter()
            new, m = jax.block_until_ready(run(state, xd, yd, penalty, val))
            seconds = time.perf_counter() - start  # ready, so this is the device's time too
            m = jax.device_get(m)
            ends = step0 + done + row_steps * np.arange(1, k + 1, dtype=np.int64)
            clock = {"step": ends, "epoch": ends / per_epoch,
                     "time_s": np.full(k, seconds / k)}
            if not np.all(m["finite"]):
                _diverged(run, state, xd, yd, penalty, val, step0=step0 + done,
                          per_epoch=per_epoch, row_steps=row_steps, clock=clock,
                          history=history, every=every)
            chunk = {key: np.asarray(v) for key, v in m.items()
                     if key not in ("finite", "bad_step")}
            if every is not None:
                history.append_steps({k: chunk.pop(k) for k in list(chunk)
                                      if is_diagnostic(k)}, step0 + done, every)
            state = new
            history.append(chunk, clock)
            for i in range(k):
                row = rows_done + i + 1
                last = epochs is not None and row == epochs or \
                    steps is not None and int(ends[i]) == step0 + steps
                if log_every and (row % log_every == 0 or last):
                    where = (f"epoch: {int(ends[i]) // per_epoch}" if epochs is not None
                             else f"step: {int(ends[i])}")
                    line = _format(where, {key: float(v[i]) for key, v in chunk.items()},
                                   names)
                    (bar.write if bar is not None else print)(line)
            done += k * row_steps
            rows_done += k
            if bar is not None:
                bar.update(k if epochs is not None else k * row_steps)
                bar.set_postfix(loss=f"{chunk['loss'][-1]:.4f}",
                                **{m.name: f"{chunk[m.name][-1]:.3f}" for m in chosen})
            if on_chunk is not None:
                on_chunk(state, history)
    finally:
        mesh_scope.close()
        if bar is not None:
            bar.close()
    return state, history


def _nonfinite_leaves(tree: Any) -> list[str]:
    """Paths of the float leaves of ``tree`` that hold NaN or inf (one transfer)."""
    flat = [(p, leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
            if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    ok = jax.device_get(_each_finite([leaf for _, leaf in flat]))
    return [jax.tree_util.keystr(p) for (p, _), fine in zip(flat, ok) if not fine]


@jax.jit
def _each_finite(leaves: list) -> list:
    return [jnp.all(jnp.isfinite(leaf)) for leaf in leaves]


def _suspects(state: TrainState, penalty: Penalty | None) -> tuple[list[str], bool]:
    """What other than the learning rate can make training non-finite, found in the
    optimizer's hyperparameters and the penalty (for DivergedError's message), and
    whether the hyperparameters could be read at all."""
    found = []
    try:
        hparams, readable = optim.hyperparams(state.opt_state), True
    except TypeError:  # an optimizer from another library (optax): its numbers are hidden
        hparams, readable = {}, False
    dtypes = {jnp.result_type(leaf) for leaf in jax.tree.leaves(state.params)}
    for name, value in hparams.items():
        v = np.asarray(jax.device_get(value), np.float64)
        if not np.all(np.isfinite(v)):
            found.append(f"the optimizer's {name} is {v}")
        elif name.split("/")[-1] == "eps":  # not eps_root, which is 0 by default
            if np.any(v == 0):
                dt = jnp.result_type(value)
                narrow = (f"; in {jnp.dtype(dt).name} any eps below "
                          f"{float(jnp.finfo(dt).smallest_subnormal):.3g} is 0, so use float32 "
                          "parameters or a larger eps" if jnp.finfo(dt).bits < 32 else "")
                found.append(f"the optimizer's {name} is 0 in its {jnp.dtype(dt).name} state "
                             "(its update divides by sqrt(v) + eps, which is 0/0 wherever a "
                             f"gradient is 0{narrow})")
            for dt in dtypes:
                if jnp.issubdtype(dt, jnp.floating) and np.any(
                        (v != 0) & (np.asarray(v, dt) == 0)):
                    found.append(f"the optimizer's {name}={v:g} rounds to 0 in the "
                                 f"parameters' {jnp.dtype(dt).name} (smallest positive "
                                 f"{float(jnp.finfo(dt).tiny):.3g}); use float32 parameters "
                                 "or a larger eps")
    if penalty is not None and _nonfinite_leaves(penalty):
        found.append(f"the penalty's coefficients hold NaN or inf "
                     f"({', '.join(_nonfinite_leaves(penalty))})")
    elif penalty is not None and "learning_rate" in hparams:
        # Gradient descent on l2 * w^2 multiplies w by (1 - 2 lr l2) each step, which
        # grows without bound once lr * l2 > 1.
        l2 = max([float(np.max(np.asarray(jax.device_get(c)))) for c in
                  jax.tree.leaves(penalty.l2)] + [0.0])
        lr = float(np.max(np.asarray(jax.device_get(hparams["learning_rate"]))))
        if lr * l2 > 1:
            found.append(f"the penalty's l2 coefficient {l2:g} times the learning rate "
                         f"{lr:g} exceeds 1, so the L2 term alone makes every step "
                         "multiply the weights by (1 - 2 lr l2), growing without bound; "
                         "use a smaller l2")
    return found, readable


def check_penalty(penalty: Penalty, where: str, dtype: Any = None) -> None:
    """Penalty coefficients must be finite and >= 0, and fit in the parameters' ``dtype``
    (checked when concrete)."""
    if not isinstance(penalty, Penalty):
        raise TypeError(f"{where}: penalty must be a train.Penalty (or None); got "
                        f"{type(penalty).__name__}")
    for name in ("l1", "l2"):
        for path, c in jax.tree_util.tree_flatten_with_path(getattr(penalty, name))[0]:
            v = concrete(c)
            limit = np.inf if dtype is None else float(jnp.finfo(dtype).max)
            if v is not None and not (np.all(np.isfinite(v)) and np.all(v >= 0)
                                      and np.all(v <= limit)):
                raise ValueError(f"{where}: penalty.{name}{jax.tree_util.keystr(path)} must be "
                                 f"finite and >= 0 (and within the range of the parameters' "
                                 f"dtype); got {v}")


def _diverged(run: Callable, state: TrainState, xd: Array, yd: Array,
              penalty: Penalty | None, val: Any, *, step0: int, per_epoch: int,
              row_steps: int, clock: dict[str, np.ndarray], history: History,
              every: int | None) -> None:
    """Reruns a compiled call that went non-finite with the guard on, keeps the rows
    completed before the first bad update, and raises. ``step0`` is ``state.step``
    (the updates before this call), ``clock`` the call's rows' clock."""
    last_good, m = run(state, xd, yd, penalty, val, guard=True)
    bad = int(m["bad_step"])
    if bad < 0:  # the last update of the chunk made the weights non-finite
        bad = int(last_good.step)
    epoch, step = bad // per_epoch + 1, bad % per_epoch + 1
    good_rows = (int(last_good.step) - step0) // row_steps
    chunk = {key: np.asarray(v)[:good_rows] for key, v in jax.device_get(m).items()
             if key not in ("finite", "bad_step")}
    if every is not None:
        history.append_steps({k: chunk.pop(k) for k in list(chunk) if is_diagnostic(k)},
                             step0, every)
    history.append(chunk, {k: v[:good_rows] for k, v in clock.items()})
    where = (f"training diverged: the loss or the weights became NaN/inf at epoch {epoch}, "
             f"step {step} (update {bad + 1} of the run). The returned state (error.state) "
             "is the last finite one. ")
    suspects, readable = _suspects(state, penalty)
    if suspects:
        advice = "Found: " + "; ".join(suspects) + ". Fix that first."
    elif readable:
        advice = ("Nothing else looks wrong (data, parameters, penalty and hyperparameters "
                  "are finite), so try a smaller learning rate, gradient clipping "
                  "(optim.clip_by_global_norm), or look for extreme values in the data.")
    else:
        advice = ("The data, parameters and penalty are finite; the optimizer's "
                  "hyperparameters cannot be read (an optimizer from another library, such "
                  "as optax's, keeps them inside its functions), so check that its learning "
                  "rate and other numbers are finite, then try a smaller learning rate, "
                  "gradient clipping, or look for extreme values in the data.")
    raise DivergedError(where + advice, state=last_good, history=history, epoch=epoch,
                        step=step)
