"""The books' set-ups, reproduced exactly: data, weights, optimizers and networks.

NNFS (chapters 10 and 19), Nielsen's costs and L2 term (``network.py`` and
``network2.py``, chapters 1-3) and his ``network3.py`` (chapter 6, the convolutional
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

from funcnn import losses, metrics, nn, optim, train
from funcnn.data import spiral_data

__all__ = ["spiral_setup", "CHAPTER10_OPTIMIZERS", "CHAPTER10_REFERENCE", "NETWORK3",
           "NETWORK3_REFERENCE", "network3", "network3_penalty", "nielsen_quadratic",
           "nielsen_cross_entropy", "nielsen_l2"]


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
# Nielsen, chapters 1-3: the costs of network.py and network2.py, and his L2 term
# --------------------------------------------------------------------------------------
#
# Nielsen writes a cost per training example x, C_x, summed over the K outputs, and
# trains on the mini-batch mean C = (1/m) sum_x C_x with the step w <- w - eta dC/dw
# (his eta/len(mini_batch) times a summed gradient). funcnn's mse and binary
# cross-entropies average over all m*K elements instead (a factor K apart); the two
# costs below are his, so his eta and lambda apply as he writes them. They equal
# 0.5 * losses.mse.with_reduction("sum") and
# losses.binary_cross_entropy.with_reduction("sum").
#
# His targets y are one-hot rows (vectorized_result), so the natural metric is the
# argmax accuracy his evaluate() counts.

def _nielsen_quadratic_value(a, y):
    y = metrics.check_same("nielsen_quadratic", a, y)
    per_example = 0.5 * jnp.sum(((a - y) ** 2).reshape(a.shape[0], -1), axis=1)
    return losses.batch_mean(per_example)


# C = (1/m) sum_x 0.5 ||a_x - y_x||^2, so dC/da_x = (a_x - y_x) / m. (Nielsen's
# QuadraticCost.delta multiplies by sigmoid'(z): the next step back, which funcnn's
# sigmoid layer takes.)
def _nielsen_quadratic_grad(a, y):
    return (a - jnp.asarray(y).astype(a.dtype)) / a.shape[0]


nielsen_quadratic = losses.Loss("nielsen_quadratic", _nielsen_quadratic_value,
                                _nielsen_quadratic_grad, metrics.accuracy)
"""Nielsen's quadratic cost (``network.py``, chapter 1), mean over the mini-batch:
``C = (1/m) sum_x 0.5 * ||y_x - a_x||^2`` on the output activations ``a`` (end the model
with ``nn.sigmoid()``) and one-hot targets ``y``. Gradient ``(a - y) / m``."""


def _clip_probs(a):
    # a clipped to [CLIP, 1 - CLIP], slope 1 on the closed interval and 0 outside (the
    # convention of losses.binary_cross_entropy, which jax.grad of this where follows).
    lo, hi = losses.CLIP, 1 - losses.CLIP
    return jnp.where(a < lo, lo, jnp.where(a > hi, hi, a)).astype(a.dtype)


def _nielsen_ce_value(a, y):
    name = "nielsen_cross_entropy"
    y = metrics.check_same(name, a, y)
    metrics.check_unit_interval(name, "target", y, "Nielsen's targets are one-hot rows")
    metrics.check_unit_interval(name, "pred", a, f"{name} takes the sigmoid outputs a; for "
                                "logits use losses.binary_cross_entropy_with_logits"
                                ".with_reduction('sum')")
    ac = _clip_probs(a)
    per_element = -(y * jnp.log(ac) + (1 - y) * jnp.log(1 - ac))
    return losses.batch_mean(jnp.sum(per_element.reshape(a.shape[0], -1), axis=1))


# C = -(1/m) sum_x sum_j [y ln a + (1-y) ln(1-a)], so
#   dC/da = -(y/a - (1-y)/(1-a)) / m, 0 where a is clipped.
# Through the sigmoid (da/dz = a(1-a)) this becomes (a - y) / m: Nielsen's
# CrossEntropyCost.delta, the reason he chose this cost (no sigmoid'(z) slowdown).
def _nielsen_ce_grad(a, y):
    y = jnp.asarray(y).astype(a.dtype)
    ac = _clip_probs(a)
    inside = (a >= losses.CLIP) & (a <= 1 - losses.CLIP)
    return jnp.where(inside, -(y / ac - (1 - y) / (1 - ac)), 0) / a.shape[0]


nielsen_cross_entropy = losses.Loss("nielsen_cross_entropy", _nielsen_ce_value,
                                    _nielsen_ce_grad, metrics.accuracy)
"""Nielsen's cross-entropy cost (``network2.py``, chapter 3), mean over the mini-batch:
``C = -(1/m) sum_x sum_j [y_j ln a_j + (1 - y_j) ln(1 - a_j)]`` on the sigmoid outputs
``a``, clipped to ``[1e-7, 1 - 1e-7]`` as ``losses.binary_cross_entropy`` (Nielsen's
``np.nan_to_num`` plays that part). On logits ``z`` the same cost is
``losses.binary_cross_entropy_with_logits.with_reduction("sum")``, computed stably, whose
gradient ``(sigmoid(z) - y) / m`` is his ``delta``."""


def nielsen_l2(params, lmbda: float, n: int) -> train.Penalty | None:
    """Nielsen's L2 term ``(lambda / (2n)) * sum w^2``, as a :class:`funcnn.train.Penalty`.

    ``n`` is the size of the whole training set (not the mini-batch), and only the
    weights of the dense and conv layers are decayed, not the biases, as in
    ``network2.py``: its gradient ``(lambda / n) w`` turns each step into his
    ``w <- (1 - eta * lambda / n) w - eta * dC/dw``. Added to every mini-batch's mean
    cost (:data:`nielsen_cross_entropy`, :data:`nielsen_quadratic`), his ``eta`` and
    ``lambda`` then apply unchanged. ``None`` when ``lmbda`` is 0.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"nielsen_l2: n is the training-set size, a positive int; got {n!r}")
    if not np.isfinite(lmbda) or lmbda < 0:
        raise ValueError(f"nielsen_l2: lmbda must be finite and >= 0; got {lmbda!r}")
    if not lmbda:
        return None
    return train.dense_penalty(params, weight_l2=lmbda / (2 * int(n)))


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
