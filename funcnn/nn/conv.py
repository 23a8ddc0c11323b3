"""The 2-D convolution ``y = x * W + b`` and its hand rule, in channels-last layout.

Layout: images are batch-first and channels-last, ``x`` of shape ``(N, H, W, C)``
(NHWC); kernels are ``(kh, kw, C_in, C_out)`` (HWIO). These are stax's, Flax's and
Haiku's layouts. (Nielsen's Theano code, PyTorch and Equinox are channels-first,
``(N, C, H, W)`` images and ``(C_out, C_in, kh, kw)`` kernels: the same map, with the
axes moved; ``x.transpose(0, 2, 3, 1)`` converts images.)

Backpropagation through a convolution: a worked answer to Nielsen's chapter-6 problem
---------------------------------------------------------------------------------------

Write the padded input ``xp`` (``x`` with ``p`` zero rows above, and so on), the stride
``s``, and one output channel ``o``::

    y[n, i, j, o] = b[o] + sum_{u, v, c} xp[n, s*i + u, s*j + v, c] * W[u, v, c, o]

Every weight is used at every output position, so its gradient sums over them (as the
dense rule ``dW = x^T dy`` sums over the batch)::

    dW[u, v, c, o] = sum_{n, i, j} xp[n, s*i + u, s*j + v, c] * dy[n, i, j, o]
    db[o]          = sum_{n, i, j} dy[n, i, j, o]

``dW`` is itself a convolution: of the input with ``dy`` as the kernel, where the
batch axis ``n`` is the one summed over (so it plays the part of the input channels)
and ``c`` is carried through (so it plays the part of the batch); ``dy``'s taps are
``s`` apart (a kernel dilated by the stride). Each input pixel reaches every output
whose window covers it, so its gradient gathers those outputs back::

    dxp[n, a, b, c] = sum_{i, j, o} dy[n, i, j, o] * W[a - s*i, b - s*j, c, o]

where ``W`` is zero outside its ``kh x kw`` support. That is a *full* convolution of
``dy`` (spread out with ``s - 1`` zeros between its entries when ``s > 1``, padded by
``kh - 1`` on each side) with the kernel flipped in both spatial axes and with its
input and output channels swapped: ``W'[u, v, o, c] = W[kh-1-u, kw-1-v, c, o]``.
Crop ``dxp`` to the unpadded input and that is ``dx``.

The same sum read the other way round, output by output, is how ``dx`` is computed:
each output position ``(i, j)`` hands every tap ``(u, v)`` of its window the vector
``cols[n, i, j, u, v, :] = sum_o dy[n, i, j, o] W[u, v, :, o]`` (one matmul of ``dy``
with ``W`` transposed), and ``dxp[n, a, b]`` adds up what it was handed: the entries
with ``s*i + u = a`` and ``s*j + v = b``, which is the formula above (col2im: each tap's
share spread ``s`` apart onto the rows and columns it came from, summed over the taps).

Why write these by hand, when ``jax.grad`` derives them? Its derivation
(``lax.conv_general_dilated``'s transpose rules) expresses both as convolutions with
swapped dimension numbers, which XLA's CPU backend runs far slower than a convolution
in the layout it is tuned for, especially inside a ``lax.scan`` (jax-ml/jax#12868).
Here ``dW`` is a convolution in canonical NHWC/HWIO layout (one matmul of the patches,
im2col, for a one-channel input) and ``dx`` the matmul and col2im above (the full
convolution when the matmul's output would be large); ``benchmarks/bench_conv.py``
measures the difference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnn import parallel
from funcnn.nn.dense import check_bias_init, make_bias, resolve_init
from funcnn.nn.layer import Layer, explain_params_call, other_keywords

Array = jax.Array
Padding = str | int | Sequence[tuple[int, int]]

__all__ = ["Conv", "conv2d", "pair", "conv_padding", "check_image", "check_image_batch",
           "sliding", "out_size"]

_NHWC = ("NHWC", "HWIO", "NHWC")


@dataclasses.dataclass(frozen=True)
class Conv:
    """Kernel and biases of one convolution: ``w`` of shape ``(kh, kw, C_in, C_out)``,
    ``b`` of shape ``(C_out,)``."""

    w: Array
    b: Array


jax.tree_util.register_dataclass(Conv, data_fields=["w", "b"], meta_fields=[])
explain_params_call(Conv, "nn.conv2d({}, kernel_size, stride, padding)")  # Flax's nn.Conv


def pair(value: int | Sequence[int], what: str, name: str, *, minimum: int = 1
         ) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(3, 2)`` stays; anything else, or a value below ``minimum``,
    raises a ValueError naming the layer."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        out = tuple(value)
        ok = len(out) == 2 and all(isinstance(v, (int, np.integer))
                                   and not isinstance(v, bool) and v >= minimum for v in out)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name}: {what} must be an int >= {minimum} or a pair of them; "
                         f"got {value!r}")
    return int(out[0]), int(out[1])


def conv_padding(padding: Padding, size: tuple[int, int], window: tuple[int, int],
                 stride: tuple[int, int], name: str) -> tuple[tuple[int, int], ...]:
    """Explicit ``((top, bottom), (left, right))`` zero padding for ``padding``.

    ``"VALID"``: none (outputs only where the window fits). ``"SAME"``: the output has
    ``ceil(size / stride)`` rows and columns, the padding split with the odd row at the
    bottom (XLA, TensorFlow, Flax). An int pads every side by it; explicit pairs as given.
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return (0, 0), (0, 0)
        if mode == "SAME":
            pads = []
            for n, k, s in zip(size, window, stride):
                total = max((-(-n // s) - 1) * s + k - n, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(f"{name}: padding must be 'VALID', 'SAME', an int or "
                         f"((top, bottom), (left, right)); got {padding!r}")
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        padding = ((padding, padding), (padding, padding))
    try:
        pads = tuple((int(a), int(b)) for a, b in padding)
        ok = len(pads) == 2 and all(v >= 0 for p in pads for v in p)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name}: padding must be 'VALID', 'SAME', an int >= 0 or "
                         f"((top, bottom), (left, right)) of ints >= 0; got {padding!r}")
    return pads


def check_image(name: str, in_shape: tuple[int, ...]) -> None:
    """Checks one example's shape is ``(H, W, C)``; names the usual slips and their fix."""
    if len(in_shape) == 2:
        raise ValueError(
            f"{name}: expected images of shape (height, width, channels) per example; got "
            f"{in_shape}, which has no channel axis. Add one: x[..., None] and input_shape "
            f"{in_shape + (1,)}.")
    if len(in_shape) != 3:
        raise ValueError(f"{name}: expected images of shape (height, width, channels) per "
                         f"example (batch-first NHWC data); got {in_shape}")
    if in_shape[0] in (1, 3, 4) and in_shape[2] > 4 and in_shape[1] > 4:
        raise ValueError(
            f"{name}: input shape {in_shape} looks channels-first (C, H, W). funcnn is "
            "channels-last: convert the data with x.transpose(0, 2, 3, 1) and pass "
            f"input_shape {(in_shape[1], in_shape[2], in_shape[0])}.")


def check_image_batch(name: str, x: Array, channels: int | None = None) -> None:
    """Checks ``x`` is a batch of channels-last images ``(N, H, W, C)``. Three axes are
    either one image without the batch axis or a grayscale batch without the channel
    axis (as the MNIST loaders give); with the layer's ``channels`` known, the message
    names the one that fits, else both."""
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) == 3:
        one_image = f"one image without the batch axis (x[None] gives {(1,) + shape})"
        no_channel = (f"a batch without a channel axis (x[..., None] gives "
                      f"{shape + (1,)})")
        if channels is not None and shape[-1] == channels:
            why = f"this looks like {one_image}: funcnn's layers take batches"
        elif channels == 1:
            why = f"this looks like {no_channel}"
        else:
            why = f"either {one_image} or {no_channel}"
        raise ValueError(f"{name}: expected a batch of images (N, H, W, C); got shape "
                         f"{shape}: {why}.")
    if len(shape) != 4:
        raise ValueError(f"{name}: expected a batch of images (N, H, W, C); got shape {shape}")


def _check_batch(name: str, x: Array, channels: int) -> None:
    check_image_batch(name, x, channels)
    if x.shape[-1] != channels:
        hint = (" The data looks channels-first (N, C, H, W); funcnn is channels-last: "
                "x.transpose(0, 2, 3, 1)." if x.shape[1] == channels else "")
        raise ValueError(f"{name}: expected {channels} channels on the last axis; got "
                         f"shape {tuple(x.shape)}.{hint}")


def _promote(*arrays: Array) -> list[Array]:
    """The arrays in their common dtype (JAX's promotion rules)."""
    dtype = jnp.result_type(*arrays)
    return [a.astype(dtype) for a in arrays]


def sliding(name: str, what: str, window: tuple[int, int], strides: tuple[int, int],
            padding: Padding):
    """Checks ``padding`` now and returns ``geometry(h, w) -> (pads, (ho, wo))`` for a
    window sliding over ``h x w`` images, which raises when the window does not fit."""
    if isinstance(padding, str):
        conv_padding(padding, (1, 1), (1, 1), (1, 1), name)  # validates the mode now
    else:
        conv_padding(padding, (1, 1), window, strides, name)

    def geometry(h: int, w: int):
        pads = conv_padding(padding, (h, w), window, strides, name)
        outs = tuple(out_size(n, k, s, p) for n, k, s, p in zip((h, w), window, strides, pads))
        if min(outs) < 1:
            raise ValueError(f"{name}: {what} {window} is larger than the padded input "
                             f"({h + sum(pads[0])}, {w + sum(pads[1])}) for images of "
                             f"{h}x{w} and padding {padding!r}; use a smaller {what} or "
                             "padding='SAME'")
        return pads, outs
    return geometry


def out_size(size: int, window: int, stride: int, pads: tuple[int, int]) -> int:
    """Output length along one axis: ``floor((size + pads - window) / stride) + 1``."""
    return (size + pads[0] + pads[1] - window) // stride + 1


@other_keywords
def conv2d(features: int, kernel_size: int | Sequence[int], stride: int | Sequence[int] = 1,
           padding: Padding = "VALID", *, init: str | Callable = "glorot",
           bias_init: float | str | Callable = 0.0) -> Layer:
    """A 2-D convolution over channels-last images: ``(N, H, W, C) -> (N, H', W', features)``.

    Args:
      features: output channels (filters).
      kernel_size: ``k`` or ``(kh, kw)``.
      stride: ``s`` or ``(sh, sw)``.
      padding: ``"VALID"`` (default; no padding, as Nielsen), ``"SAME"`` (output
        ``ceil(H / s)``), an int, or ``((top, bottom), (left, right))``.
      init: kernel initializer, one of :data:`funcnn.nn.initializers` (fans count the
        kernel's taps: ``fan_in = kh * kw * C_in``) or ``(key, shape, dtype) -> w``.
      bias_init: a constant (default 0), ``"normal"`` (N(0, 1), as Nielsen),
        ``"uniform_fan_in"`` (``U(+-1/sqrt(kh * kw * C_in))``, PyTorch's and Equinox's
        bias), or a function ``(key, (features,), dtype) -> b``.

    The module docstring derives the backward rule.
    """
    name = "conv2d"
    if not isinstance(features, (int, np.integer)) or isinstance(features, bool) \
            or features <= 0:
        raise ValueError(f"conv2d: features must be a positive int; got {features!r}")
    features = int(features)
    window = pair(kernel_size, "kernel_size", name)
    strides = pair(stride, "stride", name)
    geometry = sliding(name, "kernel", window, strides, padding)
    w_init = resolve_init(init, name)
    check_bias_init(bias_init, name)

    def init_fn(key, in_shape, dtype):
        check_image(name, in_shape)
        h, w, c = in_shape
        _, (ho, wo) = geometry(h, w)
        kw_, kb = jax.random.split(key)
        kernel = jnp.asarray(w_init(kw_, window + (c, features), dtype), dtype)
        fan_in = window[0] * window[1] * c
        return (ho, wo, features), Conv(kernel, make_bias(bias_init, kb, features, dtype,
                                                          fan_in))

    def apply_fn(params, x, key, train):
        _check_batch(name, x, params.w.shape[2])
        pads, _ = geometry(x.shape[1], x.shape[2])
        x, w = _promote(x, params.w)   # as x @ w would (lax.conv wants equal dtypes)
        y = lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)
        return y + params.b[None, None, None, :]

    # The rule (derived in the module docstring): db sums dy over batch and positions;
    # dW is a canonical NHWC/HWIO convolution (im2col for one input channel), dx a matmul
    # of dy with W followed by col2im.
    # dW and db sum over the batch, so with the batch split over devices their
    # all-reduce is the data-parallel gradient all-reduce (see the dense rule); dW
    # names its output sharding for Explicit meshes (funcnn.parallel).
    def backward_fn(params, tape, dy, key, train):
        x, _ = tape
        pads, _ = geometry(x.shape[1], x.shape[2])
        x, w, dy = _promote(x, params.w, dy)
        dw = conv_weight_grad(x, dy, params.w.shape[:2], strides, pads)
        dx = conv_input_grad(dy, w, x.shape[1:3], strides, pads)
        return Conv(w=dw, b=jnp.sum(dy, axis=(0, 1, 2))), dx

    return Layer(name, init_fn, apply_fn, backward_fn,
                 config={"features": features, "kernel_size": window, "stride": strides,
                         "padding": padding, "init": init, "bias_init": bias_init})


# Above this many entries (kh * kw * C * N * Ho * Wo, 64 MiB in float32) in the patch
# matrix of an im2col or in the matmul's output of a col2im, the convolution form is
# used instead, to bound memory.
IM2COL_MAX = 1 << 24


def conv_weight_grad(x: Array, dy: Array, window: tuple[int, int], strides: tuple[int, int],
                     pads: tuple[tuple[int, int], ...]) -> Array:
    """``dW[u, v, c, o] = sum_{n,i,j} xp[n, s*i+u, s*j+v, c] dy[n, i, j, o]``.

    A convolution in canonical NHWC/HWIO layout (:func:`_conv_weight_grad_by_conv`),
    except for a one-channel input (the first layer on grayscale images), where that
    convolution has a kernel as large as the image and a ``kh x kw`` output: there the
    input values each kernel tap ``(u, v)`` met form a row of a ``(kh*kw, N*Ho*Wo)``
    matrix (im2col) and ``dW`` is one matmul of it with ``dy``, unless that matrix
    would hold more than ``IM2COL_MAX`` entries. Measured on a 2-core CPU in Nielsen's
    ``dbl_conv`` (``benchmarks/bench_conv.py``; XLA's CPU backend runs this convolution
    with YNNPACK, but the im2col matmul of a many-channel input, ``patches^T dy``, which
    contracts its operands' leading axis, with Eigen), the convolution form for the
    second layer (20 channels in) made the whole training step about 1.2x faster than
    im2col at batch 10 and 1.08x at batch 128; for the first layer (one channel in)
    im2col was as fast at batch 10 and 1.25x faster at batch 128.
    """
    kh, kw = window
    n, ho, wo, o = dy.shape
    c = x.shape[-1]
    if c > 1 or kh * kw * n * ho * wo > IM2COL_MAX:
        return _conv_weight_grad_by_conv(x, dy, window, strides, pads)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0))) if any(map(any, pads)) else x
    cols = jnp.stack([lax.slice(xp, (0, u, v, 0), (n, u + (ho - 1) * strides[0] + 1,
                                                   v + (wo - 1) * strides[1] + 1, 1),
                                (1, *strides, 1)).reshape(-1)
                      for u in range(kh) for v in range(kw)])
    # The contraction over N*Ho*Wo sums over the (possibly sharded) batch: all-reduced.
    return parallel.batch_matmul(cols, dy.reshape(n * ho * wo, o)).reshape(kh, kw, 1, o)


def _conv_weight_grad_by_conv(x, dy, window, strides, pads):
    """:func:`conv_weight_grad` as a convolution, in canonical NHWC/HWIO layout: the
    channels-as-batch input ``(C, H, W, N)`` with ``dy`` as an ``(Ho, Wo, N, O)``
    kernel, taps ``s`` apart."""
    kh, kw = window
    ho, wo = dy.shape[1], dy.shape[2]
    # Pad as the forward pass did, but end at the last row and column a window reads
    # (a negative pad drops the rows a stride skips).
    hp = (pads[0][0], (ho - 1) * strides[0] + kh - x.shape[1] - pads[0][0])
    wp = (pads[1][0], (wo - 1) * strides[1] + kw - x.shape[2] - pads[1][0])
    xt = x.transpose(3, 1, 2, 0)                      # (C, H, W, N): channels as batch
    kernel = dy.transpose(1, 2, 0, 3)                 # (Ho, Wo, N, O): batch as input channels
    # The batch is the contracted feature axis here: on a mesh, summed over devices.
    g = parallel.conv_general_dilated(xt, kernel, (1, 1), (hp, wp),
                                      rhs_dilation=strides, dimension_numbers=_NHWC)
    return g.transpose(1, 2, 0, 3)                    # (kh, kw, C, O)


def conv_input_grad(dy: Array, w: Array, size: tuple[int, int], strides: tuple[int, int],
                    pads: tuple[tuple[int, int], ...]) -> Array:
    """``dx``, by col2im (see the module docstring): ``cols = dy W^T``, each tap's
    share spread ``s`` apart onto the input's rows and columns, summed, and cropped to
    the unpadded input.

    The spreads are summed along the columns within each kernel row, then the rows'
    sums along the rows. Measured on a 2-core CPU in ``dbl_conv``
    (``benchmarks/bench_conv.py``), that made the training step about 1.35x faster at
    batch 10 and 1.07x at batch 128 than the full convolution below (which XLA's CPU
    backend runs with Eigen: YNNPACK takes no convolution whose output is larger than
    its unpadded input), and than the same ``kh * kw`` spreads summed at once (1.2x
    and 1.4x). Above ``IM2COL_MAX`` entries in ``cols``: the full convolution of
    ``dy`` (spread out with ``s - 1`` zeros between its entries, padded by ``k - 1``)
    with the kernel flipped and its channels swapped, which needs no ``cols``.
    """
    kh, kw, c, _ = w.shape
    n, ho, wo, _ = dy.shape
    if kh * kw * c * n * ho * wo > IM2COL_MAX:
        return _conv_input_grad_by_conv(dy, w, size, strides, pads)
    # (N, Ho, Wo, kh, kw, C); the kernel's O first, as the matmul wants it.
    cols = lax.dot_general(dy, w.transpose(3, 0, 1, 2), (((3,), (0,)), ((), ())))
    zero = jnp.zeros((), cols.dtype)

    def spread(g, axis, tap):
        """``g``'s entry ``i`` along ``axis`` (1: rows, 2: columns) at ``s*i + tap``
        of the padded input, cut to the unpadded one (negative pads crop)."""
        config = [(0, 0, 0)] * 4
        s, lo, m = strides[axis - 1], pads[axis - 1][0], g.shape[axis]
        config[axis] = (tap - lo, size[axis - 1] + lo - tap - (m - 1) * s - 1, s - 1)
        return lax.pad(g, zero, config)

    return sum(spread(sum(spread(cols[:, :, :, u, v], 2, v) for v in range(kw)), 1, u)
               for u in range(kh))


def _conv_input_grad_by_conv(dy, w, size, strides, pads):
    """:func:`conv_input_grad` as the full convolution, in canonical NHWC/HWIO layout."""
    kh, kw = w.shape[:2]
    flipped = jnp.flip(w, axis=(0, 1)).transpose(0, 1, 3, 2)   # (kh, kw, O, C)
    spans = [(dy.shape[1] - 1) * strides[0] + 1, (dy.shape[2] - 1) * strides[1] + 1]
    # Full padding (k - 1 each side) less the forward's; negative pads crop.
    edges = [(k - 1 - lo, n - span + lo) for k, n, span, (lo, _) in
             zip((kh, kw), size, spans, pads)]
    return lax.conv_general_dilated(dy, flipped, (1, 1), edges, lhs_dilation=strides,
                                    dimension_numbers=_NHWC)
