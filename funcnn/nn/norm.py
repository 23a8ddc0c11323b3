"""Layer normalisation over the feature axis, with its hand rule."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.nn.layer import Layer, check_batch, explain_params_call

Array = jax.Array

__all__ = ["LayerNorm", "layer_norm"]


@dataclasses.dataclass(frozen=True)
class LayerNorm:
    """Per-feature ``scale`` (gamma, init 1) and ``bias`` (beta, init 0)."""

    scale: Array
    bias: Array


jax.tree_util.register_dataclass(LayerNorm, data_fields=["scale", "bias"], meta_fields=[])
explain_params_call(LayerNorm, "nn.layer_norm()")   # Flax's nn.LayerNorm(): a hint


def _lead(v: Array, ndim: int) -> Array:
    """``v`` (one per feature) with leading axes, to broadcast over the last axis."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _affine(xhat: Array, params: LayerNorm) -> Array:
    return xhat * _lead(params.scale, xhat.ndim) + _lead(params.bias, xhat.ndim)


def layer_norm(eps: float = 1e-5) -> Layer:
    """Normalises each example's last axis to mean 0 and variance 1, then scales and
    shifts it: ``y = scale * (x - mean) / sqrt(var + eps) + bias``.

    The statistics are over the last axis only (the features of a dense layer, the
    channels of each pixel of an image), as Flax's ``LayerNorm`` does by default;
    ``scale`` and ``bias`` have the last axis's size. ``eps`` is 1e-5 (PyTorch,
    Equinox; Flax uses 1e-6). Works on any batch-first input of rank 2 or more.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)):
        raise TypeError(f"layer_norm: eps must be a number; got {eps!r}")
    if not eps > 0 or not np.isfinite(eps):
        raise ValueError(f"layer_norm: eps must be > 0; got {eps!r}")
    eps = float(eps)

    def init_fn(key, in_shape, dtype):
        d = in_shape[-1]
        return in_shape, LayerNorm(jnp.ones((d,), dtype), jnp.zeros((d,), dtype))

    def normalise(x):
        mean = jnp.mean(x, axis=-1, keepdims=True)
        centred = x - mean
        r = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
        return centred * r, r

    def apply_fn(params, x, key, train):
        check_batch("layer_norm", x, None)
        if x.ndim < 2 or x.shape[-1] != params.scale.shape[0]:
            raise ValueError(f"layer_norm: expected a batch-first input whose last axis has "
                             f"{params.scale.shape[0]} features; got shape {tuple(x.shape)}")
        return _affine(normalise(x)[0], params)

    def forward_fn(params, x, key, train):
        xhat, r = normalise(x)
        return _affine(xhat, params), (xhat, r)

    # With d features, xhat = (x - mean) * r and r = (var + eps)^(-1/2):
    #   dscale = sum over examples of dy * xhat;  dbias = sum of dy
    #   g = dy * scale = dL/dxhat. Through the mean and the variance,
    #   dx = r * (g - mean(g) - xhat * mean(g * xhat))    (means over the d features)
    # (the two subtracted terms remove the directions that normalising cannot change:
    # adding a constant to x, and scaling x - mean).
    def backward_fn(params, tape, dy, key, train):
        xhat, r = tape
        axes = tuple(range(dy.ndim - 1))
        g = dy * _lead(params.scale, dy.ndim)
        dx = r * (g - jnp.mean(g, axis=-1, keepdims=True)
                  - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True))
        return LayerNorm(jnp.sum(dy * xhat, axis=axes), jnp.sum(dy, axis=axes)), dx

    return Layer("layer_norm", init_fn, apply_fn, backward_fn, forward_fn,
                 config={"eps": eps})
