"""The convolution's and pooling's alternative backward forms, each against jax.vjp
(1e-10, float64) and finite differences: dx by col2im and by the full convolution
(above ``IM2COL_MAX``), dW by im2col and by the convolution form for a one-channel
input, and the interleaved max/avg-pool gradient of windows that tile the input (with
rows and columns left over, and with padding), ties included."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import backprop, nn
from funcnn.nn import conv

F64 = jnp.float64


def _check(layer, **kw):
    result = backprop.check(layer, train=False, **kw)
    assert result.vjp_error <= 1e-10 and result.fd_points > 0 and result.kinks_skipped == 0


# (input H, W, C), features, kernel, stride, padding
GEOMETRIES = [
    ((6, 6, 1), 2, 3, 1, "VALID"),
    ((7, 5, 3), 4, 3, 2, "VALID"),
    ((7, 6, 2), 2, (3, 2), (2, 1), "SAME"),
    ((4, 6, 2), 3, 2, 1, ((1, 2), (0, 3))),
    ((5, 4, 1), 2, 2, 3, 2),            # padding wider than the kernel - 1
    ((9, 9, 2), 3, 3, 3, "SAME"),       # stride = kernel
]


@pytest.mark.parametrize("shape,features,kernel,stride,padding", GEOMETRIES)
def test_input_gradient_col2im_equals_full_convolution(shape, features, kernel, stride,
                                                       padding):
    window, strides = conv.pair(kernel, "", ""), conv.pair(stride, "", "")
    pads = conv.conv_padding(padding, shape[:2], window, strides, "")
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (3, *shape), F64)
    w = jax.random.normal(k2, (*window, shape[2], features), F64)
    y, vjp = jax.vjp(lambda x: jax.lax.conv_general_dilated(
        x, w, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC")), x)
    dy = jax.random.normal(k3, y.shape, F64)
    a, b = jax.jit(lambda dy, w: (conv.conv_input_grad(dy, w, shape[:2], strides, pads),
                                  conv._conv_input_grad_by_conv(dy, w, shape[:2], strides,
                                                                pads)))(dy, w)
    np.testing.assert_allclose(a, vjp(dy)[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b, vjp(dy)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,features,kernel,stride,padding",
                         [GEOMETRIES[0], GEOMETRIES[2], GEOMETRIES[4]])
def test_conv_rule_with_the_large_problem_forms(monkeypatch, shape, features, kernel,
                                                stride, padding):
    """With IM2COL_MAX = 0 every problem is "large": dx by the full convolution and dW
    by the convolution form, one-channel inputs too."""
    monkeypatch.setattr(conv, "IM2COL_MAX", 0)   # read when the program is traced
    _check(nn.conv2d(features, kernel, stride, padding, bias_init="normal"),
           input_shape=shape, batch_size=2, seed=3)


# windows that tile the input: (H, W, C), window = stride, padding
TILING = [((7, 5, 2), 2, "VALID"),          # a row and a column left over
          ((5, 7, 1), (2, 3), "SAME"),
          ((6, 5, 3), 3, 1),
          ((4, 6, 2), (2, 3), ((1, 0), (2, 2)))]


@pytest.mark.parametrize("pool", [nn.max_pool, nn.avg_pool])
@pytest.mark.parametrize("shape,window,padding", TILING)
def test_tiling_pool_rules_equal_jax_grad(pool, shape, window, padding):
    _check(pool(window, window, padding), input_shape=shape, batch_size=2, seed=4)


@functools.partial(jax.jit, static_argnums=0)
def _rule_and_vjp(layer, x, dy):
    _, tape = backprop.forward(layer, nn.NoParams(), x, None, False)
    hand = backprop.backward(layer, nn.NoParams(), tape, dy, None, False)[1]
    _, vjp = jax.vjp(lambda xx: layer.apply(nn.NoParams(), xx), x)
    return hand, vjp(dy)[0]


@pytest.mark.parametrize("shape,window,padding", TILING)
def test_tiling_max_pool_ties_go_to_the_first_maximum(shape, window, padding):
    k1, k2 = jax.random.split(jax.random.key(5))
    x = jax.random.randint(k1, (3, *shape), -2, 2).astype(F64)   # many equal values
    x = x.at[0].set(0.0)                                          # whole windows tie
    layer = nn.max_pool(window, window, padding)
    y_shape = (3, *layer.output_shape(shape))
    dx, auto = _rule_and_vjp(layer, x, jax.random.normal(k2, y_shape, F64))
    np.testing.assert_array_equal(dx, auto)   # each gradient goes to one element
    # In the all-zero example each window's gradient sits at its first element that
    # is not padding (-inf padding never wins).
    dx, auto = _rule_and_vjp(layer, x, jnp.ones(y_shape, F64))
    np.testing.assert_array_equal(dx, auto)
    (kh, kw) = conv.pair(window, "", "")
    (top, _), (left, _) = conv.conv_padding(padding, shape[:2], (kh, kw), (kh, kw), "")
    expect = np.zeros(shape[:2])
    for i in range(y_shape[1]):
        for j in range(y_shape[2]):
            expect[max(i * kh - top, 0), max(j * kw - left, 0)] += 1
    np.testing.assert_array_equal(dx[0, :, :, 0], expect)
