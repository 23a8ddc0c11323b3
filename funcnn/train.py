"""Training: an immutable train state, a pure train step, evaluate, and fit.

The loop, in the words of the NNFS book: forward pass, loss, backward pass, optimizer
step, repeated over minibatches and epochs. Here each piece is a pure function::

    state = train.init_state(model, opt, jax.random.key(0), (2,))
    state, history = train.fit(model, losses.softmax_cross_entropy, opt, state, x, y,
                               epochs=10, batch_size=128)

Speed: ``fit`` compiles whole epochs, an on-device shuffle plus every minibatch step,
into one ``lax.scan``, and for tiny epochs (full-batch spiral data) several epochs
into one call, so Python runs once per chunk of work rather than once per step.

Gradients come from the hand-derived :mod:`funcnn.backprop` (``engine="backprop"``,
the default) or from ``jax.grad`` (``engine="jax"``); both follow the same
trajectory to float tolerance, which the tests check.

Randomness: ``state.key`` is fixed for the run; the dropout key of step ``s`` is
``fold_in(fold_in(key, 0), s)`` and the shuffle of epoch ``e`` uses
``fold_in(fold_in(key, 1), e)``. So a run resumed from a checkpoint draws exactly
what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import backprop, losses, nn, optim
from funcnn.data import check_dataset

Array = jax.Array

__all__ = ["TrainState", "Penalty", "DivergedError", "History", "DeviceData", "init_state",
           "dense_penalty", "device_data", "prepare_data", "train_step", "evaluate", "fit",
           "run_epochs", "ENGINES"]

ENGINES = ("backprop", "jax")


# --------------------------------------------------------------------------------------
# State and penalties
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a run needs to continue: weights, optimizer state, step, key.

    ``step`` counts the optimizer updates applied so far; ``key`` is the run's PRNG key
    (fixed; per-step keys are derived from it and ``step``).
    """

    params: Any
    opt_state: Any
    step: Array
    key: Array


@dataclasses.dataclass(frozen=True)
class Penalty:
    """L1 and L2 penalties on the weights (NNFS chapter 14), added to the loss.

    ``l1`` and ``l2`` are coefficient pytrees that are *prefixes* of the parameters: a
    single number applies to every weight and bias; a tree such as
    ``(nn.Dense(w=5e-4, b=5e-4), nn.NoParams(), nn.Dense(w=0.0, b=0.0))`` sets each
    layer's own coefficients. The penalty is ``sum l1 * |w| + l2 * w^2``. Coefficients
    are arrays at run time, so sweeping them does not recompile.
    """

    l1: Any = 0.0
    l2: Any = 0.0

    def value(self, params: Any) -> Array:
        """``sum_layers l1 * sum|w| + l2 * sum w^2``."""
        parts = jax.tree.leaves((
            jax.tree.map(lambda c, sub: c * losses.l1(sub), self.l1, params),
            jax.tree.map(lambda c, sub: c * losses.l2(sub), self.l2, params)))
        return sum(parts[1:], parts[0]) if parts else jnp.zeros(())

    def grad(self, params: Any) -> Any:
        """Hand rule: ``l1 * sign(w) + 2 * l2 * w`` (see ``backprop.PENALTY_RULES``)."""
        d1 = jax.tree.map(lambda c, sub: jax.tree.map(
            lambda g: c * g, backprop.PENALTY_RULES[losses.l1](sub)), self.l1, params)
        d2 = jax.tree.map(lambda c, sub: jax.tree.map(
            lambda g: c * g, backprop.PENALTY_RULES[losses.l2](sub)), self.l2, params)
        return jax.tree.map(lambda a, b: a + b, d1, d2)


jax.tree_util.register_dataclass(TrainState, data_fields=["params", "opt_state", "step", "key"],
                                 meta_fields=[])
jax.tree_util.register_dataclass(Penalty, data_fields=["l1", "l2"], meta_fields=[])


def dense_penalty(params: Any, *, weight_l1: float = 0.0, weight_l2: float = 0.0,
                  bias_l1: float = 0.0, bias_l2: float = 0.0) -> Penalty:
    """The same NNFS-style penalty on every dense layer (weights and biases apart).

    For per-layer values build :class:`Penalty` trees by hand, or use this on a slice.
    """
    def coeffs(w, b):
        return jax.tree.map(lambda node: nn.Dense(w=w, b=b) if isinstance(node, nn.Dense)
                            else jax.tree.map(lambda _: 0.0, node),
                            params, is_leaf=lambda node: isinstance(node, nn.Dense))
    return Penalty(l1=coeffs(weight_l1, bias_l1), l2=coeffs(weight_l2, bias_l2))


def init_state(model: nn.Layer, optimizer: optim.Optimizer, key: Array,
               input_shape: tuple[int, ...], *, dtype: Any = jnp.float32,
               params: Any = None) -> TrainState:
    """A fresh train state: weights from ``model.init`` (or ``params`` given) and the
    optimizer's state. ``key`` is split into an init key and the run's key."""
    k_init, k_run = jax.random.split(key)
    if params is None:
        params = model.init(k_init, input_shape, dtype)
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), k_run)


# --------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------

def _metric(loss: Callable, out: Array, y: Array) -> Array:
    """Accuracy for classification losses; NaN for regression."""
    if loss in (losses.softmax_cross_entropy, losses.categorical_cross_entropy):
        return losses.accuracy(out, y)
    if loss is losses.binary_cross_entropy:
        return jnp.mean(((out > 0.5) == (y > 0.5)).astype(out.dtype))
    if loss is losses.binary_cross_entropy_with_logits:
        return jnp.mean(((out > 0) == (y > 0.5)).astype(out.dtype))
    return jnp.full((), jnp.nan, out.dtype)


def _loss_output_grads(model, loss, engine, params, x, y, key, penalty):
    """``(total, data_loss, output), grads`` of ``loss(model(x), y) + penalty(params)``."""
    if engine == "backprop":
        (data_loss, out), grads = backprop.value_and_grad(model, loss, return_output=True)(
            params, x, y, key=key, train=True)
        if penalty is None:
            return (data_loss, data_loss, out), grads
        grads = jax.tree.map(jnp.add, grads, penalty.grad(params))
        return (data_loss + penalty.value(params), data_loss, out), grads

    def objective(p):
        out = model.apply(p, x, key=key, train=True)
        data_loss = loss(out, y)
        total = data_loss if penalty is None else data_loss + penalty.value(p)
        return total, (data_loss, out)

    (total, (data_loss, out)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return (total, data_loss, out), grads


def train_step(state: TrainState, x: Array, y: Array, *, model: nn.Layer, loss: Callable,
               update: Callable, engine: str = "backprop",
               penalty: Penalty | None = None) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step on the batch ``(x, y)``: forward, loss, backward, update.

    Pure: returns the new state and this step's metrics (``loss`` with penalties,
    ``data_loss``, ``accuracy``). ``update`` is ``optimizer.update``. Jit it with
    ``model``, ``loss``, ``update`` and ``engine`` static.
    """
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.key, 0), state.step)
    (total, data_loss, out), grads = _loss_output_grads(
        model, loss, engine, state.params, x, y, dropout_key, penalty)
    updates, opt_state = update(grads, state.opt_state, state.params)
    params = optim.apply_updates(state.params, updates)
    new = TrainState(params, opt_state, state.step + 1, state.key)
    return new, {"loss": total, "data_loss": data_loss, "accuracy": _metric(loss, out, y)}


def _all_finite(tree: Any) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------

def _evaluate_arrays(params, x, y, *, model, loss):
    out = model.apply(params, x)
    return {"loss": loss(out, y), "accuracy": _metric(loss, out, y)}


_evaluate = jax.jit(_evaluate_arrays, static_argnames=("model", "loss"))


def evaluate(model: nn.Layer, loss: Callable, params: Any, x: Any,
             y: Any = None) -> dict[str, float]:
    """Loss and accuracy of ``params`` on ``(x, y)`` (no dropout), as Python floats."""
    x, y = prepare_data(model, loss, params, x, y)
    return {k: float(v) for k, v in _evaluate(params, x, y, model=model, loss=loss).items()}


# --------------------------------------------------------------------------------------
# Compiled epochs
# --------------------------------------------------------------------------------------

def run_epochs(state: TrainState, x: Array, y: Array, penalty: Penalty | None,
               val: tuple[Array, Array] | None, *, model: nn.Layer, loss: Callable,
               update: Callable, engine: str, batch_size: int, shuffle: bool,
               epochs: int, guard: bool = False) -> tuple[TrainState, dict[str, Array]]:
    """``epochs`` epochs as one nested ``lax.scan`` (pure; ``fit`` jits it).

    Each epoch: a permutation of the examples drawn on device, then ``N // batch_size``
    steps, each gathering its minibatch from the permutation. Returns per-epoch metrics
    (arrays of length ``epochs``; ``data_loss`` only with a penalty, as without one it
    equals ``loss``). With ``guard=True`` a step whose loss or new weights
    are not finite is rejected, and so are all steps after it: the state returned is the
    last finite one, and ``bad_step`` says where it went wrong (-1: nowhere).
    """
    n = x.shape[0]
    steps = n // batch_size
    full_batch = steps == 1 and batch_size == n

    def epoch(carry, _):
        state, bad_step = carry
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
                                engine=engine, penalty=penalty)
            if guard:
                ok = (bad_step < 0) & jnp.isfinite(m["loss"]) & _all_finite(new.params)
                bad_step = jnp.where(ok | (bad_step >= 0), bad_step, state.step)
                new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
            return (new, bad_step), m

        (state, bad_step), m = jax.lax.scan(step, (state, bad_step), jnp.arange(steps))
        out = {k: jnp.mean(v) for k, v in m.items() if k != "data_loss" or penalty is not None}
        out["finite"] = jnp.all(jnp.isfinite(m["loss"]))
        lr = optim.learning_rate(update, state.opt_state)
        out["learning_rate"] = jnp.full((), jnp.nan) if lr is None else lr
        if val is not None:
            v = _evaluate_arrays(state.params, val[0], val[1], model=model, loss=loss)
            out["val_loss"], out["val_accuracy"] = v["loss"], v["accuracy"]
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
    "model", "loss", "update", "engine", "batch_size", "shuffle", "epochs", "guard"))


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
    """Per-epoch metrics as numpy arrays: ``loss``, ``data_loss``, ``accuracy``,
    ``learning_rate`` and, with validation data, ``val_loss`` and ``val_accuracy``."""

    metrics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.metrics[name]

    def __len__(self) -> int:
        return len(self.metrics.get("loss", ()))

    def append(self, chunk: dict[str, np.ndarray]) -> None:
        if "data_loss" not in chunk:  # no penalty: the data loss is the loss
            chunk = {**chunk, "data_loss": chunk["loss"]}
        for k, v in chunk.items():
            self.metrics[k] = np.concatenate([self.metrics.get(k, np.zeros((0,), v.dtype)), v])

    def last(self) -> dict[str, float]:
        """The final epoch's metrics."""
        return {k: float(v[-1]) for k, v in self.metrics.items()}


class DeviceData(NamedTuple):
    """A data set checked once and placed on the device, for repeated ``fit`` calls.

    Made by :func:`device_data`. ``fit`` and ``evaluate`` accept it in place of
    ``x`` (with ``y=None``) and skip the checks and the host-to-device copy, which for
    60,000 MNIST images cost about as much as a third of an epoch on a CPU.
    """

    x: Array
    y: Array
    num_classes: int | None


@functools.lru_cache(maxsize=64)
def _num_classes(model: nn.Layer, params_shapes: Any, example_shape: tuple[int, ...]) -> int:
    treedef, leaves = params_shapes
    params = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])
    x = jax.ShapeDtypeStruct((1,) + example_shape, leaves[0][1] if leaves else jnp.float32)
    return int(jax.eval_shape(model.apply, params, x).shape[-1])


def _classes_of(model: nn.Layer, loss: Callable, params: Any, x: Any, y: Any) -> int | None:
    """The number of classes the labels must lie in, for integer-label losses."""
    if loss not in (losses.softmax_cross_entropy, losses.categorical_cross_entropy) or \
            not jnp.issubdtype(y.dtype, jnp.integer):
        return None
    leaves, treedef = jax.tree.flatten(params)
    shapes = (treedef, tuple((tuple(a.shape), jnp.dtype(a.dtype)) for a in leaves))
    return _num_classes(model, shapes, tuple(x.shape[1:]))


@jax.jit
def _device_summary(x, y):
    """Scalars that say whether device data is fine (finite, label range)."""
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else True
    if jnp.issubdtype(y.dtype, jnp.inexact):
        return finite & jnp.all(jnp.isfinite(y)), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)
    return finite, jnp.min(y).astype(jnp.int32), jnp.max(y).astype(jnp.int32)


def device_data(x: Any, y: Any, *, num_classes: int | None = None,
                dtype: Any = jnp.float32) -> DeviceData:
    """Checks ``(x, y)`` and puts it on the device as ``dtype`` inputs and int32 labels.

    Checks: the same number of examples, no NaN or inf, integer labels in
    ``[0, num_classes)``. Arrays already on the device are checked there (three
    scalars come back), numpy arrays on the host; a failure gives the detailed message
    of :func:`funcnn.data.check_dataset`.
    """
    if isinstance(x, jax.Array) and isinstance(y, jax.Array) and len(x) == len(y) and len(x):
        finite, lo, hi = jax.device_get(_device_summary(x, y))
        ok = bool(finite) and (num_classes is None or
                               not jnp.issubdtype(y.dtype, jnp.integer) or
                               (lo >= 0 and hi < num_classes))
        if not ok:
            check_dataset(np.asarray(x), np.asarray(y), num_classes=num_classes)
    else:
        check_dataset(np.asarray(x), np.asarray(y), num_classes=num_classes)
    xd = jnp.asarray(x, dtype)
    yd = jnp.asarray(y, jnp.int32) if jnp.issubdtype(jnp.asarray(y[:0]).dtype, jnp.integer) \
        else jnp.asarray(y, dtype)
    return DeviceData(xd, yd, num_classes)


def prepare_data(model: nn.Layer, loss: Callable, params: Any, x: Any,
                 y: Any = None) -> tuple[Array, Array]:
    """Checks a data set at the boundary and returns it on the device, as ``fit`` does.

    ``x`` may be a :class:`DeviceData` (then ``y`` is None): only its class count is
    checked against the model. Inputs take the parameters' float dtype.
    """
    dtype = jax.tree.leaves(params)[0].dtype
    if isinstance(x, DeviceData):
        if y is not None:
            raise ValueError("pass the labels inside DeviceData and y=None")
        data = x
        need = _classes_of(model, loss, params, data.x, data.y)
        if need is not None and data.num_classes != need:
            raise ValueError(f"this DeviceData was checked for num_classes="
                             f"{data.num_classes}, but the model has {need} outputs; make "
                             f"it with train.device_data(x, y, num_classes={need})")
        if data.x.dtype != dtype:
            data = data._replace(x=data.x.astype(dtype))
    else:
        if not hasattr(y, "dtype"):
            y = np.asarray(y)
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        data = device_data(x, y, num_classes=_classes_of(model, loss, params, x, y),
                           dtype=dtype)
    return data.x, data.y


def _progress_bar(total: int, enabled: bool | None):
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="epoch", leave=False)


def _format(epoch: int, m: dict[str, float]) -> str:
    line = f"epoch: {epoch}, acc: {m['accuracy']:.3f}, loss: {m['loss']:.3f}"
    if "data_loss" in m:
        line += f" (data_loss: {m['data_loss']:.3f}, reg_loss: {m['loss'] - m['data_loss']:.3f})"
    line += f", lr: {m['learning_rate']:.6g}"
    if "val_loss" in m:
        line += f", val_acc: {m['val_accuracy']:.3f}, val_loss: {m['val_loss']:.3f}"
    return line


def fit(model: nn.Layer, loss: Callable, optimizer: optim.Optimizer, state: TrainState,
        x: Any, y: Any = None, *, epochs: int, batch_size: int | None = None,
        validation_data: tuple[Any, Any] | None = None, engine: str = "backprop",
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
      engine: ``"backprop"`` (hand-derived rules) or ``"jax"`` (``jax.grad``).
      penalty: optional :class:`Penalty` (L1/L2 on the weights).
      log_every: print an NNFS-style line every this many epochs.
      progress: a tqdm progress bar (default: only on a terminal, if tqdm is installed).
      epochs_per_call: epochs compiled into one call (default: enough for ~2048 steps).
      on_chunk: called with ``(state, history)`` after each compiled call (checkpoints).

    Raises:
      DivergedError: the loss or weights became NaN/inf; it names the epoch and step and
        carries the last finite state.
    """
    if engine not in ENGINES:
        raise ValueError(f"fit: engine must be one of {ENGINES}; got {engine!r}")
    if not isinstance(state, TrainState):
        raise TypeError(f"fit: state must be a TrainState from train.init_state; got "
                        f"{type(state).__name__}")
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"fit: epochs must be a positive int; got {epochs!r}")
    xd, yd = prepare_data(model, loss, state.params, x, y)
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
    if epochs_per_call is None:
        epochs_per_call = max(1, min(epochs, math.ceil(2048 / steps)))
    config = dict(model=model, loss=loss, update=optimizer.update, engine=engine,
                  batch_size=batch_size, shuffle=shuffle)
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
                _diverged(state, xd, yd, penalty, val, k, done, steps, history, config)
            state = new
            chunk = {key: np.asarray(v) for key, v in m.items()
                     if key not in ("finite", "bad_step")}
            history.append(chunk)
            for i in range(k):
                epoch = first_epoch + done + i + 1
                if log_every and (epoch % log_every == 0 or done + i + 1 == epochs):
                    line = _format(epoch, {key: float(v[i]) for key, v in chunk.items()})
                    (bar.write if bar is not None else print)(line)
            done += k
            if bar is not None:
                bar.update(k)
                bar.set_postfix(loss=f"{chunk['loss'][-1]:.4f}",
                                acc=f"{chunk['accuracy'][-1]:.3f}")
            if on_chunk is not None:
                on_chunk(state, history)
    finally:
        if bar is not None:
            bar.close()
    return state, history


def _diverged(state, xd, yd, penalty, val, k, done, steps, history, config):
    """Reruns a chunk that went non-finite with the guard on, and raises."""
    last_good, m = _run_epochs(state, xd, yd, penalty, val, epochs=k, guard=True, **config)
    bad = int(m["bad_step"])
    if bad < 0:  # the last update of the chunk made the weights non-finite
        bad = int(last_good.step)
    epoch, step = bad // steps + 1, bad % steps + 1
    good_epochs = int(last_good.step) // steps - done
    history.append({key: np.asarray(v)[:good_epochs] for key, v in jax.device_get(m).items()
                    if key not in ("finite", "bad_step")})
    raise DivergedError(
        f"training diverged: the loss or the weights became NaN/inf at epoch {epoch}, step "
        f"{step} (update {bad + 1} of the run). The returned state (error.state) is the "
        "last finite one. Try a smaller learning rate, gradient clipping "
        "(optim.clip_by_global_norm), or check the data for extreme values.",
        state=last_good, history=history, epoch=epoch, step=step)
