"""The books' set-ups, reproduced exactly: data, weights, optimizers and networks.

NNFS (chapters 10 and 19) and Nielsen's ``network3.py`` (chapter 6, the convolutional
networks). For NNFS:

The book (Kinsley & Kukiela, *Neural Networks from Scratch in Python*) calls
``nnfs.init()``, draws ``spiral_data(samples=100, classes=3)`` and then its weights
``0.01 * np.random.randn(n_in, n_out)`` from the same global numpy stream, in layer
order, with zero biases. :func:`spiral_setup` does the same with an explicit
``np.random.RandomState(seed)``, so results match the book's numpy code.
"""

from __future__ import annotations

from collections.abc import Callable

import math

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import nn, optim, train
from funcnn.data import spiral_data

__all__ = ["spiral_setup", "CHAPTER10_OPTIMIZERS", "CHAPTER10_REFERENCE", "NETWORK3",
           "NETWORK3_REFERENCE", "network3", "network3_penalty"]


def spiral_setup(hidden: int = 64, *, samples: int = 100, classes: int = 3,
                 seed: int = 0) -> tuple[nn.Layer, tuple, np.ndarray, np.ndarray]:
    """The chapter-10 network Dense(2, hidden)-ReLU-Dense(hidden, classes) on spiral data.

    Returns ``(model, params, X, y)`` with the weights drawn exactly as the book draws
    them after ``nnfs.init()`` (float32).
    """
    rng = np.random.RandomState(seed)
    x, y = spiral_data(samples, classes, rng=rng)
    w1 = 0.01 * rng.randn(2, hidden).astype(np.float32)
    w2 = 0.01 * rng.randn(hidden, classes).astype(np.float32)
    model = nn.serial(nn.dense(hidden, init="nnfs"), nn.relu(), nn.dense(classes, init="nnfs"))
    params = (nn.Dense(jnp.asarray(w1), jnp.zeros(hidden, jnp.float32)), nn.NoParams(),
              nn.Dense(jnp.asarray(w2), jnp.zeros(classes, jnp.float32)))
    return model, params, x, y


# The chapter-10 comparison, with the book's hyperparameters and conventions.
CHAPTER10_OPTIMIZERS: dict[str, Callable[[], optim.Optimizer]] = {
    "sgd": lambda: optim.nnfs.sgd(1.0),
    "sgd_momentum": lambda: optim.nnfs.sgd(1.0, decay=1e-3, momentum=0.9),
    "adagrad": lambda: optim.nnfs.adagrad(1.0, decay=1e-4),
    "rmsprop": lambda: optim.nnfs.rmsprop(0.02, decay=1e-5, rho=0.999),
    "adam": lambda: optim.nnfs.adam(0.05, decay=5e-7),
}

# The book's code run in numpy (10001 full-batch epochs): final accuracy, loss.
CHAPTER10_REFERENCE: dict[str, tuple[float, float | None]] = {
    "sgd": (0.647, None), "sgd_momentum": (0.957, None), "adagrad": (0.840, None),
    "rmsprop": (0.900, None), "adam": (0.967, 0.074),
}


# --------------------------------------------------------------------------------------
# Nielsen, chapter 6: network3.py's convolutional networks on MNIST
# --------------------------------------------------------------------------------------
#
# network3 builds a net from three layer types, all on 28x28 images (channels-last here):
#   ConvPoolLayer: a VALID convolution without bias, 2x2 max-pooling
#     (ignore_border=True), then activation(pooled + b). Adding b before or after the
#     max gives the same value (a max commutes with adding a per-channel constant), so
#     here it is conv2d (with its bias) -> max_pool(2, 2) -> activation, the order
#     network3 computes in (the activation runs on the pooled, 4x smaller map).
#     Weights N(0, 1/n_out), n_out = filters * kh * kw / pool area; biases N(0, 1).
#   FullyConnectedLayer: activation(x W + b), W ~ N(0, 1/n_out) with n_out its own
#     number of outputs, b ~ N(0, 1).
#   SoftmaxLayer: softmax(x W + b), W and b zero.
# The cost is the mean negative log-likelihood of the softmax over the mini-batch
# (losses.softmax_cross_entropy), plus 0.5 * lmbda * sum(W^2) / num_training_batches
# over every layer's W (network3_penalty); plain SGD with step eta. network3 reports
# the test accuracy at the epoch of best validation accuracy.


def _normal_fan_out(fan_out: float):
    """``N(0, 1/fan_out)`` weights, as network3 draws them."""
    def init(key, shape, dtype):
        return jax.random.normal(key, shape, dtype) * math.sqrt(1.0 / fan_out)
    return init


def _conv_pool(filters: int, act, kernel: int = 5, pool: int = 2) -> list[nn.Layer]:
    n_out = filters * kernel * kernel / (pool * pool)
    return [nn.conv2d(filters, kernel, init=_normal_fan_out(n_out), bias_init="normal"),
            nn.max_pool(pool, pool), act()]


def _fully_connected(n: int, act) -> list[nn.Layer]:
    return [nn.dense(n, init=_normal_fan_out(n), bias_init="normal"), act()]


def _softmax_layer(n: int = 10) -> nn.Layer:
    """network3's SoftmaxLayer without its softmax: the loss takes the logits."""
    return nn.dense(n, init=lambda key, shape, dtype: jnp.zeros(shape, dtype))


def _network3(conv: list[int], act) -> nn.Layer:
    layers = [layer for f in conv for layer in _conv_pool(f, act)]
    return nn.serial(*layers, nn.flatten(), *_fully_connected(100, act), _softmax_layer())


# name: (conv filters per ConvPoolLayer, activation, eta, lmbda); 60 epochs, batch 10.
NETWORK3: dict[str, tuple[tuple[int, ...], str, float, float]] = {
    "shallow": ((), "sigmoid", 0.1, 0.0),
    "basic_conv": ((20,), "sigmoid", 0.1, 0.0),
    "dbl_conv": ((20, 40), "sigmoid", 0.1, 0.0),
    "dbl_conv_relu": ((20, 40), "relu", 0.03, 0.1),
}

# The book's test accuracies (at the best validation epoch, best of its runs).
NETWORK3_REFERENCE: dict[str, float] = {
    "shallow": 0.9780, "basic_conv": 0.9878, "dbl_conv": 0.9906, "dbl_conv_relu": 0.9923,
}


def network3(name: str) -> tuple[nn.Layer, float, float]:
    """``(model, eta, lmbda)`` of one of the chapter-6 networks in :data:`NETWORK3`.

    The model takes ``(N, 28, 28, 1)`` images in [0, 1] and returns logits; train it
    with ``losses.softmax_cross_entropy``, ``optim.sgd(eta)`` on mini-batches of 10 and
    ``network3_penalty(params, lmbda, n // 10)``.
    """
    if name not in NETWORK3:
        raise ValueError(f"network3: unknown network {name!r}; choose one of {sorted(NETWORK3)}")
    conv, act, eta, lmbda = NETWORK3[name]
    return _network3(list(conv), {"sigmoid": nn.sigmoid, "relu": nn.relu}[act]), eta, lmbda


def network3_penalty(params, lmbda: float, num_batches: int) -> train.Penalty | None:
    """network3's L2 term ``0.5 * lmbda * sum(W^2) / num_training_batches``, added to
    every mini-batch's mean cost: ``l2 = lmbda / (2 * num_batches)`` on the weights of
    every conv and dense layer, none on biases. ``None`` when ``lmbda`` is 0."""
    if not lmbda:
        return None
    return train.dense_penalty(params, weight_l2=lmbda / (2 * num_batches))
