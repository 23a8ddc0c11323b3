"""``check``: verify any layer's or loss's hand rule three ways, in float64.

For a layer, with random ``params``, input ``x`` and output gradient ``dy``, the scalar
``f(params, x) = sum(dy * layer.apply(params, x))`` has gradient
``(dparams, dx) = backward(dy)``. The check compares

1. the hand rule with ``jax.vjp`` of the same ``apply`` (relative ``rtol``, 1e-10): they
   must agree to rounding, including at kinks, where a rule must follow the convention
   its forward code gives autodiff (ReLU written as ``where(x > 0, x, 0)``: slope 0 at 0);
2. both with central finite differences ``(f(t + h e) - f(t - h e)) / 2h``, for every
   element of a small leaf and along random unit directions for a large one.

Finite differences are meaningless on a kink (ReLU at 0, a tie in a max), where the
one-sided slopes differ. Such points are found by comparing the one-sided differences;
when the check drew the inputs itself it draws again (nudging away from the kink), and
when you passed them (to test a kink on purpose) it skips finite differences there but
still holds the rule to ``jax.vjp``. A loss is checked the same way with
``f(pred) = loss(pred, target)``, a penalty (``losses.l1``, ``l2``) with
``f(tree) = penalty(tree)``.

On failure it raises :class:`GradientCheckError` naming the parameter or input, the
worst element, both values and the error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import backprop, nn
from funcnn.losses import Loss, Regularizer

Array = jax.Array

__all__ = ["check", "CheckResult", "GradientCheckError"]


class GradientCheckError(AssertionError):
    """A hand rule disagrees with ``jax.vjp`` or with finite differences."""


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """What a passing check measured (errors relative to the gradient's largest entry)."""

    name: str
    vjp_error: float          # max |hand - jax.vjp| / max |jax.vjp|
    fd_error: float           # max |hand - finite differences| / max |hand|
    fd_points: int            # finite-difference comparisons made
    kinks_skipped: int        # comparisons skipped on a kink (inputs you gave, or drawn
                              # ones still on a kink after max_redraws)
    redraws: int              # times the inputs were drawn again to leave a kink

    def __str__(self) -> str:
        return (f"{self.name}: hand rule == jax.vjp (max rel err {self.vjp_error:.1e}) and "
                f"== finite differences (max rel err {self.fd_error:.1e}, "
                f"{self.fd_points} points, {self.kinks_skipped} kinks skipped)")


def _x64():
    """float64 for the duration of the check, whatever the user's setting."""
    if jax.config.read("jax_enable_x64"):
        return contextlib.nullcontext()
    enable = getattr(jax, "enable_x64", None)
    if enable is None:  # older JAX
        from jax.experimental import enable_x64 as enable
    return enable(True)


def _f64(tree: Any) -> Any:
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                        if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, tree)


# --------------------------------------------------------------------------------------
# The three gradients, jitted once per layer (or loss) and shape
# --------------------------------------------------------------------------------------

def _scalar(target, train, primals, aux):
    """The function whose gradient is checked: sum(dy * layer(p, x)) or loss(pred, t)."""
    if isinstance(target, Loss):
        (pred,), (t,) = primals, aux
        return target.value(pred, t)
    if isinstance(target, Regularizer):
        return target.value(primals[0])
    (params, x), (dy, key) = primals, aux
    return jnp.sum(dy * target.apply_fn(params, x, key, train))


def _gradients(target, train, primals, aux):
    """(hand, jax.vjp) gradients with respect to ``primals``."""
    if isinstance(target, Loss):
        (pred,), (t,) = primals, aux
        hand = (backprop.loss_value_and_grad(target)(pred, t)[1],)
    elif isinstance(target, Regularizer):
        hand = (target.grad(primals[0]),)
    else:
        (params, x), (dy, key) = primals, aux
        run = backprop._run("backprop")
        _, tape = run.forward(target, params, x, key, train)
        hand = run.backward(target, params, tape, dy, key, train)
    _, vjp = jax.vjp(lambda *p: _scalar(target, train, p, aux), *primals)
    return tuple(hand), vjp(jnp.ones((), jnp.float64))


def _differences(target, train, leaf, primals, aux, directions, h):
    """f at the primals and at primals +- h * v for each direction v of one leaf."""
    leaves, treedef = jax.tree.flatten(primals)

    def f_at(v):
        moved = list(leaves)
        moved[leaf] = leaves[leaf] + v
        return _scalar(target, train, jax.tree.unflatten(treedef, moved), aux)

    return (f_at(jnp.zeros_like(leaves[leaf])), jax.vmap(f_at)(h * directions),
            jax.vmap(f_at)(-h * directions))


@functools.partial(jax.jit, static_argnames=("target", "modes"))
def _measure(target, modes, primals, aux, directions, h):
    """Everything the check compares, for each mode, in one compiled program: the hand
    and jax.vjp gradients, and f around the primals along each leaf's directions."""
    return [(_gradients(target, train, primals, aux),
             [None if d is None else _differences(target, train, i, primals, aux, d, h)
              for i, d in enumerate(directions)])
            for train in modes]


# --------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------

def check(target: nn.Layer | Loss, x: Any = None, y: Any = None, *,
          input_shape: tuple[int, ...] | None = None, batch_size: int = 3,
          params: Any = None, train: bool | None = None, seed: int = 0,
          rtol: float = 1e-10, fd_rtol: float = 1e-6, eps: float = 1e-6,
          max_elements: int = 512, directions: int = 8, max_redraws: int = 5,
          ) -> CheckResult:
    """Checks ``target``'s hand rule against ``jax.vjp`` and finite differences.

    Layer: ``check(layer, x)`` with a batch-first input, or
    ``check(layer, input_shape=(5,))`` to draw ``N(0, 1)`` inputs of ``batch_size``
    examples; ``params`` default to ``layer.init`` in float64; ``train=None`` checks
    both modes (dropout), each with a fixed key.
    Loss: ``check(loss, pred, target)`` (``pred`` in the loss's domain: logits,
    probabilities, ...). Penalty: ``check(losses.l2, params)``.

    Args:
      seed: draws params, inputs, ``dy`` and keys; checks pass for every seed.
      rtol: tolerance of hand vs ``jax.vjp``, relative to the largest gradient entry.
      fd_rtol, eps: tolerance and step of the central differences (float64).
      max_elements: leaves up to this size are checked element by element, larger ones
        along ``directions`` random unit directions.
      max_redraws: how often to draw new inputs when they sit on a kink.

    Returns a :class:`CheckResult`; raises :class:`GradientCheckError` on a mismatch,
    :class:`funcnn.backprop.MissingRuleError` for a layer or loss without a rule.
    """
    with _x64():
        if isinstance(target, Loss):
            return _check_loss(target, x, y, seed, rtol, fd_rtol, eps, max_elements,
                               directions)
        if isinstance(target, Regularizer):
            if x is None:
                raise ValueError(f"check({target!r}): pass the parameter tree: "
                                 "check(penalty, params)")
            tree = _f64(x)
            labels = [f"params{jax.tree_util.keystr(p)}" for p, _ in
                      jax.tree_util.tree_flatten_with_path(tree)[0]]
            return _check_function(target, (tree,), (), labels, seed, rtol, fd_rtol, eps,
                                   max_elements, directions)
        if not isinstance(target, nn.Layer):
            raise TypeError(f"check: expected an nn.Layer, a losses.Loss or a penalty; got "
                            f"{type(target).__name__} (a plain loss function has no rule "
                            "to check: wrap it as losses.Loss(name, value, grad))")
        if missing := backprop.missing_rules(target):
            raise backprop.MissingRuleError(
                f"check: {', '.join(map(repr, missing))} has no hand-derived backward rule "
                "to check; give it backward_fn (see nn.Layer)")
        return _check_layer(target, x, input_shape, batch_size, params, train, seed, rtol,
                            fd_rtol, eps, max_elements, directions, max_redraws)


def _check_layer(layer, x, input_shape, batch_size, params, train, seed, rtol, fd_rtol,
                 eps, max_elements, n_dirs, max_redraws):
    name = repr(layer)
    given_x = x is not None
    if not given_x and input_shape is None:
        raise ValueError(f"check({name}): pass an input x (batch-first) or input_shape "
                         "(one example's shape, no batch axis)")
    result = None
    for attempt in range(max_redraws + 1):
        k = jax.random.split(jax.random.fold_in(jax.random.key(seed), attempt), 4)
        xa = _f64(jnp.asarray(x)) if given_x else \
            jax.random.normal(k[0], (batch_size, *input_shape), jnp.float64)
        pa = _f64(params) if params is not None else \
            layer.init(k[1], tuple(xa.shape[1:]), jnp.float64)
        y_shape = jax.eval_shape(lambda p, xx: layer.apply_fn(p, xx, k[3], True), pa, xa).shape
        dy = jax.random.normal(k[2], y_shape, jnp.float64)
        labels = [f"params{jax.tree_util.keystr(p)}" for p, _ in
                  jax.tree_util.tree_flatten_with_path(pa)[0]] + ["x (the input)"]
        modes = (False, True) if train is None else (bool(train),)
        try:
            vjp_err, fd_err, points, kinks = _compare(
                layer, modes, (pa, xa), (dy, k[3]), labels, name, rtol, fd_rtol, eps,
                max_elements, n_dirs, seed)
        except backprop.RuleError as e:
            raise GradientCheckError(f"check({name}): {e}") from e
        result = CheckResult(name, vjp_err, fd_err, points, kinks, attempt)
        if kinks == 0 or given_x or params is not None:
            return result
    return result  # still on a kink after max_redraws: differences skipped there


def _check_loss(loss, pred, t, seed, rtol, fd_rtol, eps, max_elements, n_dirs):
    if pred is None or t is None:
        raise ValueError(f"check({loss!r}): pass predictions and targets: "
                         "check(loss, pred, target)")
    return _check_function(loss, (_f64(jnp.asarray(pred)),), (_f64(jnp.asarray(t)),),
                           ["pred"], seed, rtol, fd_rtol, eps, max_elements, n_dirs)


def _check_function(target, primals, aux, labels, seed, rtol, fd_rtol, eps, max_elements,
                    n_dirs):
    """A loss or penalty: one mode, no kinks to redraw from (the caller gave the point)."""
    try:
        v, g, n, kinks = _compare(target, (False,), primals, aux, labels, repr(target), rtol,
                                  fd_rtol, eps, max_elements, n_dirs, seed)
    except backprop.RuleError as e:
        raise GradientCheckError(f"check({target!r}): {e}") from e
    return CheckResult(repr(target), v, g, n, kinks, 0)


def _compare(target, modes, primals, aux, labels, name, rtol, fd_rtol, eps, max_elements,
             n_dirs, seed):
    """Hand vs jax.vjp, then hand vs central differences; returns the largest errors,
    the number of difference points and of kinks skipped."""
    rng = np.random.default_rng(seed)
    directions = []
    for leaf in jax.tree.leaves(primals):
        shape, size = np.shape(leaf), int(np.size(leaf))
        if size == 0:
            directions.append(None)
        elif size <= max_elements:
            directions.append(np.eye(size).reshape((size,) + shape))
        else:
            d = rng.standard_normal((n_dirs,) + shape)
            directions.append(d / np.sqrt(np.sum(d ** 2, axis=tuple(range(1, d.ndim)),
                                                 keepdims=True)))
    measured = jax.device_get(_measure(target, modes, primals, aux, directions, eps))
    vjp_err = fd_err = 0.0
    points = kinks = 0
    for train, ((hand, auto), diffs) in zip(modes, measured):
        where = f"check({name})" + (f" (train={train})" if isinstance(target, nn.Layer)
                                    else "") + f", seed {seed}"
        hand_l = [np.asarray(a, np.float64) for a in jax.tree.leaves(hand)]
        auto_l = [np.asarray(a, np.float64) for a in jax.tree.leaves(auto)]
        v = _against_vjp(where, labels, hand_l, auto_l, rtol)
        f, p, k = _against_differences(where, labels, hand_l, diffs, directions, eps,
                                       fd_rtol, max_elements)
        vjp_err, fd_err, points, kinks = max(vjp_err, v), max(fd_err, f), points + p, kinks + k
    return vjp_err, fd_err, points, kinks


def _against_vjp(where, labels, hand_l, auto_l, rtol):
    scale = max([float(np.max(np.abs(a))) for a in auto_l if a.size] + [1e-300])
    worst_err = 0.0
    for label, h, a in zip(labels, hand_l, auto_l):
        if not a.size:
            continue
        diff = np.abs(h - a)
        i = np.unravel_index(int(np.argmax(diff)), diff.shape)
        err = float(diff[i]) / scale
        worst_err = max(worst_err, err)
        if not np.isfinite(err) or err > rtol:
            raise GradientCheckError(
                f"{where}: the hand rule's gradient of {label} disagrees with jax.vjp; "
                f"worst at element {tuple(int(j) for j in i)}: hand {h[i]:.10g}, jax.vjp "
                f"{a[i]:.10g} (error {err:.1e} of the largest gradient entry, tolerance "
                f"{rtol:g})")
    return worst_err


def _against_differences(where, labels, hand_l, diffs, directions, eps, fd_rtol,
                         max_elements):
    hscale = max([float(np.max(np.abs(h))) for h in hand_l if h.size] + [1e-300])
    worst_err, points, kinks = 0.0, 0, 0
    for label, h, d, dirs in zip(labels, hand_l, diffs, directions):
        if d is None:
            continue
        f0, fp, fm = (np.asarray(a, np.float64) for a in d)
        central = (fp - fm) / (2 * eps)
        # On a kink the one-sided slopes differ by O(1); on a smooth f by O(eps * f'').
        one_sided_gap = np.abs((fp - f0) - (f0 - fm)) / eps
        size = abs(float(f0)) + 1.0
        on_kink = one_sided_gap > 1e-3 * hscale + 1e-6 * size
        want = np.tensordot(dirs, h, axes=h.ndim)  # <v, hand> per direction
        err = np.where(on_kink, 0.0, np.abs(central - want))
        tol = fd_rtol * hscale + 1e-8 * size
        kinks += int(on_kink.sum())
        points += int((~on_kink).sum())
        i = int(np.argmax(err))
        worst_err = max(worst_err, float(err[i]) / hscale)
        if not np.isfinite(err[i]) or err[i] > tol:
            at = (f"element {tuple(int(j) for j in np.unravel_index(i, h.shape))}"
                  if h.size <= max_elements else f"random direction {i}")
            raise GradientCheckError(
                f"{where}: the hand rule's gradient of {label} disagrees with finite "
                f"differences; worst at {at}: hand {want[i]:.10g}, finite differences "
                f"{central[i]:.10g} (error {err[i]:.1e}, tolerance {tol:.1e})")
    return worst_err, points, kinks
