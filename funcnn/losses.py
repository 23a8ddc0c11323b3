"""Loss functions and metrics, written by hand. Each returns the mean over the batch.

Every loss ``L(pred, target)`` here has a hand-derived gradient ``dL/dpred`` in
:mod:`funcnn.backprop`; ``LOSSES`` and ``PENALTIES`` list them so a test can check that
none is missing.

Numerical care:
  * ``softmax_cross_entropy`` works on logits through
    ``log_softmax(z) = z - logsumexp(z)`` with ``logsumexp(z) = m + log(sum(exp(z - m)))``,
    ``m = max(z)``: no clipping, finite for float32 logits of +-1e4.
  * ``categorical_cross_entropy`` works on probabilities and, as NNFS, clips them to
    ``[1e-7, 1 - 1e-7]`` so that ``log(0)`` never happens.

Labels are checked at the boundary. Integer labels outside ``[0, classes)`` raise when
their values are known; inside ``jit`` they are not, and JAX would silently clamp an
index, so there the loss turns NaN instead of quietly training on a wrong label (the
training loop then stops and names the step).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from funcnn._checks import concrete

Array = jax.Array

__all__ = [
    "softmax_cross_entropy", "categorical_cross_entropy", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "mse", "mae", "l1", "l2", "accuracy",
    "log_softmax", "one_hot_targets", "batch_mean", "CLIP", "LOSSES", "PENALTIES",
]

CLIP = 1e-7  # NNFS clips probabilities to [CLIP, 1 - CLIP] before taking logs


# --------------------------------------------------------------------------------------
# Checks and shared pieces
# --------------------------------------------------------------------------------------

def _check_pred(name: str, pred: Array, ndim: int | None = 2) -> None:
    if not hasattr(pred, "shape"):
        raise TypeError(f"{name}: predictions must be an array; got {type(pred).__name__}")
    if ndim is not None and pred.ndim != ndim:
        raise ValueError(f"{name}: expected predictions of shape (batch, classes); got "
                         f"shape {tuple(pred.shape)}")
    if not jnp.issubdtype(pred.dtype, jnp.floating):
        raise TypeError(f"{name}: predictions must be floating point; got {pred.dtype}")


def one_hot_targets(name: str, pred: Array, labels: Array) -> tuple[Array, Array]:
    """Checks ``labels`` against ``pred`` (batch, classes) and returns ``(targets, ok)``.

    ``labels`` are integer class indices of shape ``(batch,)`` or a one-hot / soft label
    array of ``pred``'s shape. ``targets`` is the float target distribution; ``ok`` is a
    scalar bool, false when a (traced) integer label is out of range.
    """
    labels = jnp.asarray(labels) if not hasattr(labels, "dtype") else labels
    n, classes = pred.shape
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != (n,):
            raise ValueError(
                f"{name}: integer labels must have shape (batch,) = ({n},) to match "
                f"predictions of shape {tuple(pred.shape)}; got {tuple(labels.shape)}")
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
            raise ValueError(
                f"{name}: one-hot or soft labels must have the predictions' shape "
                f"{tuple(pred.shape)}; got {tuple(labels.shape)}")
        return labels.astype(pred.dtype), jnp.array(True)
    raise TypeError(f"{name}: labels must be integer class indices or float one-hot/soft "
                    f"labels; got dtype {labels.dtype}")


def _check_same(name: str, pred: Array, target: Array) -> Array:
    _check_pred(name, pred, ndim=None)
    target = jnp.asarray(target)
    if pred.ndim == 0 or target.shape != pred.shape:
        raise ValueError(f"{name}: predictions and targets must have the same batch-first "
                         f"shape; got {tuple(pred.shape)} and {tuple(target.shape)}")
    return target.astype(pred.dtype)


def _poison(value: Array, ok: Array) -> Array:
    """``value`` where ``ok``, NaN elsewhere (for labels found invalid inside jit)."""
    return jnp.where(ok, value, jnp.nan)


def batch_mean(v: Array) -> Array:
    """The mean of per-example values ``v`` (shape ``(N,)``), summed pairwise.

    Adding N float32 numbers one after another lets the rounding error grow like
    ``N * eps``; adding them in pairs, then pairs of pairs (as numpy does), keeps it near
    ``log2(N) * eps``. It costs ``log2(N)`` vector additions.
    """
    n = v.shape[0]
    size = 1 << max(n - 1, 0).bit_length()
    if size > n:
        v = jnp.concatenate([v, jnp.zeros((size - n,), v.dtype)])
    while v.shape[0] > 1:
        half = v.shape[0] // 2
        v = v[:half] + v[half:]
    return v[0] / n


def log_softmax(z: Array) -> Array:
    """``z - logsumexp(z)`` over the last axis, stable for any finite ``z``."""
    m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    return z - (m + jnp.log(jnp.sum(jnp.exp(z - m), axis=-1, keepdims=True)))


# --------------------------------------------------------------------------------------
# Classification losses
# --------------------------------------------------------------------------------------

def softmax_cross_entropy(logits: Array, labels: Array) -> Array:
    """Cross-entropy of ``softmax(logits)`` against the labels, mean over the batch.

    ``L = -1/N sum_i sum_c t_ic log softmax(z_i)_c`` with ``t`` one-hot (from integer
    labels) or soft labels. Computed through ``log_softmax``; never clipped.
    """
    _check_pred("softmax_cross_entropy", logits)
    targets, ok = one_hot_targets("softmax_cross_entropy", logits, labels)
    loss = batch_mean(-jnp.sum(targets * log_softmax(logits), axis=1))
    return _poison(loss, ok)


def categorical_cross_entropy(probs: Array, labels: Array) -> Array:
    """Cross-entropy on probabilities (e.g. a softmax layer's output), as NNFS.

    ``L = -1/N sum_i sum_c t_ic log clip(p_ic, 1e-7, 1 - 1e-7)``.
    """
    _check_pred("categorical_cross_entropy", probs)
    targets, ok = one_hot_targets("categorical_cross_entropy", probs, labels)
    clipped = jnp.clip(probs, min=CLIP, max=1 - CLIP)
    loss = batch_mean(-jnp.sum(targets * jnp.log(clipped), axis=1))
    return _poison(loss, ok)


def binary_cross_entropy(probs: Array, targets: Array) -> Array:
    """Binary cross-entropy on probabilities (a sigmoid's output), clipped as NNFS.

    ``L = -mean(t log p + (1 - t) log(1 - p))`` over all elements, with ``p`` clipped to
    ``[1e-7, 1 - 1e-7]``.
    """
    t = _check_same("binary_cross_entropy", probs, targets)
    p = jnp.clip(probs, min=CLIP, max=1 - CLIP)
    return -jnp.mean(t * jnp.log(p) + (1 - t) * jnp.log(1 - p))


def binary_cross_entropy_with_logits(logits: Array, targets: Array) -> Array:
    """Binary cross-entropy of ``sigmoid(logits)``, computed stably from the logits.

    ``-[t log s(z) + (1-t) log(1-s(z))] = log(1 + e^z) - z t``, where
    ``log(1 + e^z) = logaddexp(0, z)`` is evaluated without overflow.
    """
    t = _check_same("binary_cross_entropy_with_logits", logits, targets)
    return jnp.mean(jnp.logaddexp(0.0, logits) - logits * t)


# --------------------------------------------------------------------------------------
# Regression losses
# --------------------------------------------------------------------------------------

def mse(pred: Array, target: Array) -> Array:
    """Mean squared error, ``mean((pred - target)^2)`` over all elements."""
    t = _check_same("mse", pred, target)
    return jnp.mean((pred - t) ** 2)


def mae(pred: Array, target: Array) -> Array:
    """Mean absolute error, ``mean(|pred - target|)`` over all elements."""
    t = _check_same("mae", pred, target)
    return jnp.mean(jnp.abs(pred - t))


# --------------------------------------------------------------------------------------
# Penalties on parameters (NNFS chapter 14)
# --------------------------------------------------------------------------------------

def l1(tree: Any) -> Array:
    """L1 penalty ``sum |w|`` over every array in ``tree`` (multiply by lambda yourself)."""
    leaves = jax.tree.leaves(tree)
    return sum((jnp.sum(jnp.abs(x)) for x in leaves), jnp.zeros((), _dtype(leaves)))


def l2(tree: Any) -> Array:
    """L2 penalty ``sum w^2`` over every array in ``tree`` (multiply by lambda yourself)."""
    leaves = jax.tree.leaves(tree)
    return sum((jnp.sum(x * x) for x in leaves), jnp.zeros((), _dtype(leaves)))


def _dtype(leaves: list) -> Any:
    return jnp.result_type(*leaves) if leaves else jnp.float32


# --------------------------------------------------------------------------------------
# Metrics (not differentiable; no backward rule)
# --------------------------------------------------------------------------------------

def accuracy(pred: Array, labels: Array) -> Array:
    """Fraction of examples whose highest score is the true class.

    ``pred`` is (batch, classes) logits or probabilities; ``labels`` integer classes or
    one-hot rows (their argmax is used). For one output column, a prediction counts as
    class 1 when it is above 0.5 (probabilities, as NNFS's binary accuracy).
    """
    _check_pred("accuracy", pred)
    labels = jnp.asarray(labels)
    if pred.shape[1] == 1:
        t = _check_same("accuracy", pred, labels.reshape(pred.shape))
        return jnp.mean(((pred > 0.5) == (t > 0.5)).astype(jnp.float32))
    targets, ok = one_hot_targets("accuracy", pred, labels)
    hit = jnp.argmax(pred, axis=-1) == jnp.argmax(targets, axis=-1)
    return _poison(jnp.mean(hit.astype(pred.dtype)), ok)


LOSSES = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "categorical_cross_entropy": categorical_cross_entropy,
    "binary_cross_entropy": binary_cross_entropy,
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits,
    "mse": mse,
    "mae": mae,
}
PENALTIES = {"l1": l1, "l2": l2}
