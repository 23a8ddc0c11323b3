"""Inverted dropout; its tape is the mask, so the backward pass reuses it."""

from __future__ import annotations

from collections.abc import Sequence

import jax

from funcnn import parallel
from funcnn._checks import concrete
from funcnn.nn.layer import Layer, NoParams, check_batch

Array = jax.Array

__all__ = ["dropout", "dropout_mask"]


def dropout_mask(key: Array, rate: float | Array, shape: Sequence[int], **sharding) -> Array:
    """The keep-mask of inverted dropout: ``1/(1-rate)`` where kept, 0 where dropped.

    ``sharding``: ``out_sharding=`` for ``jax.random.bernoulli`` (from
    :func:`funcnn.parallel.sharded_like`), so that on an Explicit mesh each device draws
    only its own examples' mask; the bits are the same as unsplit."""
    keep = jax.random.bernoulli(key, 1.0 - rate, tuple(shape), **sharding)
    return keep / (1.0 - rate)


def dropout(rate: float | Array) -> Layer:
    """Inverted dropout: zero each input with probability ``rate``, scale the rest.

    In training, ``y = x * mask / (1 - rate)`` with ``mask ~ Bernoulli(1 - rate)``, so
    the expected output equals ``x`` and nothing changes at test time (``train=False``
    is the identity). ``rate`` is the probability of *dropping* (as PyTorch, Flax and
    NNFS; stax's ``Dropout(rate)`` keeps with probability ``rate``). ``rate`` may be a
    traced array, e.g. inside a ``vmap`` over dropout rates.
    """
    if rate is None or isinstance(rate, (str, bytes, bool)):
        raise TypeError(f"dropout: rate must be a number in [0, 1) (the probability of "
                        f"dropping); got {rate!r}")
    r = concrete(rate)
    if r is not None:
        if r.shape != () or r.dtype.kind not in "iuf" or not (0.0 <= float(r) < 1.0):
            raise ValueError(f"dropout: rate is the probability of dropping and must be "
                             f"in [0, 1); got {rate!r}")

    def init_fn(key, in_shape, dtype):
        return in_shape, NoParams()

    def forward_fn(params, x, key, train):
        check_batch("dropout", x, None)
        if not train:
            return x, None
        if key is None:
            raise ValueError("dropout: train=True needs a PRNG key: "
                             "model.apply(params, x, key=jax.random.key(...), train=True)")
        m = dropout_mask(key, rate, x.shape, **parallel.sharded_like(x)).astype(x.dtype)
        return x * m, m

    def apply_fn(params, x, key, train):
        return forward_fn(params, x, key, train)[0]

    # y = x * m with the mask m fixed by the key, so dx = dy * m: the same m, kept on
    # the tape (a fresh draw would drop other units than the forward pass did).
    def backward_fn(params, mask, dy, key, train):
        return NoParams(), dy if mask is None else dy * mask

    return Layer("dropout", init_fn, apply_fn, backward_fn, forward_fn, {"rate": rate})
