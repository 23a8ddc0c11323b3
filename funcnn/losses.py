"""Losses, written by hand, each one value with its gradient and its metric.

A :class:`Loss` carries ``value(pred, target)`` (the batch mean), ``grad(pred, target)``
(``dL/dpred``, derived by hand, right below the value) and its natural ``metric``::

    losses.mse(pred, y)            # the value; a Loss is called like a function
    losses.mse.grad(pred, y)       # 2 (pred - y) / size
    losses.mse.metric              # metrics.mae

A loss of your own is ``Loss("name", value, grad, metric)``; a plain function works
too, under ``engine="mixed"`` or ``"jax"``. Penalties on the weights
(:class:`Regularizer`: ``l1``, ``l2``) carry their value and gradient the same way.

Reductions. The per-output losses (``mse``, ``mae``, ``huber_loss``, the two binary
cross-entropies) are one function ``f(p, t)`` applied to every output of every example.
For a batch of N examples with K outputs each they offer two reductions::

    "mean" (default)  L = 1/(N K) sum_n sum_j f(p_nj, t_nj)   dL/dp_nj = f'(p_nj, t_nj) / (N K)
    "sum"             L = 1/N     sum_n sum_j f(p_nj, t_nj)   dL/dp_nj = f'(p_nj, t_nj) / N

``losses.mse.with_reduction("sum")`` gives the second: summed over the outputs of each
example, averaged over the batch, the per-example cost ``C = 1/n sum_x C_x`` Nielsen
writes. Both average over the batch, so a learning rate does not depend on the batch
size; they differ by the factor K. (PyTorch's ``reduction='sum'`` sums over the batch
too: it is N times this, and its gradients grow with the batch.) The classification
losses on classes (``softmax_cross_entropy``, ``categorical_cross_entropy``) already sum
over each example's classes and average over the batch, and have no other reduction.
``Loss.elementwise(name, f, f_prime)`` makes a per-output loss of your own, with both.

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
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import metrics, parallel
from funcnn.metrics import (Metric, check_distributions, check_pred, check_same,
                            check_unit_interval, one_hot_targets, poison)
from funcnn.nn import softmax_fn

Array = jax.Array

__all__ = [
    "Loss", "PerElement", "Regularizer", "softmax_cross_entropy", "categorical_cross_entropy",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "mse", "mae", "huber_loss",
    "l1", "l2", "log_softmax", "batch_mean", "CLIP", "REDUCTIONS", "LOSSES", "PENALTIES",
]

CLIP = 1e-7  # NNFS clips probabilities to [CLIP, 1 - CLIP] before taking logs
REDUCTIONS = ("mean", "sum")  # how a per-output loss reduces its elements (module docstring)


@dataclasses.dataclass(frozen=True)
class PerElement:
    """A per-output loss written elementwise, from which either reduction is built.

    Attributes:
      fn: ``f(p, t)``, the loss of each element (``t`` already in ``p``'s dtype).
      dfn: ``f'(p, t) = df/dp``, elementwise, derived by hand.
      check: ``(name, pred, target) -> target`` in ``pred``'s dtype; raises on shapes or
        values outside the loss's domain (run by the value, as every loss does).
    """

    fn: Callable[[Array, Array], Array]
    dfn: Callable[[Array, Array], Array]
    check: Callable[[str, Array, Array], Array]


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
      reduction: for a per-output loss, ``"mean"`` or ``"sum"`` (module docstring);
        ``None`` for a loss without that choice.
      per_element: for a per-output loss, the elementwise pieces
        (:class:`PerElement`) that :meth:`with_reduction` builds the other reduction
        from; ``None`` otherwise.

    Calling a loss gives its value, so ``jax.grad(loss)`` works on it as on a function.
    """

    name: str
    value: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array] | None = None
    metric: Metric | None = None
    targets: str = "same"
    reduction: str | None = None
    per_element: PerElement | None = dataclasses.field(default=None, repr=False)

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
        if self.reduction is not None and self.reduction not in REDUCTIONS:
            raise ValueError(f"Loss {self.name!r}: reduction must be one of {REDUCTIONS} or "
                             f"None; got {self.reduction!r}")
        if self.per_element is not None and not isinstance(self.per_element, PerElement):
            raise TypeError(f"Loss {self.name!r}: per_element must be a losses.PerElement "
                            "or None")

    def __call__(self, pred: Array, target: Array) -> Array:
        return self.value(pred, target)

    @classmethod
    def elementwise(cls, name: str, fn: Callable[[Array, Array], Array],
                    derivative: Callable[[Array, Array], Array], metric: Metric | None = None,
                    *, check: Callable[[str, Array, Array], Array] = check_same,
                    reduction: str = "mean") -> Loss:
        """A per-output loss from one elementwise function, as ``nn.elementwise`` makes a
        layer: ``fn(p, t)`` the loss of each element, ``derivative(p, t) = df/dp`` its
        hand derivative (elementwise; ``t`` arrives in ``p``'s dtype), ``check`` the
        input checks (default: same shapes, finite values). Value and gradient follow
        for either reduction (module docstring)::

            log_cosh = losses.Loss.elementwise(
                "log_cosh", lambda p, t: jnp.log(jnp.cosh(p - t)),
                lambda p, t: jnp.tanh(p - t), metrics.mae)
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"Loss.elementwise({name!r}): reduction must be one of "
                             f"{REDUCTIONS}; got {reduction!r}")
        for what, f in (("fn", fn), ("derivative", derivative), ("check", check)):
            if not callable(f):
                raise TypeError(f"Loss.elementwise({name!r}): {what} must be a function; "
                                f"got {f!r}")
        return _per_output(name, PerElement(fn, derivative, check), metric, reduction)

    def with_reduction(self, reduction: str) -> Loss:
        """This loss with another reduction: ``"mean"`` over every element (the default)
        or ``"sum"`` over each example's outputs, then the mean over the batch::

            losses.mse.with_reduction("sum")    # 1/N sum_n ||p_n - t_n||^2

        Value, hand gradient and metric follow (the module docstring derives both
        gradients). The same call returns the same object, so ``jit`` reuses its
        compiled code. Only per-output losses (``reduction`` not ``None``) have the choice.
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"{self.name}.with_reduction: reduction must be one of "
                             f"{REDUCTIONS}; got {reduction!r}")
        if self.reduction is None or self.per_element is None:
            if self.targets == "classes":
                why = ("it already sums over the classes of each example (one "
                       "cross-entropy per example) and averages over the batch, which is "
                       "what reduction='sum' gives the per-output losses")
            else:
                why = ("it was not built from an elementwise function; build it with "
                       "losses.Loss.elementwise(name, f, f_prime) to have both reductions")
            raise ValueError(f"{self.name}.with_reduction: {self.name} has no reduction to "
                             f"choose: {why}")
        if reduction == self.reduction:
            return self
        return _per_output(self.name, self.per_element, self.metric, reduction)

    def __repr__(self) -> str:
        if self.reduction == "sum":
            return f"Loss({self.name!r}, reduction='sum')"
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
    # With the batch split over an Explicit mesh, gather the N values first (one small
    # all-gather) so that the sum below runs in the same order as on one device.
    v = parallel.unsharded(v)
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
# Per-output losses: one elementwise f(p, t), reduced over the batch and the outputs
# --------------------------------------------------------------------------------------
#
# With N examples (the first axis) and K outputs each (the other axes, flattened):
#   "mean": L = 1/(N K) sum_nj f(p_nj, t_nj), so dL/dp_nj = f'(p_nj, t_nj) / (N K)
#   "sum":  L = 1/N     sum_nj f(p_nj, t_nj), so dL/dp_nj = f'(p_nj, t_nj) / N
# (each element appears in exactly one term of the sum, so its derivative is its own
# f' times the constant in front). "sum" adds each example's K terms first and then
# takes batch_mean of the N per-example costs.

@functools.cache
def _per_output(name: str, per_element: PerElement, metric: Metric, reduction: str) -> Loss:
    """The Loss ``name`` built from ``per_element`` with ``reduction`` (cached: the same
    arguments give the same object)."""
    f, df, check = per_element.fn, per_element.dfn, per_element.check

    if reduction == "mean":
        def value(pred, target):
            return jnp.mean(f(pred, check(name, pred, target)))

        def grad(p, t):
            return df(p, jnp.asarray(t).astype(p.dtype)) / p.size
    else:
        def value(pred, target):
            per_example = f(pred, check(name, pred, target)).reshape(pred.shape[0], -1)
            return batch_mean(jnp.sum(per_example, axis=1))

        def grad(p, t):
            return df(p, jnp.asarray(t).astype(p.dtype)) / p.shape[0]

    value.__name__ = grad.__name__ = f"{name}_{reduction}"
    return Loss(name, value, grad, metric, "same", reduction, per_element)


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


def _bce_check(name, probs, targets):
    t = check_same(name, probs, targets)
    _check_binary_targets(name, targets)
    check_unit_interval(name, "pred", probs, f"{name} takes probabilities (a sigmoid's "
                        "output); these look like logits: use "
                        "losses.binary_cross_entropy_with_logits on them")
    return t


def _bce(p, t):
    pc = _clip(p)
    return -(t * jnp.log(pc) + (1 - t) * jnp.log(1 - pc))


# f = -(t log p + (1-t) log(1-p)): f' = -(t/p - (1-t)/(1-p)), 0 where p is clipped.
def _bce_prime(p, t):
    pc = _clip(p)
    return jnp.where(_clip_mask(p), -(t / pc - (1 - t) / (1 - pc)), 0)


binary_cross_entropy = _per_output("binary_cross_entropy", PerElement(_bce, _bce_prime,
                                   _bce_check), metrics.binary_accuracy, "mean")
"""Binary cross-entropy on probabilities (a sigmoid's output), clipped as NNFS:
``L = -mean(t log p + (1 - t) log(1 - p))`` over all elements, ``p`` clipped to
``[1e-7, 1 - 1e-7]``. ``.with_reduction("sum")`` sums over each example's outputs:
Nielsen's cross-entropy cost ``C_x = -sum_j [y_j ln a_j + (1-y_j) ln(1-a_j)]``."""


def _bce_logits_check(name, logits, targets):
    t = check_same(name, logits, targets)
    _check_binary_targets(name, targets)
    return t


def _bce_logits(z, t):
    return jnp.logaddexp(0.0, z) - z * t


# With p = sigmoid(z), dp/dz = p(1-p) cancels the denominators of the rule above:
#   f'(z) = sigmoid(z) - t.
def _bce_logits_prime(z, t):
    return jax.nn.sigmoid(z) - t


binary_cross_entropy_with_logits = _per_output(
    "binary_cross_entropy_with_logits",
    PerElement(_bce_logits, _bce_logits_prime, _bce_logits_check),
    metrics.binary_accuracy_logits, "mean")
"""Binary cross-entropy of ``sigmoid(logits)``, computed stably from the logits:
``-[t log s(z) + (1-t) log(1-s(z))] = log(1 + e^z) - z t``, where
``log(1 + e^z) = logaddexp(0, z)`` never overflows. Mean over all elements;
``.with_reduction("sum")`` for the sum over each example's outputs."""


# --------------------------------------------------------------------------------------
# Regression losses
# --------------------------------------------------------------------------------------

def _mse(p, t):
    return (p - t) ** 2


# f = (p - t)^2: f' = 2 (p - t).
def _mse_prime(p, t):
    return 2 * (p - t)


mse = _per_output("mse", PerElement(_mse, _mse_prime, check_same), metrics.mae, "mean")
"""Mean squared error, ``mean((pred - target)^2)`` over all elements;
``.with_reduction("sum")``: ``1/N sum_n ||pred_n - target_n||^2``."""


def _mae(p, t):
    return jnp.abs(p - t)


# f = |p - t|: f' = sign(p - t), taking +1 at p = t (as jax.grad of abs).
def _mae_prime(p, t):
    return jnp.where(p >= t, 1, -1).astype(p.dtype)


mae = _per_output("mae", PerElement(_mae, _mae_prime, check_same), metrics.mae, "mean")
"""Mean absolute error, ``mean(|pred - target|)`` over all elements;
``.with_reduction("sum")``: ``1/N sum_n ||pred_n - target_n||_1``."""


@functools.cache
def _huber(delta: float) -> PerElement:
    # e = p - t. f = e^2 / 2 for |e| <= delta, delta (|e| - delta/2) beyond: the two
    # pieces meet at |e| = delta with equal value (delta^2 / 2) and equal slope, so
    #   f' = e for |e| <= delta, delta sign(e) beyond = clip(e, -delta, delta),
    # continuous at the kink (only f'' jumps there, from 1 to 0).
    def fn(p, t):
        e = p - t
        a = jnp.abs(e)
        return jnp.where(a <= delta, 0.5 * e * e, delta * (a - 0.5 * delta))

    def dfn(p, t):
        return jnp.clip(p - t, -delta, delta)

    return PerElement(fn, dfn, check_same)


def huber_loss(delta: float = 1.0) -> Loss:
    """The Huber loss (optax's ``huber_loss``, PyTorch's ``HuberLoss``): quadratic for
    small errors, linear for large ones, so outliers pull with a bounded force.

    With ``e = pred - target`` elementwise::

        f(e) = e^2 / 2                    for |e| <= delta
               delta * (|e| - delta / 2)  otherwise
        f'(e) = clip(e, -delta, delta)

    then the mean over every element (``.with_reduction("sum")``: summed over each
    example's outputs, mean over the batch). The same ``delta`` gives the same object.

    Args:
      delta: where the quadratic turns linear (> 0). Its gradient never exceeds it.
    """
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.integer, np.floating)) \
            or not np.isfinite(delta) or delta <= 0:
        raise ValueError(f"huber_loss: delta must be a finite number > 0; got {delta!r}")
    return _per_output("huber_loss", _huber(float(delta)), metrics.mae, "mean")


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
    "huber_loss": huber_loss(),
}
PENALTIES = {"l1": l1, "l2": l2}
