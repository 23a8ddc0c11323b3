"""Issue 9's reference: Nielsen's ``dbl_conv`` with plain canonical-layout hand rules.

The issue that asked for funcnn's convolution rules set its speed targets from "a plain
version of the canonical-layout rules (a few dozen lines, SGD step in a
``lax.scan``)": 10.7x faster than ``jax.grad`` at batch 10 and 18x at batch 128 on
the machine where it was written. This module is that plain version, written without
funcnn, so that ``bench_conv.py`` can measure on *this* machine, in the same run, what
the method itself gains over ``jax.grad`` of the same code, and how funcnn's ``fit``
compares with it.

The net: ``28x28x1 -> conv 5x5 20, max-pool 2, sigmoid -> conv 5x5 40, max-pool 2,
sigmoid -> dense 100 sigmoid -> dense 10``, mean softmax cross-entropy, SGD. The rules
are the textbook ones, every convolution in NHWC/HWIO layout:

* ``dW`` = the input, channels as batch ``(C, H, W, N)``, convolved with ``dy`` as an
  ``(Ho, Wo, N, O)`` kernel;
* ``dx`` = the full convolution of ``dy`` with the kernel flipped in both spatial axes
  and its input and output channels swapped;
* max-pool's backward: ``dy`` to every element equal to its window's maximum (ties,
  which random float data does not have, would each get it; funcnn gives it to the
  first).

``grad_fn(params, x, y)`` equals ``jax.grad(loss)`` to about 1e-15 in float64
(``tests/test_bench_reference.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, pads=((0, 0), (0, 0))):
    return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_NHWC)


def _bias(y, b):
    return y + b.reshape((1,) * (y.ndim - 1) + (-1,))   # explicit ranks, no promotion


def _pool(h):
    n, hh, ww, c = h.shape
    return h.reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))


def _unpool(h, p, dp):
    n, hh, ww, c = h.shape
    hit = h.reshape(n, hh // 2, 2, ww // 2, 2, c) == p[:, :, None, :, None, :]
    return (hit * dp[:, :, None, :, None, :]).reshape(h.shape)


def _weight_grad(x, dy):
    """``(N, H, W, C)``, ``(N, Ho, Wo, O)`` -> ``(kh, kw, C, O)``."""
    return _conv(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3)).transpose(1, 2, 0, 3)


def _input_grad(dy, w):
    kh, kw = w.shape[:2]
    return _conv(dy, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2),
                 ((kh - 1, kh - 1), (kw - 1, kw - 1)))


def init(key: jax.Array, dtype=jnp.float32) -> dict:
    k = jax.random.split(key, 4)
    shapes = {"w1": (5, 5, 1, 20), "w2": (5, 5, 20, 40), "w3": (640, 100), "w4": (100, 10)}
    params = {name: jax.random.normal(kk, shape, dtype) / jnp.sqrt(shape[-1])
              for kk, (name, shape) in zip(k, shapes.items())}
    params.update(b1=jnp.zeros(20, dtype), b2=jnp.zeros(40, dtype),
                  b3=jnp.zeros(100, dtype), b4=jnp.zeros(10, dtype))
    return params


def _forward(p, x):
    h1 = _bias(_conv(x, p["w1"]), p["b1"])
    p1 = _pool(h1)
    a1 = jax.nn.sigmoid(p1)
    h2 = _bias(_conv(a1, p["w2"]), p["b2"])
    p2 = _pool(h2)
    a2 = jax.nn.sigmoid(p2)
    f = a2.reshape(x.shape[0], -1)
    a3 = jax.nn.sigmoid(_bias(f @ p["w3"], p["b3"]))
    return _bias(a3 @ p["w4"], p["b4"]), (h1, p1, a1, h2, p2, a2, f, a3)


def loss(p: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    z, _ = _forward(p, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1))


def grad_fn(p: dict, x: jax.Array, y: jax.Array) -> dict:
    """The hand-derived gradient of :func:`loss`."""
    z, (h1, p1, a1, h2, p2, a2, f, a3) = _forward(p, x)
    dz = (jax.nn.softmax(z) - jax.nn.one_hot(y, 10, dtype=z.dtype)) / x.shape[0]
    g = {"w4": a3.T @ dz, "b4": dz.sum(0)}
    dz3 = (dz @ p["w4"].T) * a3 * (1 - a3)
    g.update(w3=f.T @ dz3, b3=dz3.sum(0))
    dh2 = _unpool(h2, p2, (dz3 @ p["w3"].T).reshape(a2.shape) * a2 * (1 - a2))
    g.update(w2=_weight_grad(a1, dh2), b2=dh2.sum((0, 1, 2)))
    dh1 = _unpool(h1, p1, _input_grad(dh2, p["w2"]) * a1 * (1 - a1))
    g.update(w1=_weight_grad(x, dh1), b1=dh1.sum((0, 1, 2)))
    return g


def scan_fit(gradient, learning_rate: float = 0.1):
    """A jitted ``(params, xb, yb) -> params``: SGD over the batches ``xb[i], yb[i]`` in
    one ``lax.scan``, the gradient from ``gradient(params, x, y)``."""
    @jax.jit
    def fit(params, xb, yb):
        def step(p, batch):
            g = gradient(p, *batch)
            return jax.tree.map(lambda w, d: w - learning_rate * d, p, g), None
        return lax.scan(step, params, (xb, yb))[0]
    return fit
