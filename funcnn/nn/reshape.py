"""``flatten``: each example to a vector, and its (trivial) rule."""

from __future__ import annotations

import math

from funcnn.nn.layer import Layer, NoParams, check_batch

__all__ = ["flatten"]


def flatten() -> Layer:
    """Flattens each example to a vector: ``(N, d1, d2, ...) -> (N, d1*d2*...)``."""

    def init_fn(key, in_shape, dtype):
        return (math.prod(in_shape),), NoParams()

    def apply_fn(params, x, key, train):
        check_batch("flatten", x, None)
        if x.ndim < 2:
            raise ValueError(f"flatten: expected a batch-first input (N, ...); got shape "
                             f"{tuple(x.shape)}")
        return x.reshape(x.shape[0], -1)

    # A reshape moves no values: reshape the gradient back to the input's shape.
    def backward_fn(params, tape, dy, key, train):
        x, _ = tape
        return NoParams(), dy.reshape(x.shape)

    return Layer("flatten", init_fn, apply_fn, backward_fn)
