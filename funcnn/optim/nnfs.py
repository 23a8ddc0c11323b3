"""The NNFS book's optimizers (chapter 10), with the book's names, defaults and forms.

Each is a chain of the same transforms optax's optimizers use; what makes it the
book's is the order of the links and where ``eps`` sits::

    nnfs.sgd(lr, decay, momentum)   = chain(scale_by_learning_rate(inverse_time_decay(lr, decay)),
                                            trace(momentum))
        -> v = momentum*v - lr_t*g;  u = v      (optax: v = g + mu*v; u = -lr*v)
    nnfs.adagrad(lr, decay, epsilon) = chain(scale_by_rss(0.0, epsilon, eps_in_sqrt=False), lr_t)
        -> c += g^2;  u = -lr_t*g / (sqrt(c) + epsilon)
    nnfs.rmsprop(lr, decay, epsilon, rho)
                                     = chain(scale_by_rms(rho, epsilon, eps_in_sqrt=False), lr_t)
    nnfs.adam(lr, decay, epsilon, beta_1, beta_2)
                                     = chain(scale_by_adam(beta_1, beta_2, epsilon), lr_t)

with ``lr_t = learning_rate / (1 + decay * t)``, the book's learning-rate decay
(:func:`~funcnn.optim.inverse_time_decay`). Putting the learning rate *before* the
momentum trace is the whole difference between the book's momentum and optax's: the
two agree while the learning rate is constant and part once it decays.

The hyperparameters in the state keep the transforms' names (``learning_rate``,
``decay``, ``momentum``, ``b1``, ``eps``, ...). In ``rmsprop`` both the smoothing and the
learning-rate decay are called ``decay``; ask for them as ``"0/decay"`` (rho) and
``"1/decay"`` (the learning-rate decay).
"""

from __future__ import annotations

from funcnn.optim.base import Optimizer
from funcnn.optim.combine import chain
from funcnn.optim.schedules import inverse_time_decay
from funcnn.optim.transforms import (scale_by_adam, scale_by_learning_rate, scale_by_rms,
                                     scale_by_rss, trace)


def _lr(learning_rate: float, decay: float) -> Optimizer:
    return scale_by_learning_rate(inverse_time_decay(learning_rate, decay))


def sgd(learning_rate: float = 1.0, decay: float = 0.0, momentum: float = 0.0) -> Optimizer:
    """The book's ``Optimizer_SGD``: decayed learning rate, momentum on ``-lr_t * g``."""
    return chain(_lr(learning_rate, decay), trace(momentum))


def adagrad(learning_rate: float = 1.0, decay: float = 0.0, epsilon: float = 1e-7) -> Optimizer:
    """The book's ``Optimizer_Adagrad``: cache starts at 0, ``epsilon`` outside the root."""
    return chain(scale_by_rss(0.0, epsilon, eps_in_sqrt=False), _lr(learning_rate, decay))


def rmsprop(learning_rate: float = 0.001, decay: float = 0.0, epsilon: float = 1e-7,
            rho: float = 0.9) -> Optimizer:
    """The book's ``Optimizer_RMSprop``: ``rho`` smooths, ``epsilon`` outside the root."""
    return chain(scale_by_rms(rho, epsilon, eps_in_sqrt=False), _lr(learning_rate, decay))


def adam(learning_rate: float = 0.001, decay: float = 0.0, epsilon: float = 1e-7,
         beta_1: float = 0.9, beta_2: float = 0.999) -> Optimizer:
    """The book's ``Optimizer_Adam``: optax's Adam with ``epsilon`` 1e-7 and the decay."""
    return chain(scale_by_adam(beta_1, beta_2, epsilon), _lr(learning_rate, decay))
