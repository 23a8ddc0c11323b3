"""Hand-written optimizers, learning-rate schedules, gradient clipping and chain.

An optimizer is a pair of pure functions, shaped like optax's:

    opt = optim.adam(learning_rate=1e-3)
    state = opt.init(params)                          # buffers + hyperparameters
    updates, state = opt.update(grads, state, params)
    params = optim.apply_updates(params, updates)     # w <- w + u, dtype kept

Everything works on any pytree of float arrays (frozen dataclasses, tuples, dicts).

**Hyperparameters live in the state as arrays** (``state.hparams``, one float
array per name, in the params' float dtype), not in the update function. So:

* ``optim.set_hyperparams(state, learning_rate=0.01)`` changes a value between
  two calls of a jitted step without retracing it;
* ``opt.update`` is a frozen dataclass that holds only the *structure* of the
  optimizer (its kind, convention, schedule kind), so ``adam(0.01).update ==
  adam(0.02).update`` and one compiled step serves both;
* ``jax.vmap`` over a batch of learning rates trains many models at once.

Counting: ``state.count`` is the number of updates already applied (NNFS's
``iterations``); the update in progress uses ``t = count`` for schedules and
``count + 1`` for Adam's bias correction.

Where the references disagree (funcnn default = optax; ``convention="nnfs"``
gives the NNFS book forms; ``u`` is the update added to the weights)::

    rule        optax (default)                     NNFS book (convention="nnfs")
    ----------  ----------------------------------  ------------------------------------
    momentum    v = mu*v + g;      u = -lr*v        v = mu*v - lr*g;  u = v
    Nesterov    u = -lr*(g + mu*v_new)              u = mu*v_new - lr*g
    Adagrad     c0 = 0.1; c += g^2                  c0 = 0; c += g^2
                u = -lr*g/sqrt(c + eps) (0 if c=0)  u = -lr*g/(sqrt(c) + eps)
    RMSprop     smoothing named `decay` (here rho)  rho; c = rho*c + (1-rho)*g^2
                u = -lr*g/sqrt(c + eps), eps 1e-8   u = -lr*g/(sqrt(c) + eps), eps 1e-7
    Adam        u = -lr*m_hat/(sqrt(v_hat) + eps)   same formula, eps 1e-7
                eps 1e-8
    lr decay    schedules (functions of t)          lr_t = lr/(1 + decay*t)

The two momentum forms agree while lr is constant (v_nnfs = -lr*v_optax) and
differ once it changes. Nielsen (``network.py``) uses plain SGD on the batch-mean
gradient, and L2 regularisation as ``w <- (1 - eta*lambda/n)*w - eta*g``; here L2
belongs in the loss, and ``adamw`` gives decoupled decay ``u = -lr*(adam + wd*w)``
as optax and PyTorch do.

Name clash: optax's ``rmsprop(decay=...)`` is the smoothing constant; here it is
``rho`` (the NNFS name) and ``decay`` is always NNFS's learning-rate decay.

Layout: ``base`` (states, ``Optimizer``, validation, the ``_Update`` base),
``schedules``, ``optimizers`` (SGD, Adagrad, RMSprop, Adam, AdamW),
``transforms`` (clipping, ``chain``, ``apply_updates``) and ``hparams``
(``hyperparams``, ``set_hyperparams``, ``learning_rate``); each imports only
those before it.
"""

from funcnn.optim.base import CONVENTIONS, ChainState, Hparams, Optimizer, OptState
from funcnn.optim.hparams import hyperparams, learning_rate, set_hyperparams
from funcnn.optim.optimizers import LearningRate, adagrad, adam, adamw, rmsprop, sgd
from funcnn.optim.schedules import (Schedule, constant, cosine_decay, exponential_decay,
                                    inverse_time_decay, linear_warmup, piecewise_constant,
                                    warmup_cosine_decay)
from funcnn.optim.transforms import apply_updates, chain, clip_by_global_norm, global_norm

# Private, but reached as optim._Update / optim._Chain (the update-function types).
from funcnn.optim.base import _Update  # noqa: F401, E402
from funcnn.optim.transforms import _Chain  # noqa: F401, E402

__all__ = [
    # states and types
    "Optimizer", "OptState", "ChainState", "Schedule", "LearningRate", "Hparams", "CONVENTIONS",
    # optimizers
    "sgd", "adagrad", "rmsprop", "adam", "adamw",
    # schedules
    "constant", "inverse_time_decay", "exponential_decay", "cosine_decay", "linear_warmup",
    "warmup_cosine_decay", "piecewise_constant",
    # clipping, chain
    "global_norm", "clip_by_global_norm", "chain", "apply_updates",
    # hyperparameters
    "hyperparams", "set_hyperparams", "learning_rate",
]
