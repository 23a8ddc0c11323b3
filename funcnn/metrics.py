"""Metrics: what training reports besides the loss. Not differentiated, no rules.

A metric is a named function ``(pred, target) -> scalar``, the batch mean. ``fit``,
``evaluate`` and ``sweep.run`` take ``metrics=[...]``; without it they report the
loss's natural metric (``loss.metric``: accuracy for the classification losses, MAE
for the regression ones), and nothing else: no NaN placeholders.

    fit(model, losses.mse, opt, state, x, y, epochs=5,
        metrics=[metrics.accuracy, metrics.mae])        # Nielsen ch. 1: MSE + argmax
    fit(..., metrics={"acc": metrics.regression_accuracy(np.std(y) / 250)})  # NNFS ch. 17

A plain function works too; its ``__name__`` names the history column (pass a dict
for a lambda).

Domains are checked at the boundary, for the metrics here and the losses alike: an
empty batch raises always (its shape is known even inside ``jit``); when the values are
known (outside ``jit``) so do NaN or inf, probabilities outside ``[0, 1]`` (logits given
where probabilities belong), soft labels that are not distributions, and binary targets
outside ``[0, 1]``. Inside ``jit`` the values are tracers and only shapes are checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn._checks import concrete

Array = jax.Array

__all__ = ["Metric", "accuracy", "binary_accuracy", "binary_accuracy_logits", "mae",
           "regression_accuracy", "as_metrics", "compute", "check_same", "check_pred",
           "check_unit_interval", "check_distributions", "one_hot_targets", "poison"]


@dataclasses.dataclass(frozen=True)
class Metric:
    """A named metric ``fn(pred, target) -> scalar`` (the batch mean).

    Metrics compare equal when name and function are the same, so passing the same
    ones again reuses the compiled training program.
    """

    name: str
    fn: Callable[[Array, Array], Array]

    def __call__(self, pred: Array, target: Array) -> Array:
        return self.fn(pred, target)


# --------------------------------------------------------------------------------------
# Label checks shared with the losses
# --------------------------------------------------------------------------------------

def check_pred(name: str, pred: Array, ndim: int | None = 2) -> np.ndarray | None:
    """Predictions must be a floating array (of rank ``ndim``: (batch, classes)), not
    empty, and finite.

    An empty batch raises even inside ``jit`` (its shape is static there), since the
    mean over 0 examples is NaN. NaN or inf raise when the values are known. Returns
    ``pred``'s values as numpy when they are known, ``None`` inside a trace.
    """
    if not hasattr(pred, "shape"):
        raise TypeError(f"{name}: predictions must be an array; got {type(pred).__name__}")
    if ndim is not None and pred.ndim != ndim:
        raise ValueError(f"{name}: expected predictions of shape (batch, classes); got "
                         f"shape {tuple(pred.shape)}")
    if not jnp.issubdtype(pred.dtype, jnp.floating):
        raise TypeError(f"{name}: predictions must be floating point; got {pred.dtype}")
    if pred.size == 0:
        if pred.shape[0] == 0:
            raise ValueError(f"{name}: pred is an empty batch (shape {tuple(pred.shape)}): "
                             "the mean over 0 examples is NaN. Pass at least one example "
                             "(check the data split or the batch slicing).")
        raise ValueError(f"{name}: pred has no outputs per example (shape "
                         f"{tuple(pred.shape)}); check the width of the model's last layer.")
    values = concrete(pred)
    if values is not None:
        _check_finite(name, "pred", values)
    return values


_NOT_FINITE = {"pred": "The model diverged, or its inputs are not finite",
               "target": "Check the labels or targets"}


def _check_finite(name: str, arg: str, values: np.ndarray) -> None:
    # A NaN or inf in pred or target makes every loss and metric NaN or inf.
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(f"{name}: {arg} holds NaN or inf ({int(bad.sum())} of "
                         f"{values.size} values). {_NOT_FINITE[arg]}.")


def _sum_tolerance(dtype: Any) -> float:
    """How far a row of probabilities may sum from 1: ``sqrt(eps)`` of its float type,
    and no less than float32's (3e-4), so that probabilities computed in float32 and
    cast to float64 pass; an unnormalised row (logits, doubled labels) is off by far
    more."""
    return max(float(jnp.finfo(dtype).eps), float(jnp.finfo(jnp.float32).eps)) ** 0.5


def check_unit_interval(name: str, arg: str, x: Any, fix: str) -> None:
    """Raises ValueError (naming ``arg`` and ``fix``) unless every value of ``x`` lies in
    ``[0, 1]``: probabilities, or binary targets. Checked only when the values are known
    (outside ``jit``)."""
    values = concrete(x)
    if values is None or values.size == 0:
        return
    values = values.astype(np.float64)
    _check_finite(name, arg, values)
    lo, hi = values.min(), values.max()
    if lo < 0 or hi > 1:
        raise ValueError(f"{name}: {arg} must lie in [0, 1]; got values in [{lo:.6g}, "
                         f"{hi:.6g}]. {fix}.")


def check_distributions(name: str, arg: str, x: Any, what: str, fix: str) -> None:
    """Raises ValueError (naming ``arg``, what it must be, and ``fix``) unless each row of
    ``x`` (last axis) is a probability distribution: entries >= 0 summing to 1 within
    :func:`_sum_tolerance` of its dtype. Checked only when the values are known."""
    values = concrete(x)
    if values is None or values.size == 0:
        return
    dtype = values.dtype
    values = values.astype(np.float64)
    _check_finite(name, arg, values)
    lo, hi = values.min(), values.max()
    if lo < 0:
        raise ValueError(f"{name}: {arg} must be {what}; got negative values (values in "
                         f"[{lo:.6g}, {hi:.6g}]). {fix}.")
    # Entries >= 0 summing to 1 are also <= 1.
    sums = values.sum(axis=-1).reshape(-1)
    worst = int(np.argmax(np.abs(sums - 1)))
    if abs(sums[worst] - 1) > _sum_tolerance(dtype):
        raise ValueError(f"{name}: {arg} must be {what}; row {worst} sums to "
                         f"{sums[worst]:.6g}, not 1. {fix}.")


def one_hot_targets(name: str, pred: Array, labels: Array) -> tuple[Array, Array]:
    """Checks ``labels`` against ``pred`` (batch, classes) and returns ``(targets, ok)``.

    ``labels`` are integer class indices of shape ``(batch,)`` or a one-hot / soft label
    array of ``pred``'s shape, each row a distribution (a row summing to 2 would double
    the loss, a negative entry make it negative: both raise when the values are known).
    ``targets`` is the float target distribution; ``ok`` is a scalar bool, false when a
    (traced) integer label is out of range.
    """
    labels = jnp.asarray(labels) if not hasattr(labels, "dtype") else labels
    n, classes = pred.shape
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != (n,):
            hint = ": a column of labels; pass y.ravel()" if labels.shape == (n, 1) else ""
            raise ValueError(
                f"{name}: integer labels must have shape (batch,) = ({n},) to match "
                f"predictions of shape {tuple(pred.shape)}; got {tuple(labels.shape)}{hint}")
        values = concrete(labels)
        if values is not None and values.size and (values.min() < 0
                                                   or values.max() >= classes):
            bad = values[(values < 0) | (values >= classes)]
            raise ValueError(
                f"{name}: labels must be class indices in [0, {classes}); got "
                f"{bad[:5].tolist()} (min {values.min()}, max {values.max()}). Check the "
                "number of outputs of the last layer and the labels.")
        ok = jnp.all((labels >= 0) & (labels < classes))
        targets = (labels[:, None] == jnp.arange(classes)[None, :]).astype(pred.dtype)
        return targets, ok
    if jnp.issubdtype(labels.dtype, jnp.floating):
        if labels.shape != pred.shape:
            hint = ""
            values = concrete(labels)
            finite = np.zeros(0) if values is None else values[np.isfinite(values)]
            odd = finite[np.mod(finite, 1) != 0].ravel()[:3].tolist()  # not whole numbers
            if labels.shape in ((n,), (n, 1)) and not odd:  # class indices stored as floats
                hint = (f". Float labels of shape {tuple(labels.shape)} look like class "
                        "indices stored as floats: pass integers, y.astype(int)"
                        + (".ravel()" if labels.ndim == 2 else ""))
            elif labels.shape in ((n,), (n, 1)):
                hint = (f". These labels are not whole numbers ({odd}), so not class "
                        "indices: for real-valued targets use a regression loss "
                        "(losses.mse, one output per target); for soft labels give each "
                        f"example a row of {classes} probabilities")
            raise ValueError(
                f"{name}: one-hot or soft labels must have the predictions' shape "
                f"{tuple(pred.shape)}; got {tuple(labels.shape)} ({labels.dtype}){hint}")
        check_distributions(
            name, "target", labels, "one-hot or soft labels: each row a distribution "
            "(entries >= 0 summing to 1)", "Pass integer class indices, or normalise the "
            "rows: target / target.sum(axis=1, keepdims=True)")
        return labels.astype(pred.dtype), jnp.array(True)
    raise TypeError(f"{name}: labels must be integer class indices or float one-hot/soft "
                    f"labels; got dtype {labels.dtype}")


def check_same(name: str, pred: Array, target: Array) -> Array:
    """Predictions and targets of one shape, both finite when their values are known;
    returns the target in ``pred``'s dtype."""
    check_pred(name, pred, ndim=None)
    values = concrete(target)
    target = jnp.asarray(target)
    if pred.ndim == 0 or target.shape != pred.shape:
        raise ValueError(f"{name}: predictions and targets must have the same batch-first "
                         f"shape; got {tuple(pred.shape)} and {tuple(target.shape)}")
    if values is not None and jnp.issubdtype(target.dtype, jnp.inexact):
        _check_finite(name, "target", values)
    return target.astype(pred.dtype)


def poison(value: Array, ok: Array) -> Array:
    """``value`` where ``ok``, NaN elsewhere (for labels found invalid inside jit)."""
    return jnp.where(ok, value, jnp.nan)


# --------------------------------------------------------------------------------------
# The metrics
# --------------------------------------------------------------------------------------

def _accuracy(pred: Array, labels: Array) -> Array:
    check_pred("accuracy", pred)
    labels = jnp.asarray(labels)
    n, classes = pred.shape
    if classes == 1:
        # One column: a binary classifier's probability, thresholded at 0.5, against 0/1
        # labels (a label 5 would count as class 1).
        if labels.shape == (n,):
            labels = labels.reshape(pred.shape)
        t = check_same("accuracy", pred, labels)
        values = concrete(labels)
        if (values is not None and jnp.issubdtype(labels.dtype, jnp.integer)
                and not np.isin(values, (0, 1)).all()):
            bad = values[~np.isin(values, (0, 1))]
            raise ValueError(
                f"accuracy: with one output column the target labels must be 0 or 1 (a "
                f"binary classifier); got {bad[:5].tolist()}. For C classes give the model "
                "C outputs.")
        check_unit_interval("accuracy", "target", labels, "With one output column the "
                            "targets are binary: 0 or 1 (or probabilities)")
        check_unit_interval("accuracy", "pred", pred, "With one output column, accuracy "
                            "thresholds probabilities at 0.5; for logits use "
                            "metrics.binary_accuracy_logits")
        # Traced integer labels cannot be checked: one outside {0, 1} makes it NaN.
        ok = (jnp.all((labels == 0) | (labels == 1))
              if jnp.issubdtype(labels.dtype, jnp.integer) else jnp.array(True))
        return poison(jnp.mean(((pred > 0.5) == (t > 0.5)).astype(pred.dtype)), ok)
    targets, ok = one_hot_targets("accuracy", pred, labels)
    hit = jnp.argmax(pred, axis=-1) == jnp.argmax(targets, axis=-1)
    return poison(jnp.mean(hit.astype(pred.dtype)), ok)


#: Fraction of examples whose highest score is the true class. ``pred`` is (batch,
#: classes) logits or probabilities; labels are integer classes or one-hot rows (their
#: argmax is used). For one output column, a prediction counts as class 1 when it is
#: above 0.5 (probabilities, as NNFS's binary accuracy), and the labels must be 0 or 1.
accuracy = Metric("accuracy", _accuracy)


def _threshold_accuracy(name: str, threshold: float,
                        pred_fix: str | None) -> Callable[[Array, Array], Array]:
    # pred_fix: None for logits (any finite value), else the hint when pred is not in
    # [0, 1].
    def fn(pred, target):
        t = check_same(name, pred, target)
        check_unit_interval(name, "target", target, "Binary targets are 0 or 1 (or "
                            "probabilities)")
        if pred_fix is not None:
            check_unit_interval(name, "pred", pred, pred_fix)
        return jnp.mean(((pred > threshold) == (t > 0.5)).astype(pred.dtype))
    return fn


#: Binary accuracy on probabilities (a sigmoid's output): ``pred > 0.5`` against
#: ``target > 0.5``, over every output (NNFS chapter 16).
binary_accuracy = Metric("accuracy", _threshold_accuracy(
    "binary_accuracy", 0.5, "These look like logits; use metrics.binary_accuracy_logits"))
#: Binary accuracy on logits: ``pred > 0`` (``sigmoid(pred) > 0.5``) against ``target``.
binary_accuracy_logits = Metric("accuracy", _threshold_accuracy(
    "binary_accuracy_logits", 0.0, None))


def _mae(pred: Array, target: Array) -> Array:
    t = check_same("mae", pred, target)
    return jnp.mean(jnp.abs(pred - t))


#: Mean absolute error, ``mean(|pred - target|)`` (the regression losses' metric).
mae = Metric("mae", _mae)


def regression_accuracy(precision: float) -> Metric:
    """NNFS chapter 17's regression "accuracy": the fraction of outputs within
    ``precision`` of the target. The book takes ``precision = np.std(y_train) / 250``;
    compute it once on the training targets and pass it here."""
    p = concrete(precision)
    if p is None or p.shape != () or not p > 0:
        raise ValueError(f"regression_accuracy: precision must be a positive number, e.g. "
                         f"np.std(y_train) / 250; got {precision!r}")
    p = float(p)

    def fn(pred, target):
        t = check_same("regression_accuracy", pred, target)
        return jnp.mean((jnp.abs(pred - t) < p).astype(pred.dtype))

    return Metric("accuracy", fn)


def as_metrics(metrics: Any, default: Metric | None, where: str) -> tuple[Metric, ...]:
    """``metrics`` as a tuple of :class:`Metric` with distinct names.

    ``None`` gives ``(default,)`` (or ``()``); a sequence may mix metrics, losses
    (reported under their name: ``losses.mse`` as ``"mse"``) and plain functions (named
    by ``__name__``); a mapping names each function.
    """
    if metrics is None:
        return () if default is None else (default,)
    if isinstance(metrics, (Metric, str)) or callable(metrics):
        metrics = [metrics]
    if isinstance(metrics, Mapping):
        items = [Metric(str(k), v.fn if isinstance(v, Metric) else v)
                 for k, v in metrics.items()]
    elif isinstance(metrics, Sequence):
        items = []
        for m in metrics:
            if isinstance(m, Metric):
                items.append(m)
            elif hasattr(m, "value") and hasattr(m, "name") and callable(m):  # a Loss
                items.append(Metric(m.name, m.value))
            elif callable(m):
                name = getattr(m, "__name__", None)
                if not name or name == "<lambda>":
                    raise ValueError(f"{where}: cannot name the metric {m!r}; pass a dict "
                                     "such as metrics={'my_metric': fn}")
                items.append(Metric(name, m))
            else:
                raise TypeError(f"{where}: a metric must be a funcnn.metrics.Metric or a "
                                f"function (pred, target) -> scalar; got {m!r}")
    else:
        raise TypeError(f"{where}: metrics must be a list of metrics or a dict of name -> "
                        f"function; got {type(metrics).__name__}")
    for m in items:
        if not callable(m.fn):
            raise TypeError(f"{where}: metric {m.name!r} is not a function: {m.fn!r}")
    names = [m.name for m in items]
    reserved = {"loss", "data_loss", "learning_rate"}
    if dup := sorted({n for n in names if names.count(n) > 1} | (set(names) & reserved)):
        raise ValueError(f"{where}: metric names must be distinct and not one of "
                         f"{sorted(reserved)}; {dup} clash. Name them with a dict, e.g. "
                         "metrics={'acc': metrics.accuracy, 'mae': metrics.mae}")
    return tuple(items)


def compute(metrics: tuple[Metric, ...], pred: Array, target: Array) -> dict[str, Array]:
    """Every metric on one batch; a metric that does not return a scalar is an error."""
    out = {}
    for m in metrics:
        v = jnp.asarray(m.fn(pred, target))
        if v.shape != ():
            raise ValueError(f"metric {m.name!r} must return a scalar (the batch mean); "
                             f"it returned shape {tuple(v.shape)}")
        out[m.name] = v
    return out
