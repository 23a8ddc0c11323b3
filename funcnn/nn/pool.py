"""Max- and average-pooling over channels-last images, each with its hand rule.

Both slide a ``kh x kw`` window ``s`` apart over every channel of ``(N, H, W, C)``
images. Write ``xp`` for the padded input and, for one window offset ``(u, v)``, its
*tap* ``xp[:, u::s, v::s]`` cut to the output's size: the value each window holds at
that offset. A window's output is the max (or mean) of its ``kh * kw`` taps.

The backward rules send ``dy`` back through the taps: each tap's share of ``dy`` is
spread onto the input rows and columns it came from (``s - 1`` zeros between entries,
an interior-padded ``lax.pad``), and the spreads are summed, so overlapping windows
(stride below the window) add up as they should. When the windows tile the input
(stride equal to the window, as in Nielsen's and LeNet's 2x2 pooling) the taps meet
every input element at most once, so their shares are simply interleaved: stacked
and reshaped into the windows' places, one pass instead of a sum of ``kh * kw``
spreads (measured on a 2-core CPU in ``dbl_conv``, ``benchmarks/bench_conv.py``:
the training step about 1.1x faster at batch 10, as fast at batch 128).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnn.nn.conv import Padding, check_image, check_image_batch, pair, sliding
from funcnn.nn.layer import Layer, NoParams, other_keywords

Array = jax.Array

__all__ = ["max_pool", "avg_pool"]


def _taps(xp: Array, window, strides, outs):
    """``[(u, v, tap)]``: for each window offset, ``xp[:, u::s, v::s]`` cut to ``outs``;
    in row-major order of the offsets."""
    (kh, kw), (sh, sw), (ho, wo) = window, strides, outs
    return [(u, v, lax.slice(xp, (0, u, v, 0),
                             (xp.shape[0], u + (ho - 1) * sh + 1, v + (wo - 1) * sw + 1,
                              xp.shape[3]), (1, sh, sw, 1)))
            for u in range(kh) for v in range(kw)]


def _spread(g: Array, u: int, v: int, strides, padded_shape) -> Array:
    """Places ``g[:, i, j]`` at ``[:, u + s*i, v + s*j]`` of a zero array of
    ``padded_shape``: the transpose of taking a tap."""
    (sh, sw), (_, hp, wp, _) = strides, padded_shape
    zero = jnp.zeros((), g.dtype)
    return lax.pad(g, zero, ((0, 0, 0), (u, hp - u - (g.shape[1] - 1) * sh - 1, sh - 1),
                             (v, wp - v - (g.shape[2] - 1) * sw - 1, sw - 1), (0, 0, 0)))


def _interleave(shares, window, pads, x_shape) -> Array:
    """For windows that tile the input (stride = window): the taps' shares, in
    row-major order of the offsets, put back in their windows' places, ``share[:, i, j]``
    of tap ``(u, v)`` at ``[:, kh*i + u, kw*j + v]`` of the padded input; then cut to
    the unpadded input (zeros for the rows and columns no window covers)."""
    (kh, kw), (n, h, w, c) = window, x_shape
    ho, wo = shares[0].shape[1:3]
    g = jnp.stack(shares, axis=3).reshape(n, ho, wo, kh, kw, c).transpose(0, 1, 3, 2, 4, 5)
    # One group of axes merged at a time: on an Explicit mesh JAX follows the batch's
    # sharding through such reshapes only.
    g = g.reshape(n, ho * kh, wo, kw, c).reshape(n, ho * kh, wo * kw, c)
    (top, _), (left, _) = pads
    return lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (-top, h + top - ho * kh, 0),
                                               (-left, w + left - wo * kw, 0), (0, 0, 0)))


def _pool(name: str, window, stride, padding, pad_value: float, reduce, backward_taps
          ) -> Layer:
    """The shared part of a pooling layer: ``reduce(xp, window, strides)`` on the padded
    input; ``backward_taps(taps, y, dy)`` yields each tap's share of ``dy``."""
    window = pair(window, "window", name)
    if stride is None:
        w = window[0] if window[0] == window[1] else window
        raise ValueError(f"{name}: give the stride, as the references disagree on its "
                         f"default: {name}({w}, {w}) moves the window by its size "
                         f"(PyTorch's default, Nielsen's pooling), {name}({w}, 1) by one "
                         "(Flax's, stax's and Equinox's default)")
    strides = pair(stride, "stride", name)
    geometry = sliding(name, "window", window, strides, padding)

    def init_fn(key, in_shape, dtype):
        check_image(name, in_shape)
        h, w, c = in_shape
        _, (ho, wo) = geometry(h, w)
        return (ho, wo, c), NoParams()

    def apply_fn(params, x, key, train):
        check_image_batch(name, x)
        pads, _ = geometry(x.shape[1], x.shape[2])
        return reduce(_pad(x, pads, pad_value), window, strides)

    def backward_fn(params, tape, dy, key, train):
        x, y = tape
        pads, outs = geometry(x.shape[1], x.shape[2])
        xp = _pad(x, pads, pad_value)
        shares = backward_taps(_taps(xp, window, strides, outs), y, dy)
        if window == strides:
            return NoParams(), _interleave([g for _, _, g in shares], window, pads,
                                           x.shape)
        dxp = sum(_spread(g, u, v, strides, xp.shape) for u, v, g in shares)
        return NoParams(), dxp[:, pads[0][0]:pads[0][0] + x.shape[1],
                               pads[1][0]:pads[1][0] + x.shape[2]]

    return Layer(name, init_fn, apply_fn, backward_fn,
                 config={"window": window, "stride": strides, "padding": padding})


def _pad(x: Array, pads, value) -> Array:
    if not any(p for pair_ in pads for p in pair_):
        return x
    return jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=value)


@other_keywords
def max_pool(window: int | Sequence[int], stride: int | Sequence[int] | None = None,
             padding: Padding = "VALID") -> Layer:
    """The largest value of each ``window`` (``k`` or ``(kh, kw)``), windows ``stride``
    apart, per channel: ``(N, H, W, C) -> (N, H', W', C)``.

    ``stride`` must be given, because the references disagree on its default (PyTorch:
    the window; Flax, stax, Equinox: 1), and leaving it out is an error that says so;
    Nielsen's non-overlapping 2x2 pooling is ``max_pool(2, 2)``. ``"VALID"`` padding
    (default) drops the rows and columns that do not fill a window (Theano's
    ``ignore_border=True``); ``"SAME"`` pads with -inf.

    Rule: the window's gradient goes to its maximal element. When several elements
    tie for the max (common after ReLU, where whole windows are 0) all of it goes to
    the *first* maximal one in row-major order of the window, none to the others: the
    choice ``jax.grad`` of ``lax.reduce_window`` makes, so both engines agree. (Any
    split is a valid subgradient; this one keeps the gradient's sum equal to ``dy``'s.)
    """
    def reduce(xp, window, strides):
        return lax.reduce_window(xp, np.array(-np.inf, xp.dtype), lax.max, (1, *window, 1),
                                 (1, *strides, 1), "VALID")

    # Walk the taps in row-major order; the first tap equal to the window's max, and
    # not already claimed by an earlier tap, takes the whole dy.
    def backward_taps(taps, y, dy):
        free = jnp.ones(y.shape, bool)
        for u, v, tap in taps:
            hit = free & (tap == y)
            free = free & ~hit
            yield u, v, jnp.where(hit, dy, jnp.zeros((), dy.dtype))

    return _pool("max_pool", window, stride, padding, -jnp.inf, reduce, backward_taps)


@other_keywords
def avg_pool(window: int | Sequence[int], stride: int | Sequence[int] | None = None,
             padding: Padding = "VALID") -> Layer:
    """The mean of each ``window``, windows ``stride`` apart, per channel.

    ``"SAME"`` pads with zeros that count in the mean (Flax's default,
    ``count_include_pad=True``). Rule: ``y = (1/(kh*kw)) sum of the taps``, so every
    tap gets ``dy / (kh*kw)``.
    """
    kh, kw = pair(window, "window", "avg_pool")

    def reduce(xp, window, strides):
        total = lax.reduce_window(xp, np.zeros((), xp.dtype), lax.add, (1, *window, 1),
                                  (1, *strides, 1), "VALID")
        return total / (kh * kw)

    def backward_taps(taps, y, dy):
        share = dy / (kh * kw)
        for u, v, _ in taps:
            yield u, v, share

    return _pool("avg_pool", window, stride, padding, 0.0, reduce, backward_taps)
