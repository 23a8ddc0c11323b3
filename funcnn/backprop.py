"""Backpropagation by hand: the driver that runs the layers' and losses' own rules.

The chain rule, run in reverse. For a network ``y = f_L(... f_2(f_1(x)))`` and a loss
``L(y, t)``, start with ``dL/dy`` from the loss's ``grad``; each layer, last to first,
turns the gradient of its output ``dy = dL/dy`` into the gradient of its parameters
``dL/dparams`` and of its input ``dx = dL/dx``, which is the ``dy`` of the layer below.

The rules themselves live with the layers (:mod:`funcnn.nn`) and losses
(:mod:`funcnn.losses`), each beside its forward code. This module only drives them:

* :func:`forward` runs a layer and keeps its tape (what its rule needs);
* :func:`backward` runs its rule on the tape and checks, while tracing, that it returned
  the structure and shapes of ``params`` and the input (a wrong rule fails naming the
  layer, not deep inside XLA);
* :func:`value_and_grad` / :func:`grad` put a model and a loss together;
* :func:`as_custom_vjp` hands a rule to ``jax.grad`` (Flax, Equinox, plain JAX);
* :func:`check` verifies a rule three ways (see :mod:`funcnn.gradcheck`).

Engines: ``"backprop"`` runs hand rules only, with no autodiff at all (the tests disable
it and train), and refuses a layer or loss without a rule (:class:`MissingRuleError`);
``"mixed"`` stands in ``jax.vjp`` of ``apply`` where a rule is missing; ``fit`` also
offers ``"jax"``, ``jax.grad`` throughout.

    g = backprop.grad(model, losses.softmax_cross_entropy)(params, x, y)
    # same pytree as jax.grad(lambda p: loss(model.apply(p, x), y))(params)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from funcnn import nn
from funcnn.losses import Loss

Array = jax.Array

__all__ = ["forward", "backward", "grad", "value_and_grad", "check_rules", "as_custom_vjp",
           "check",
           "Tape", "layer_stats", "MissingRuleError", "RuleError", "ENGINES",
           "missing_rules", "loss_value_and_grad"]

ENGINES = ("backprop", "mixed", "jax")
_WAYS_OUT = ("give it a hand rule (see 'Your own layer or loss' in the README; verify it "
             "with backprop.check), or train with engine='mixed' (jax.vjp where a rule is "
             "missing, hand rules elsewhere) or engine='jax' (jax.grad throughout), e.g. "
             "train.fit(..., engine='mixed')")


class MissingRuleError(TypeError):
    """A layer or loss has no hand-derived rule and the engine is strict."""


class RuleError(ValueError):
    """A hand rule returned the wrong structure, shape or dtype."""


@dataclasses.dataclass(frozen=True)
class Tape:
    """What a layer's forward pass left for its backward pass.

    ``inner`` is the rule's own tape (``(x, y)`` by default; a ``jax.vjp`` function when
    the mixed engine stood in for a missing rule); the input's shape and dtype are kept
    to check the rule's ``dx``. ``stats`` holds the layer's ``stats_fn`` results when
    the forward pass was asked for them (diagnostics).
    """

    inner: Any
    x_shape: tuple[int, ...]
    x_dtype: Any
    by_vjp: bool = False
    stats: dict | None = None


jax.tree_util.register_dataclass(Tape, data_fields=["inner", "stats"],
                                 meta_fields=["x_shape", "x_dtype", "by_vjp"])


def layer_stats(tape: Tape) -> dict[str, Array]:
    """Every layer's ``stats_fn`` results in a tape, keyed ``name + path``: the path of
    the layer as in its parameters (``"saturation[1]"`` for the second layer of a
    ``serial``). Empty unless the forward pass ran with ``stats=True``."""
    out = {}

    def walk(t, prefix):
        for name, value in (t.stats or {}).items():
            out[f"{name}{prefix}"] = value
        children = jax.tree_util.tree_flatten_with_path(
            t.inner, is_leaf=lambda n: isinstance(n, Tape))[0]
        for path, child in children:
            if isinstance(child, Tape):
                walk(child, prefix + jax.tree_util.keystr(path))

    walk(tape, "")
    return out


def missing_rules(layer: nn.Layer) -> list[nn.Layer]:
    """The layers in ``layer``'s tree that have no hand rule (outermost ones)."""
    if layer.backward_fn is None:
        return [layer]
    return [m for c in layer.children for m in missing_rules(c)]


@dataclasses.dataclass(frozen=True)
class _Run:
    """The engine: runs rules (and, if ``mixed``, ``jax.vjp`` for missing ones)."""

    mixed: bool
    stats: bool = False

    def forward(self, layer: nn.Layer, params: Any, x: Array, key: Array | None = None,
                train: bool = False) -> tuple[Array, Tape]:
        if layer.backward_fn is None:
            if not self.mixed:
                raise MissingRuleError(f"backprop: layer {layer!r} has no hand-derived "
                                       f"backward rule; {_WAYS_OUT}.")
            y, vjp = jax.vjp(lambda p, xx: layer.apply_fn(p, xx, key, train), params, x)
            return y, Tape(vjp, tuple(x.shape), x.dtype, True, self._stats(layer, (x, y)))
        if layer.forward_fn is None:
            y = layer.apply_fn(params, x, key, train)
            inner = (x, y)
        elif layer.children:
            y, inner = layer.forward_fn(params, x, key, train, self)
        else:
            y, inner = layer.forward_fn(params, x, key, train)
        return y, Tape(inner, tuple(x.shape), x.dtype, False, self._stats(layer, inner))

    def _stats(self, layer, tape):
        return layer.stats_fn(tape) if self.stats and layer.stats_fn is not None else None

    def backward(self, layer: nn.Layer, params: Any, tape: Tape, dy: Array,
                 key: Array | None = None, train: bool = False) -> tuple[Any, Array]:
        if not isinstance(tape, Tape):
            raise TypeError(f"backprop: {layer!r} got a tape of type {type(tape).__name__}; "
                            "pass the tape that backprop.forward (or run.forward) returned")
        if tape.by_vjp:
            return tape.inner(dy)
        if layer.children:
            out = layer.backward_fn(params, tape.inner, dy, key, train, self)
        else:
            out = layer.backward_fn(params, tape.inner, dy, key, train)
        return _checked(layer, params, tape, out)


def _checked(layer: nn.Layer, params: Any, tape: Tape, out: Any) -> tuple[Any, Array]:
    """``out`` if it is ``(dparams, dx)`` shaped like ``(params, x)``; else a RuleError."""
    where = f"backprop: the backward rule of {layer!r}"
    if not (isinstance(out, tuple) and len(out) == 2):
        raise RuleError(f"{where} must return a pair (dparams, dx); got "
                        f"{type(out).__name__}")
    dparams, dx = out
    want, got = jax.tree.structure(params), jax.tree.structure(dparams)
    if want != got:
        raise RuleError(f"{where} returned dparams with structure {got}, but the parameters "
                        f"have structure {want}; return the same pytree (e.g. nn.Dense(w=..., "
                        "b=...), or nn.NoParams() for a layer without weights)")
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    dparams = jax.tree.unflatten(want, [
        _same_shape(where, f"dparams{jax.tree_util.keystr(path)}", g, p.shape, p.dtype,
                    "parameter") for (path, p), g in zip(flat, jax.tree.leaves(dparams))])
    return dparams, _same_shape(where, "dx", dx, tape.x_shape, tape.x_dtype, "input")


def _same_shape(where: str, what: str, g: Any, shape: tuple, dtype: Any, of: str) -> Array:
    """``g`` if it has ``shape``; cast to the primal's float ``dtype`` as JAX casts
    cotangents (a float64 input into float32 weights gives float64 products)."""
    if not hasattr(g, "shape") or not hasattr(g, "dtype"):
        raise RuleError(f"{where} returned {what} = {g!r}, not an array")
    if tuple(g.shape) != tuple(shape):
        raise RuleError(f"{where} returned {what} of shape {tuple(g.shape)}; it must have "
                        f"the shape of the {of}, {tuple(shape)}")
    if g.dtype != dtype and jnp.issubdtype(dtype, jnp.inexact):
        g = g.astype(dtype)
    return g


def forward(layer: nn.Layer, params: Any, x: Array, key: Array | None = None,
            train: bool = False, *, engine: str = "backprop", stats: bool = False,
            ) -> tuple[Array, Tape]:
    """Runs ``layer`` forward, returning its output and the tape its backward needs.

    The output is computed by the layer's own ``apply_fn`` (or ``forward_fn``), so the
    forward math lives in one place. ``stats=True`` also records each layer's
    ``stats_fn`` (read them with :func:`layer_stats`).
    """
    return _run(engine, stats).forward(layer, params, x, key, train)


def backward(layer: nn.Layer, params: Any, tape: Tape, dy: Array, key: Array | None = None,
             train: bool = False) -> tuple[Any, Array]:
    """Turns ``dL/d(output)`` into ``(dL/dparams, dL/d(input))`` with the layer's rule.

    ``tape``, ``key`` and ``train`` are those of the :func:`forward` call.
    """
    return _run("mixed" if tape.by_vjp else "backprop").backward(layer, params, tape, dy,
                                                                  key, train)


def _run(engine: str, stats: bool = False) -> _Run:
    if engine not in ("backprop", "mixed"):
        raise ValueError(f"backprop: engine must be 'backprop' or 'mixed' (for 'jax' use "
                         f"jax.grad); got {engine!r}")
    return _Run(engine == "mixed", stats)


def loss_value_and_grad(loss: Callable, engine: str = "backprop") -> Callable:
    """``f(pred, target) -> (value, dL/dpred)`` from the loss's hand rule (or, under
    ``engine="mixed"``, from ``jax.grad`` when it has none)."""
    _run(engine)
    if isinstance(loss, Loss) and loss.grad is not None:
        def f(pred, target):
            value = loss.value(pred, target)  # checks the shapes of pred and target first
            g = _same_shape(f"backprop: the gradient rule of {loss!r}", "dL/dpred",
                            loss.grad(pred, target), pred.shape, pred.dtype, "predictions")
            return value, g
        return f
    if not callable(loss):
        raise TypeError(f"backprop: loss must be a losses.Loss or a function "
                        f"(pred, target) -> scalar; got {type(loss).__name__}")
    if engine != "mixed":
        name = loss.name if isinstance(loss, Loss) else getattr(loss, "__name__", repr(loss))
        raise MissingRuleError(
            f"backprop: loss {name!r} has no hand-derived gradient (a plain function, or a "
            f"Loss without grad); make it losses.Loss(name, value, grad), or {_WAYS_OUT}.")
    value = loss.value if isinstance(loss, Loss) else loss
    return lambda pred, target: jax.value_and_grad(value)(pred, target)


def check_rules(model: nn.Layer, loss: Callable, engine: str = "backprop") -> None:
    """Raises :class:`MissingRuleError` (naming what lacks a rule and the ways out) when
    ``engine="backprop"`` would meet a layer or a loss without a hand rule."""
    run = _run(engine)
    if not run.mixed and (missing := missing_rules(model)):
        where = "" if missing == [model] else f" in {model!r}"
        raise MissingRuleError(f"backprop: {', '.join(map(repr, missing))}{where} "
                               f"{'has' if len(missing) == 1 else 'have'} no hand-derived "
                               f"backward rule; {_WAYS_OUT}.")
    loss_value_and_grad(loss, engine)  # raises for a loss without a rule


def value_and_grad(model: nn.Layer, loss: Callable, *, engine: str = "backprop",
                   return_output: bool = False, return_stats: bool = False) -> Callable:
    """``f(params, x, y, *, key=None, train=False) -> (loss, grads)``, by hand.

    One forward pass records every layer's tape, the loss's ``grad`` gives
    ``dL/d(output)``, and the layers' rules run last to first. ``grads`` has exactly
    the pytree structure of ``params``. With ``return_output=True`` it returns
    ``((loss, output), grads)``, like ``jax.value_and_grad(..., has_aux=True)``, so a
    training loop gets the predictions for its metrics without a second forward pass;
    ``return_stats=True`` gives ``((loss, output, stats), grads)`` with the layers'
    diagnostics (:func:`layer_stats`). ``engine="mixed"`` lets layers and losses without
    a rule through (``jax.vjp``).
    """
    run = _run(engine, return_stats)
    check_rules(model, loss, engine)
    loss_vg = loss_value_and_grad(loss, engine)

    def f(params, x, y, *, key=None, train=False):
        out, tape = run.forward(model, params, x, key, train)
        value, dout = loss_vg(out, y)
        grads, _ = run.backward(model, params, tape, dout, key, train)
        if return_stats:
            return (value, out, layer_stats(tape)), grads
        return ((value, out), grads) if return_output else (value, grads)

    return f


def grad(model: nn.Layer, loss: Callable, *, engine: str = "backprop") -> Callable:
    """``f(params, x, y, *, key=None, train=False) -> grads``: the hand-derived gradient
    of ``loss(model.apply(params, x), y)`` with respect to ``params``."""
    vg = value_and_grad(model, loss, engine=engine)

    def f(params, x, y, *, key=None, train=False):
        return vg(params, x, y, key=key, train=train)[1]

    return f


def as_custom_vjp(layer_or_loss: nn.Layer | Loss, *, train: bool = False) -> Callable:
    """A function whose ``jax.grad`` runs funcnn's hand rule, for use in any JAX code.

    For a layer: ``f(params, x, key=None) = layer.apply(params, x, key=key, train=train)``;
    for a loss: ``f(pred, target) = loss(pred, target)``. Differentiating ``f`` with
    ``jax.grad`` / ``jax.vjp`` (inside Flax, Equinox, optax code) calls the hand rule,
    not autodiff of the forward code. ``train`` is fixed when wrapping (Flax's
    ``deterministic`` / Equinox's ``inference`` flag: wrap once for each mode). ``key``
    and integer targets get no gradient; float targets (soft labels, distillation) get
    ``jax.vjp``'s, as the hand rules give only ``dL/dpred``.
    """
    if isinstance(layer_or_loss, Loss):
        loss = layer_or_loss
        if loss.grad is None:
            raise MissingRuleError(f"as_custom_vjp: {loss!r} has no hand gradient to hand "
                                   "to jax.grad; differentiate loss.value directly instead")
        vg = loss_value_and_grad(loss)

        @jax.custom_vjp
        def f_loss(pred, target):
            return loss.value(pred, target)

        def fwd_loss(pred, target):
            value, g = vg(pred, target)
            return value, (g, pred, target)

        def bwd_loss(res, ct):
            g, pred, target = res
            if not jnp.issubdtype(target.dtype, jnp.inexact):
                return g * ct, None
            return g * ct, jax.vjp(lambda t: loss.value(pred, t), target)[1](ct)[0]

        f_loss.defvjp(fwd_loss, bwd_loss)
        return f_loss
    if not isinstance(layer_or_loss, nn.Layer):
        raise TypeError(f"as_custom_vjp: expected an nn.Layer or a losses.Loss; got "
                        f"{type(layer_or_loss).__name__}")
    layer = layer_or_loss
    run = _run("backprop")
    if missing := missing_rules(layer):
        raise MissingRuleError(f"as_custom_vjp: {', '.join(map(repr, missing))} has no hand "
                               "rule to hand to jax.grad; use layer.apply directly instead")

    @jax.custom_vjp
    def f(params, x, key=None):
        return layer.apply_fn(params, x, key, train)

    def fwd(params, x, key=None):
        y, tape = run.forward(layer, params, x, key, train)
        return y, (params, tape, key)

    def bwd(res, dy):
        params, tape, key = res
        dparams, dx = run.backward(layer, params, tape, dy, key, train)
        return dparams, dx, None

    f.defvjp(fwd, bwd)
    return f


def check(target: nn.Layer | Loss | Any, *args: Any, **kwargs: Any) -> Any:
    """Verifies a hand rule against ``jax.vjp`` and finite differences: see
    :func:`funcnn.gradcheck.check` (its own module, as it uses autodiff)."""
    from funcnn import gradcheck
    return gradcheck.check(target, *args, **kwargs)
