"""Compiled epochs (``run_epochs``), the training history, and ``fit``."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import nn, optim
from funcnn._checks import concrete
from funcnn.diagnostics import block_means, check_model, check_names, update_ratios
from funcnn.diagnostics import is_column as is_diagnostic
from funcnn.metrics import Metric
from funcnn.train.inputs import DeviceData, prepare_data
from funcnn.train.state import Penalty, TrainState, check_opt_state
from funcnn.train.step import (_evaluate_arrays, check_engine, check_loss_domain,
                               metric_set, train_step)

Array = jax.Array


# --------------------------------------------------------------------------------------
# Compiled epochs
# --------------------------------------------------------------------------------------

def _all_finite(tree: Any) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def run_epochs(state: TrainState, x: Array, y: Array, penalty: Penalty | None,
               val: tuple[Array, Array] | None, *, model: nn.Layer, loss: Callable,
               update: Callable, engine: str, batch_size: int, shuffle: bool,
               epochs: int, guard: bool = False, metrics: tuple[Metric, ...] | None = None,
               diagnostics: tuple[str, ...] = (), per_step: bool = False,
               ) -> tuple[TrainState, dict[str, Array]]:
    """``epochs`` epochs as one nested ``lax.scan`` (pure; ``fit`` jits it).

    Each epoch: a permutation of the examples drawn on device, then ``N // batch_size``
    steps, each gathering its minibatch from the permutation. Returns per-epoch metrics
    (arrays of length ``epochs``: ``loss``, each metric by name (``metrics``: a tuple of
    :class:`~funcnn.metrics.Metric`, default the loss's natural one), ``val_`` ones with
    validation data, and ``data_loss`` only with a penalty, as without one it equals
    ``loss``; with ``diagnostics``, one column per diagnostic and layer, shape
    ``(epochs, steps)`` when ``per_step``; ``update_ratio`` once per epoch). With
    ``guard=True`` a step whose loss or new weights are not finite is rejected, and so
    are all steps after it: the state returned is the last finite one, and ``bad_step``
    says where it went wrong (-1: nowhere).
    """
    metrics = metric_set(loss, metrics, "run_epochs")
    n = x.shape[0]
    steps = n // batch_size
    full_batch = steps == 1 and batch_size == n

    def epoch(carry, _):
        state, bad_step = carry
        start = state.params
        e = state.step // steps
        if full_batch:
            perm = None
        elif shuffle:
            perm = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(state.key, 1), e), n)
        else:
            perm = jnp.arange(n)

        def step(carry, i):
            state, bad_step = carry
            if perm is None:
                xb, yb = x, y
            else:
                idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
                xb, yb = jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0)
            new, m = train_step(state, xb, yb, model=model, loss=loss, update=update,
                                engine=engine, penalty=penalty, metrics=metrics,
                                diagnostics=diagnostics)
            if guard:
                ok = (bad_step < 0) & jnp.isfinite(m["loss"]) & _all_finite(new.params)
                bad_step = jnp.where(ok | (bad_step >= 0), bad_step, state.step)
                new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
            return (new, bad_step), m

        (state, bad_step), m = jax.lax.scan(step, (state, bad_step), jnp.arange(steps))
        out = {k: v if per_step and is_diagnostic(k) else jnp.mean(v) for k, v in m.items()
               if k != "data_loss" or penalty is not None}
        if "update_ratio" in diagnostics:  # the epoch's change, once per epoch: no cost
            out.update(update_ratios(start, state.params))
        out["finite"] = jnp.all(jnp.isfinite(m["loss"]))
        lr = optim.learning_rate(update, state.opt_state)
        out["learning_rate"] = jnp.full((), jnp.nan) if lr is None else lr
        if val is not None:
            v = _evaluate_arrays(state.params, val[0], val[1], model=model, loss=loss,
                                 metrics=metrics)
            out.update({f"val_{k}": v[k] for k in v})
        return (state, bad_step), out

    (state, bad_step), metrics = jax.lax.scan(epoch, (state, jnp.array(-1, jnp.int32)), None,
                                              length=epochs)
    metrics["bad_step"] = bad_step
    # A non-finite weight after epoch k makes epoch k+1's loss non-finite, so only the
    # last epoch's weights need their own check.
    metrics["finite"] = metrics["finite"].at[-1].set(
        metrics["finite"][-1] & _all_finite(state.params))
    return state, metrics


_run_epochs = jax.jit(run_epochs, static_argnames=(
    "model", "loss", "update", "engine", "batch_size", "shuffle", "epochs", "guard",
    "metrics", "diagnostics", "per_step"))


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------

class DivergedError(FloatingPointError):
    """The loss or the weights stopped being finite during training.

    ``state`` is the last state whose loss and weights were finite, ``history`` the
    metrics of the epochs completed before, ``epoch`` and ``step`` where it happened.
    """

    def __init__(self, message: str, *, state: TrainState, history: History, epoch: int,
                 step: int):
        super().__init__(message)
        self.state, self.history, self.epoch, self.step = state, history, epoch, step


@dataclasses.dataclass
class History:
    """Per-epoch metrics as numpy arrays: ``loss``, ``data_loss``, ``learning_rate``,
    each metric by name (by default the loss's natural one: ``accuracy`` for
    classification, ``mae`` for regression) and, with validation data, ``val_loss``
    and ``val_`` + each metric's name; with ``fit(..., diagnostics=...)`` one column
    per diagnostic and layer (``grad_norm[0].b``, ...). With ``diagnostics_every=k``
    those are in ``steps`` instead: ``steps["step"]`` the update numbers, and the means
    over each block of ``k`` updates."""

    metrics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    steps: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    _pending: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.metrics[name]

    def __len__(self) -> int:
        return len(self.metrics.get("loss", ()))

    def append(self, chunk: dict[str, np.ndarray]) -> None:
        if "data_loss" not in chunk:  # no penalty: the data loss is the loss
            chunk = {**chunk, "data_loss": chunk["loss"]}
        for k, v in chunk.items():
            self.metrics[k] = np.concatenate([self.metrics.get(k, np.zeros((0,), v.dtype)), v])

    def append_steps(self, values: dict[str, np.ndarray], first_step: int, every: int) -> None:
        """Per-step diagnostics (each ``(epochs, steps)``) from update ``first_step + 1``
        on, recorded as means over blocks of ``every`` updates."""
        records, self._pending = block_means(
            {k: np.ravel(v) for k, v in values.items()}, first_step, every, self._pending)
        for k, v in records.items():
            self.steps[k] = np.concatenate([self.steps.get(k, np.zeros((0,), v.dtype)), v])

    def last(self) -> dict[str, float]:
        """The final epoch's metrics."""
        return {k: float(v[-1]) for k, v in self.metrics.items()}


def _progress_bar(total: int, enabled: bool | None):
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="epoch", leave=False)


def _format(epoch: int, m: dict[str, float], names: tuple[str, ...]) -> str:
    """An NNFS-style log line (``acc`` for ``accuracy``, as the book prints it)."""
    short = lambda k: "acc" if k == "accuracy" else k  # noqa: E731
    line = f"epoch: {epoch}, " + "".join(f"{short(k)}: {m[k]:.3f}, " for k in names)
    line += f"loss: {m['loss']:.3f}"
    if "data_loss" in m:
        line += f" (data_loss: {m['data_loss']:.3f}, reg_loss: {m['loss'] - m['data_loss']:.3f})"
    line += f", lr: {m['learning_rate']:.6g}"
    if "val_loss" in m:
        line += "".join(f", val_{short(k)}: {m['val_' + k]:.3f}" for k in names)
        line += f", val_loss: {m['val_loss']:.3f}"
    return line


def fit(model: nn.Layer, loss: Callable, optimizer: optim.Optimizer, state: TrainState,
        x: Any, y: Any = None, *, epochs: int, batch_size: int | None = None,
        validation_data: tuple[Any, Any] | None = None, engine: str = "backprop",
        metrics: Any = None, diagnostics: Any = None, diagnostics_every: int | None = None,
        penalty: Penalty | None = None, shuffle: bool = True, log_every: int | None = None,
        progress: bool | None = None, epochs_per_call: int | None = None,
        on_chunk: Callable[[TrainState, History], None] | None = None,
        ) -> tuple[TrainState, History]:
    """Trains for ``epochs`` epochs of minibatches; returns the final state and history.

    Args:
      model, loss, optimizer: what to train, on what objective, with what rule.
      state: from :func:`init_state` (or a loaded checkpoint).
      x, y: the training set, batch-first; checked for matching lengths, NaN/inf and
        labels within the model's classes before anything runs. For many calls on the
        same data pass ``x=train.device_data(x, y, ...)`` and ``y=None``: checked once.
      epochs: passes over the data. ``batch_size``: examples per step (default: the
        whole set); the last ``N % batch_size`` examples of each shuffled epoch are
        left out, a different few each epoch.
      validation_data: ``(x_val, y_val)`` evaluated after every epoch.
      engine: ``"backprop"`` (hand-derived rules only; a layer or loss without one is an
        error), ``"mixed"`` (hand rules, and ``jax.vjp`` where a layer or loss has none)
        or ``"jax"`` (``jax.grad`` throughout).
      metrics: what to report besides the loss, per epoch: a list of
        :class:`~funcnn.metrics.Metric` or functions ``(pred, target) -> scalar``, or a
        dict name -> function; default the loss's natural metric (``loss.metric``).
      diagnostics: gradient-flow diagnostics to record inside the compiled loop (a list
        of :data:`funcnn.diagnostics.NAMES`, or True for all that apply): per-layer gradient norms
        (Nielsen's speed of learning), update-to-weight ratios, saturated and dead
        units; history columns such as ``grad_norm[0].b``, the mean over each epoch.
      diagnostics_every: record them every this many steps instead (means over each
        block of steps, in ``history.steps``).
      penalty: optional :class:`Penalty` (L1/L2 on the weights).
      log_every: print an NNFS-style line every this many epochs.
      progress: a tqdm progress bar (default: only on a terminal, if tqdm is installed).
      epochs_per_call: epochs compiled into one call (default: enough for ~2048 steps).
      on_chunk: called with ``(state, history)`` after each compiled call (checkpoints).

    Raises:
      DivergedError: the loss or weights became NaN/inf; it names the epoch and step and
        carries the last finite state.
    """
    check_engine(engine, model, loss, "fit")
    chosen = metric_set(loss, metrics, "fit")
    diag_names, every = check_names(diagnostics, diagnostics_every, "fit")
    if not isinstance(state, TrainState):
        raise TypeError(f"fit: state must be a TrainState from train.init_state; got "
                        f"{type(state).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"fit: epochs must be a positive int; got {epochs!r}")
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
    xd, yd = prepare_data(model, loss, state.params, x, y)
    check_opt_state(optimizer, state, "fit")
    if penalty is not None:
        check_penalty(penalty, "fit", xd.dtype)
    if bad := _nonfinite_leaves(state.params):
        raise ValueError(f"fit: the given params already hold NaN or inf (at {', '.join(bad)}); "
                         "there is no finite state to train from. Re-initialise them "
                         "(train.init_state) or load an earlier checkpoint.")
    check_loss_domain(model, loss, state.params, xd, yd, "fit")
    n = xd.shape[0]
    batch_size = n if batch_size is None else batch_size
    if not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= n:
        raise ValueError(f"fit: batch_size must be an int in [1, {n}] (the number of "
                         f"examples); got {batch_size!r}")
    batch_size = int(batch_size)
    val = None
    if validation_data is not None:
        val = prepare_data(model, loss, state.params, *validation_data) \
            if not isinstance(validation_data, DeviceData) else \
            prepare_data(model, loss, state.params, validation_data, None)
    if penalty is not None:
        penalty = jax.tree.map(lambda c: jnp.asarray(c, xd.dtype), penalty)
    steps = n // batch_size
    if diag_names:
        diag_names = check_model(diag_names, every, model, state.params, xd, epochs * steps,
                                 "fit", strict=diagnostics is not True)
    if epochs_per_call is None:
        epochs_per_call = max(1, min(epochs, math.ceil(2048 / steps)))
    config = dict(model=model, loss=loss, update=optimizer.update, engine=engine,
                  batch_size=batch_size, shuffle=shuffle, metrics=chosen,
                  diagnostics=diag_names, per_step=every is not None)
    history = History()
    bar = _progress_bar(epochs, progress)
    done = 0
    first_epoch = int(state.step) // steps  # epochs already run, when resuming
    try:
        while done < epochs:
            k = min(epochs_per_call, epochs - done)
            new, m = _run_epochs(state, xd, yd, penalty, val, epochs=k, **config)
            m = jax.device_get(m)
            if not np.all(m["finite"]):
                _diverged(state, xd, yd, penalty, val, k, done, steps, history, config, every)
            chunk = {key: np.asarray(v) for key, v in m.items()
                     if key not in ("finite", "bad_step")}
            if every is not None:
                history.append_steps({k: chunk.pop(k) for k in list(chunk)
                                      if is_diagnostic(k)}, int(state.step), every)
            state = new
            history.append(chunk)
            for i in range(k):
                epoch = first_epoch + done + i + 1
                if log_every and (epoch % log_every == 0 or done + i + 1 == epochs):
                    line = _format(epoch, {key: float(v[i]) for key, v in chunk.items()},
                                   tuple(m.name for m in chosen))
                    (bar.write if bar is not None else print)(line)
            done += k
            if bar is not None:
                bar.update(k)
                bar.set_postfix(loss=f"{chunk['loss'][-1]:.4f}",
                                **{m.name: f"{chunk[m.name][-1]:.3f}" for m in chosen})
            if on_chunk is not None:
                on_chunk(state, history)
    finally:
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


def _suspects(state: TrainState, penalty: Penalty | None) -> list[str]:
    """What other than the learning rate can make training non-finite, found in the
    optimizer's hyperparameters and the penalty (for DivergedError's message)."""
    found = []
    try:
        hparams = optim.hyperparams(state.opt_state)
    except TypeError:  # an optimizer from another library
        hparams = {}
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
    return found


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


def _diverged(state, xd, yd, penalty, val, k, done, steps, history, config, every):
    """Reruns a chunk that went non-finite with the guard on, and raises."""
    last_good, m = _run_epochs(state, xd, yd, penalty, val, epochs=k, guard=True, **config)
    bad = int(m["bad_step"])
    if bad < 0:  # the last update of the chunk made the weights non-finite
        bad = int(last_good.step)
    epoch, step = bad // steps + 1, bad % steps + 1
    good_epochs = int(last_good.step) // steps - done
    chunk = {key: np.asarray(v)[:good_epochs] for key, v in jax.device_get(m).items()
             if key not in ("finite", "bad_step")}
    if every is not None:
        history.append_steps({k: chunk.pop(k) for k in list(chunk) if is_diagnostic(k)},
                             int(state.step), every)
    history.append(chunk)
    where = (f"training diverged: the loss or the weights became NaN/inf at epoch {epoch}, "
             f"step {step} (update {bad + 1} of the run). The returned state (error.state) "
             "is the last finite one. ")
    suspects = _suspects(state, penalty)
    if suspects:
        advice = "Found: " + "; ".join(suspects) + ". Fix that first."
    else:
        advice = ("Nothing else looks wrong (data, parameters, penalty and hyperparameters "
                  "are finite), so try a smaller learning rate, gradient clipping "
                  "(optim.clip_by_global_norm), or look for extreme values in the data.")
    raise DivergedError(where + advice, state=last_good, history=history, epoch=epoch,
                        step=step)
