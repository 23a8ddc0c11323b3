"""Combinators: ``serial`` (composition) and ``residual`` (a skip connection).

Their rules run their children's rules through ``run`` (see :mod:`funcnn.nn.layer`) and
keep the children's tapes, so backpropagating through a block never recomputes it.
"""

from __future__ import annotations

import jax

from funcnn.nn.layer import Layer, layer_keys, not_a_layer_hint

Array = jax.Array

__all__ = ["serial", "residual"]


def serial(*layers: Layer) -> Layer:
    """Composes layers in order: ``serial(f, g, h)(x) = h(g(f(x)))``.

    Its parameters are the tuple of its layers' parameters; a ``key`` is split into
    one key per layer.
    """
    if not layers:
        raise ValueError("serial: needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {i} is {layer!r}, not a layer; "
                            f"{not_a_layer_hint(layer)}")
    n = len(layers)

    def init_fn(key, in_shape, dtype):
        params = []
        for layer, k in zip(layers, jax.random.split(key, n)):
            in_shape, p = layer.init_fn(k, in_shape, dtype)
            params.append(p)
        return in_shape, tuple(params)

    def check(params):
        if not isinstance(params, tuple) or len(params) != n:
            raise ValueError(f"serial: expected a tuple of {n} parameter sets, one per "
                             f"layer; got {type(params).__name__}"
                             + (f" of length {len(params)}" if isinstance(params, tuple)
                                else ""))

    def apply_fn(params, x, key, train):
        check(params)
        for layer, p, k in zip(layers, params, layer_keys(key, n)):
            x = layer.apply_fn(p, x, k, train)
        return x

    # Forward: each layer's output is the next one's input; the tape is the tuple of
    # the layers' tapes.
    def forward_fn(params, x, key, train, run):
        check(params)
        tapes = []
        for layer, p, k in zip(layers, params, layer_keys(key, n)):
            x, t = run.forward(layer, p, x, k, train)
            tapes.append(t)
        return x, tuple(tapes)

    # Backward: the chain rule, last layer first; each layer's dx is the dy of the
    # layer before it.
    def backward_fn(params, tapes, dy, key, train, run):
        keys = layer_keys(key, n)
        grads = [None] * n
        for i in reversed(range(n)):
            grads[i], dy = run.backward(layers[i], params[i], tapes[i], dy, keys[i], train)
        return tuple(grads), dy

    return Layer("serial", init_fn, apply_fn, backward_fn, forward_fn, children=layers)


def residual(block: Layer) -> Layer:
    """A skip connection around ``block``: ``y = x + block(x)`` (He et al., 2016).

    ``block`` must keep the input's shape. Its parameters are ``block``'s.
    """
    if not isinstance(block, Layer):
        raise TypeError(f"residual: block must be a layer; got {block!r}")

    def init_fn(key, in_shape, dtype):
        out_shape, params = block.init_fn(key, in_shape, dtype)
        if tuple(out_shape) != tuple(in_shape):
            raise ValueError(f"residual: the block must keep the shape of its input, "
                             f"{tuple(in_shape)}; {block!r} gives {tuple(out_shape)}")
        return in_shape, params

    def apply_fn(params, x, key, train):
        return x + block.apply_fn(params, x, key, train)

    def forward_fn(params, x, key, train, run):
        y, tape = run.forward(block, params, x, key, train)
        return x + y, tape

    # y = x + g(x): dL/dx = dy + (dg/dx)^T dy (the skip carries dy through unchanged),
    # and the parameters are g's alone, so dL/dparams = g's rule applied to dy.
    def backward_fn(params, tape, dy, key, train, run):
        dparams, dx = run.backward(block, params, tape, dy, key, train)
        return dparams, dy + dx

    return Layer("residual", init_fn, apply_fn, backward_fn, forward_fn, children=(block,))
