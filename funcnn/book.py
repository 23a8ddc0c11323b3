"""The NNFS book's set-ups, reproduced exactly: data, weights and optimizers.

The book (Kinsley & Kukiela, *Neural Networks from Scratch in Python*) calls
``nnfs.init()``, draws ``spiral_data(samples=100, classes=3)`` and then its weights
``0.01 * np.random.randn(n_in, n_out)`` from the same global numpy stream, in layer
order, with zero biases. :func:`spiral_setup` does the same with an explicit
``np.random.RandomState(seed)``, so results match the book's numpy code.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from funcnn import nn, optim
from funcnn.data import spiral_data

__all__ = ["spiral_setup", "CHAPTER10_OPTIMIZERS", "CHAPTER10_REFERENCE"]


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
    "sgd": lambda: optim.sgd(1.0, convention="nnfs"),
    "sgd_momentum": lambda: optim.sgd(1.0, decay=1e-3, momentum=0.9, convention="nnfs"),
    "adagrad": lambda: optim.adagrad(1.0, decay=1e-4, convention="nnfs"),
    "rmsprop": lambda: optim.rmsprop(0.02, decay=1e-5, rho=0.999, convention="nnfs"),
    "adam": lambda: optim.adam(0.05, decay=5e-7, convention="nnfs"),
}

# The book's code run in numpy (10001 full-batch epochs): final accuracy, loss.
CHAPTER10_REFERENCE: dict[str, tuple[float, float | None]] = {
    "sgd": (0.647, None), "sgd_momentum": (0.957, None), "adagrad": (0.840, None),
    "rmsprop": (0.900, None), "adam": (0.967, 0.074),
}
