"""Losses, written by hand, each one value with its gradient and its metric.

A :class:`Loss` carries ``value(pred, target)`` (the batch mean), ``grad(pred, target)``
(``dL/dpred``, derived by hand, right below the value) and its natural ``metric``::

    losses.mse(pred, y)            # the value; a Loss is called like a function
    losses.mse.grad(pred, y)       # 2 (pred - y) / size
    losses.mse.metric              # metrics.mae

A loss of your own is ``Loss("name", value, grad, metric)``; a plain function works
too, under ``engine="mixed"`` or ``"jax"``. Penalties on the weights
(:class:`Regularizer`: ``l1``, ``l2``) carry their value and gradient the same way.

Numerical care:
  * ``softmax_cross_entropy`` works on logits through
    ``log_softmax(z) = z - logsumexp(z)`` with ``logsumexp(z) = m + log(sum(exp(z - m)))``,
    ``m = max(z)``: no clipping, finite for float32 logits of +-1e4.
  * ``categorical_cross_entropy`` works on probabilities and, as NNFS, clips them to
    ``[1e-7, 1 - 1e-7]`` so that ``log(0)`` never happens.

Labels are checked at the boundary. Integer labels outside ``[0, classes)`` raise when
their values are known; inside ``jit`` they are not, and JAX would silently clamp an
index, so there the loss turns NaN instead of quietly training on a wrong label (the
training loop checks labels before it starts).

Domains too, when the values are known (outside ``jit``): every loss raises for NaN or
inf; ``categorical_cross_entropy`` for predictions that are not probability rows
(logits: it would return ~1e-7 for a wrong prediction) and ``binary_cross_entropy`` for
predictions outside ``[0, 1]``; the categorical losses for soft labels that are not
distributions (a row summing to 2 doubles the loss); the binary ones for targets
outside ``[0, 1]`` (a target of 2 makes the loss negative). An empty batch raises even
inside ``jit``, its shape being known there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from funcnn import metrics
from funcnn.metrics import (Metric, check_distributions, check_pred, check_same,
                            check_unit_interval, one_hot_targets, poison)
from funcnn.nn import softmax_fn

Array = jax.Array

__all__ = [
    "Loss", "Regularizer", "softmax_cross_entropy", "categorical_cross_entropy",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "mse", "mae", "l1", "l2",
    "log_softmax", "batch_mean", "CLIP", "LOSSES", "PENALTIES",
]

CLIP = 1e-7  # NNFS clips probabilities to [CLIP, 1 - CLIP] before taking logs


@dataclasses.dataclass(frozen=True, eq=False)
class Loss:
    """A loss: its value, its hand-derived gradient, and its natural metric.

    Attributes:
      name: for messages and ``repr``.
      value: ``(pred, target) -> scalar``, the mean over the batch.
      grad: ``(pred, target) -> dL/dpred`` (``pred``'s shape), derived by hand; ``None``
        when there is none (then only ``engine="mixed"`` or ``"jax"`` can train on it).
      metric: what ``fit`` reports beside the loss when no ``metrics=`` are given.
      targets: ``"classes"`` when targets are class indices (or one-hot rows), so
        ``fit`` checks them against the model's outputs; ``"same"`` when they have the
        predictions' shape.

    Calling a loss gives its value, so ``jax.grad(loss)`` works on it as on a function.
    """

    name: str
    value: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array] | None = None
    metric: Metric | None = None
    targets: str = "same"

    def __post_init__(self):
        if not callable(self.value):
            raise TypeError(f"Loss {self.name!r}: value must be a function; got {self.value!r}")
        if self.grad is not None and not callable(self.grad):
            raise TypeError(f"Loss {self.name!r}: grad must be a function or None")
        if self.metric is not None and not isinstance(self.metric, Metric):
            raise TypeError(f"Loss {self.name!r}: metric must be a metrics.Metric or None")
        if self.targets not in ("classes", "same"):
            raise ValueError(f"Loss {self.name!r}: targets must be 'classes' or 'same'; got "
                             f"{self.targets!r}")

    def __call__(self, pred: Array, target: Array) -> Array:
        return self.value(pred, target)

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"


@dataclasses.dataclass(frozen=True, eq=False)
class Regularizer:
    """A penalty on the weights: ``value(tree) -> scalar`` and its hand gradient
    ``grad(tree) -> tree`` (same structure)."""

    name: str
    value: Callable[[Any], Array]
    grad: Callable[[Any], Any]

    def __call__(self, tree: Any) -> Array:
        return self.value(tree)

    def __repr__(self) -> str:
        return f"Regularizer({self.name!r})"


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


def _clip(p: Array) -> Array:
    """``p`` clipped to ``[CLIP, 1 - CLIP]``, written so that its slope is 1 on the closed
    interval and 0 outside: the rules' convention, which ``jax.grad`` then follows too
    (``jnp.clip`` would halve it on the boundary, where float32 sigmoids do land)."""
    return jnp.where(p < CLIP, CLIP, jnp.where(p > 1 - CLIP, 1 - CLIP, p)).astype(p.dtype)


def _clip_mask(p: Array) -> Array:
    # The slope of _clip: 1 inside [CLIP, 1 - CLIP] (boundary included), 0 outside.
    return (p >= CLIP) & (p <= 1 - CLIP)


# --------------------------------------------------------------------------------------
# Classification losses
# --------------------------------------------------------------------------------------

def _sce_value(logits, labels):
    check_pred("softmax_cross_entropy", logits)
    targets, ok = one_hot_targets("softmax_cross_entropy", logits, labels)
    return poison(batch_mean(-jnp.sum(targets * log_softmax(logits), axis=1)), ok)


# L = -1/N sum_n sum_c t_nc (z_nc - logsumexp(z_n)). Since sum_c t_nc = 1 and
# d logsumexp(z_n)/dz_nc = softmax(z_n)_c, the famous fused rule follows:
#   dL/dz = (softmax(z) - t) / N.
def _sce_grad(z, labels):
    t, ok = one_hot_targets("softmax_cross_entropy", z, labels)
    return poison((softmax_fn(z) - t) / z.shape[0], ok)


softmax_cross_entropy = Loss("softmax_cross_entropy", _sce_value, _sce_grad,
                             metrics.accuracy, "classes")
"""Cross-entropy of ``softmax(logits)`` against the labels, mean over the batch:
``L = -1/N sum_i sum_c t_ic log softmax(z_i)_c`` with ``t`` one-hot (from integer
labels) or soft labels. Computed through ``log_softmax``; never clipped."""


def _cce_value(probs, labels):
    check_pred("categorical_cross_entropy", probs)
    targets, ok = one_hot_targets("categorical_cross_entropy", probs, labels)
    check_distributions(
        "categorical_cross_entropy", "pred", probs, "probabilities (a softmax's output: "
        "each row in [0, 1], summing to 1)", "These look like logits; use "
        "losses.softmax_cross_entropy on them (or end the model with nn.softmax())")
    clipped = _clip(probs)
    return poison(batch_mean(-jnp.sum(targets * jnp.log(clipped), axis=1)), ok)


# L = -1/N sum t log(clip(p)): dL/dp = -t / (N clip(p)) where p is not clipped, 0 where
# it is.
def _cce_grad(p, labels):
    t, ok = one_hot_targets("categorical_cross_entropy", p, labels)
    pc = _clip(p)
    return poison(jnp.where(_clip_mask(p), -t / pc, 0) / p.shape[0], ok)


categorical_cross_entropy = Loss("categorical_cross_entropy", _cce_value, _cce_grad,
                                 metrics.accuracy, "classes")
"""Cross-entropy on probabilities (e.g. a softmax layer's output), as NNFS:
``L = -1/N sum_i sum_c t_ic log clip(p_ic, 1e-7, 1 - 1e-7)``."""


def _check_binary_targets(name: str, targets: Array) -> None:
    # A target outside [0, 1] (e.g. 2) makes the cross-entropy negative, unbounded below.
    check_unit_interval(name, "target", targets, "Binary targets are 0 or 1 (or "
                        "probabilities in between)")


def _bce_value(probs, targets):
    t = check_same("binary_cross_entropy", probs, targets)
    _check_binary_targets("binary_cross_entropy", targets)
    check_unit_interval("binary_cross_entropy", "pred", probs, "binary_cross_entropy "
                        "takes probabilities (a sigmoid's output); these look like "
                        "logits: use losses.binary_cross_entropy_with_logits on them")
    p = _clip(probs)
    return -jnp.mean(t * jnp.log(p) + (1 - t) * jnp.log(1 - p))


# L = -mean(t log p + (1-t) log(1-p)): dL/dp = -(t/p - (1-t)/(1-p)) / size, 0 where
# p is clipped.
def _bce_grad(p, t):
    t = t.astype(p.dtype)
    pc = _clip(p)
    return jnp.where(_clip_mask(p), -(t / pc - (1 - t) / (1 - pc)) / p.size, 0)


binary_cross_entropy = Loss("binary_cross_entropy", _bce_value, _bce_grad,
                            metrics.binary_accuracy)
"""Binary cross-entropy on probabilities (a sigmoid's output), clipped as NNFS:
``L = -mean(t log p + (1 - t) log(1 - p))`` over all elements, ``p`` clipped to
``[1e-7, 1 - 1e-7]``."""


def _bce_logits_value(logits, targets):
    t = check_same("binary_cross_entropy_with_logits", logits, targets)
    _check_binary_targets("binary_cross_entropy_with_logits", targets)
    return jnp.mean(jnp.logaddexp(0.0, logits) - logits * t)


# With p = sigmoid(z), dp/dz = p(1-p) cancels the denominators of the rule above:
#   dL/dz = (sigmoid(z) - t) / size.
def _bce_logits_grad(z, t):
    return (jax.nn.sigmoid(z) - t.astype(z.dtype)) / z.size


binary_cross_entropy_with_logits = Loss(
    "binary_cross_entropy_with_logits", _bce_logits_value, _bce_logits_grad,
    metrics.binary_accuracy_logits)
"""Binary cross-entropy of ``sigmoid(logits)``, computed stably from the logits:
``-[t log s(z) + (1-t) log(1-s(z))] = log(1 + e^z) - z t``, where
``log(1 + e^z) = logaddexp(0, z)`` never overflows."""


# --------------------------------------------------------------------------------------
# Regression losses
# --------------------------------------------------------------------------------------

def _mse_value(pred, target):
    t = check_same("mse", pred, target)
    return jnp.mean((pred - t) ** 2)


# L = mean((p - t)^2): dL/dp = 2 (p - t) / size.
def _mse_grad(p, t):
    return 2 * (p - t.astype(p.dtype)) / p.size


mse = Loss("mse", _mse_value, _mse_grad, metrics.mae)
"""Mean squared error, ``mean((pred - target)^2)`` over all elements."""


def _mae_value(pred, target):
    t = check_same("mae", pred, target)
    return jnp.mean(jnp.abs(pred - t))


# L = mean(|p - t|): dL/dp = sign(p - t) / size, taking +1 at p = t (as jax.grad of abs).
def _mae_grad(p, t):
    return jnp.where(p >= t.astype(p.dtype), 1, -1).astype(p.dtype) / p.size


mae = Loss("mae", _mae_value, _mae_grad, metrics.mae)
"""Mean absolute error, ``mean(|pred - target|)`` over all elements."""


# --------------------------------------------------------------------------------------
# Penalties on parameters (NNFS chapter 14)
# --------------------------------------------------------------------------------------

def _dtype(leaves: list) -> Any:
    return jnp.result_type(*leaves) if leaves else jnp.float32


def _l1_value(tree):
    leaves = jax.tree.leaves(tree)
    return sum((jnp.sum(jnp.abs(x)) for x in leaves), jnp.zeros((), _dtype(leaves)))


# d|w|/dw = sign(w); at w = 0 (zero-initialised biases) NNFS takes +1, as does jax.grad
# of jnp.abs, so the two engines agree from the first step.
def _l1_grad(tree):
    return jax.tree.map(lambda w: jnp.where(w >= 0, 1, -1).astype(w.dtype), tree)


l1 = Regularizer("l1", _l1_value, _l1_grad)
"""L1 penalty ``sum |w|`` over every array in a tree (multiply by lambda yourself)."""


def _l2_value(tree):
    leaves = jax.tree.leaves(tree)
    return sum((jnp.sum(x * x) for x in leaves), jnp.zeros((), _dtype(leaves)))


l2 = Regularizer("l2", _l2_value, lambda tree: jax.tree.map(lambda w: 2 * w, tree))
"""L2 penalty ``sum w^2`` over every array in a tree, gradient ``2 w``."""


LOSSES = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "categorical_cross_entropy": categorical_cross_entropy,
    "binary_cross_entropy": binary_cross_entropy,
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits,
    "mse": mse,
    "mae": mae,
}
PENALTIES = {"l1": l1, "l2": l2}
