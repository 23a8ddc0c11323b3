"""SGD, Adagrad, RMSprop, Adam and AdamW: each a chain of transforms, as in optax.

Read any of them as its chain::

    sgd(lr, momentum)    = chain(trace(momentum), scale_by_learning_rate(lr))
    adagrad(lr)          = chain(scale_by_rss(0.1, 1e-7), scale_by_learning_rate(lr))
    rmsprop(lr, decay)   = chain(scale_by_rms(decay, eps), scale_by_learning_rate(lr))
    adam(lr)             = chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(lr))
    adamw(lr, wd)        = chain(scale_by_adam(...), add_decayed_weights(wd),
                                 scale_by_learning_rate(lr))

Keyword names, their order and their defaults are optax's, so code ported from optax
means the same here. A keyword optax does not have, or that another library spells
differently (``beta_1``, ``epsilon``, ``rho``, NNFS's learning-rate ``decay``), raises
a TypeError naming the spelling to use.
"""

from __future__ import annotations

from typing import Any, Callable, Union

from funcnn._checks import keyword_hints

from funcnn.optim.base import Array, Optimizer
from funcnn.optim.combine import chain
from funcnn.optim.schedules import Schedule
from funcnn.optim.transforms import (add_decayed_weights, scale_by_adam, scale_by_learning_rate,
                                     scale_by_rms, scale_by_rss, scale_by_stddev,
                                     trace)

LearningRate = Union[float, Array, Schedule, Callable[[Array], Array]]

_NNFS_DECAY = ("for the NNFS book's learning-rate decay lr/(1 + decay*t), pass "
               "learning_rate=optim.inverse_time_decay(lr, decay), or use the book's own "
               "optimizers, optim.nnfs.{name}(learning_rate, decay=...)")
# Spellings from other libraries and from funcnn before it followed optax.
_OTHER_SPELLINGS = {k: f"use {v}" for k, v in {
    "beta_1": "b1", "beta_2": "b2", "beta1": "b1", "beta2": "b2", "betas": "b1 and b2",
    "epsilon": "eps", "lr": "learning_rate", "rho": "decay (RMSprop's smoothing)",
    "initial_accumulator": "initial_accumulator_value", "weight_decay_rate": "weight_decay",
    "convention": "no convention: the optax forms are optim.sgd/adam/...; the NNFS book's "
                  "are optim.nnfs.sgd/adagrad/rmsprop/adam",
}.items()}


# An unknown keyword becomes a TypeError that names the keyword to use.
_optax_keywords = keyword_hints(
    "optim.", _OTHER_SPELLINGS,
    lambda name, k: _NNFS_DECAY.format(name=name) if k == "decay" else None)


@_optax_keywords
def sgd(learning_rate: LearningRate, momentum: float | None = None, nesterov: bool = False,
        accumulator_dtype: Any = None) -> Optimizer:
    """Stochastic gradient descent, with optional (Nesterov) momentum.

    ``u = -lr * g``; with momentum, ``v = g + momentum * v`` and ``u = -lr * v``.
    The NNFS book puts the learning rate inside the velocity instead (the same while lr
    is constant): ``optim.nnfs.sgd``.
    """
    if momentum is None:
        return chain(scale_by_learning_rate(learning_rate))
    return chain(trace(momentum, nesterov, accumulator_dtype),
                 scale_by_learning_rate(learning_rate))


@_optax_keywords
def adagrad(learning_rate: LearningRate, initial_accumulator_value: float = 0.1,
            eps: float = 1e-7) -> Optimizer:
    """Adagrad: divide by the root of the sum of all squared gradients so far."""
    return chain(scale_by_rss(initial_accumulator_value, eps),
                 scale_by_learning_rate(learning_rate))


@_optax_keywords
def rmsprop(learning_rate: LearningRate, decay: float = 0.9, eps: float = 1e-8,
            initial_scale: float = 0.0, eps_in_sqrt: bool = True, centered: bool = False,
            momentum: float | None = None, nesterov: bool = False,
            bias_correction: bool = False) -> Optimizer:
    """RMSprop: divide by the root of a moving average of squared gradients.

    ``decay`` is that average's smoothing (NNFS's ``rho``), as in optax; ``centered``
    divides by the moving standard deviation instead; ``momentum`` adds a trace after
    the learning rate.
    """
    scaling = scale_by_stddev if centered else scale_by_rms
    links = [scaling(decay, eps, initial_scale, eps_in_sqrt, bias_correction),
             scale_by_learning_rate(learning_rate)]
    if momentum is not None:
        links.append(trace(momentum, nesterov))
    return chain(*links)


@_optax_keywords
def adam(learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         eps_root: float = 0.0, mu_dtype: Any = None, *, nesterov: bool = False) -> Optimizer:
    """Adam (Kingma & Ba 2015); ``nesterov=True`` is NAdam."""
    return chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
                 scale_by_learning_rate(learning_rate))


@_optax_keywords
def adamw(learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          eps_root: float = 0.0, mu_dtype: Any = None, weight_decay: float = 1e-4,
          mask: Any = None, *, nesterov: bool = False) -> Optimizer:
    """AdamW (Loshchilov & Hutter): Adam plus decoupled weight decay,
    ``u = -lr * (adam_step + weight_decay * w)``."""
    return chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
                 add_decayed_weights(weight_decay, mask),
                 scale_by_learning_rate(learning_rate))
