"""Hand-written optimizers as optax builds them: small transforms composed by ``chain``.

An optimizer is a pair of pure functions, shaped like optax's::

    opt = optim.adam(learning_rate=1e-3)
    state = opt.init(params)                          # buffers + hyperparameters
    updates, state = opt.update(grads, state, params)
    params = optim.apply_updates(params, updates)     # w <- w + u, dtype kept

and ``adam`` is nothing but ``chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(lr))``:
every optimizer is a chain of the transforms in ``transforms`` (the table there gives each
one's formula), and a chain may hold chains, optax transforms and ``MultiSteps``. Names,
keyword order and defaults are optax's throughout, so ported code means the same here;
the tests compare every transform, optimizer and schedule with optax over 1000 steps.

**Hyperparameters live in the state as arrays** (each transform's ``state.hparams``, in
the params' float dtype), not in the update function. So:

* ``optim.set_hyperparams(state, learning_rate=0.01)`` changes a value between two
  calls of a jitted step without retracing it;
* ``opt.update`` holds only the optimizer's structure, so ``adam(0.01).update ==
  adam(0.02).update`` and one compiled step serves both;
* ``jax.vmap`` over a batch of learning rates trains many models at once (``sweep``).

Counting: each transform's ``state.count`` is the number of updates it has applied
(NNFS's ``iterations``); a schedule sees ``t = count``, Adam's bias correction ``count + 1``.

The books' forms (where ``u`` is the update added to the weights)::

    rule        optax / funcnn default                 NNFS book: optim.nnfs.*
    ----------  -------------------------------------  -----------------------------------
    momentum    v = mu*v + g;      u = -lr*v           v = mu*v - lr*g;  u = v
    Adagrad     c0 = 0.1; u = -lr*g/sqrt(c + eps)      c0 = 0; u = -lr*g/(sqrt(c) + eps)
    RMSprop     smoothing `decay`; eps 1e-8 in root    `rho`; eps 1e-7 outside the root
    Adam        eps 1e-8                               eps 1e-7
    lr decay    schedules (functions of t)             lr_t = lr/(1 + decay*t):
                                                       inverse_time_decay(lr, decay)

The two momentum forms agree while lr is constant and differ once it changes: the
book's form is ``chain(scale_by_learning_rate(lr), trace(mu))``, optax's is the same two
links the other way round. Nielsen (``network.py``) uses plain SGD on the batch-mean
gradient, and L2 regularisation as ``w <- (1 - eta*lambda/n)*w - eta*g``; here L2
belongs in the loss, and ``adamw`` gives decoupled decay ``u = -lr*(adam + wd*w)``.

Layout, each module importing only those before it: ``base`` (states, ``Optimizer``,
``Transform``, validation), ``schedules``, ``transforms``, ``combine`` (``chain``,
``apply_updates``), ``optimizers``, ``nnfs`` (the book's), ``hparams``
(``hyperparams``, ``set_hyperparams``, ``learning_rate``), ``wrappers``
(``inject_hyperparams``, ``MultiSteps``).
"""

from funcnn.optim import nnfs
from funcnn.optim.base import (ChainState, GradientTransformation, Hparams,
                               InjectHyperparamsState, MultiStepsState, Optimizer, OptState,
                               Transform, transform)
from funcnn.optim.combine import apply_updates, chain
from funcnn.optim.hparams import hyperparams, learning_rate, set_hyperparams
from funcnn.optim.optimizers import LearningRate, adagrad, adam, adamw, rmsprop, sgd
from funcnn.optim.schedules import (Schedule, constant_schedule, cosine_decay_schedule,
                                    exponential_decay, inverse_time_decay, join_schedules,
                                    linear_schedule, piecewise_constant_schedule,
                                    polynomial_schedule, warmup_cosine_decay_schedule)
from funcnn.optim.transforms import (add_decayed_weights, clip, clip_by_global_norm,
                                     global_norm, identity, scale, scale_by_adam,
                                     scale_by_learning_rate, scale_by_momentum, scale_by_rms,
                                     scale_by_rss, scale_by_schedule, scale_by_stddev,
                                     trace)
from funcnn.optim.wrappers import (MultiSteps, inject_hyperparams, skip_large_updates,
                                   skip_not_finite)

__all__ = [
    # types and states
    "Optimizer", "GradientTransformation", "OptState", "ChainState", "InjectHyperparamsState",
    "MultiStepsState", "Schedule", "LearningRate", "Hparams", "Transform", "transform",
    # optimizers (optax's forms) and the NNFS book's
    "sgd", "adagrad", "rmsprop", "adam", "adamw", "nnfs",
    # transforms
    "identity", "scale", "scale_by_learning_rate", "scale_by_schedule", "trace",
    "scale_by_momentum", "scale_by_rss", "scale_by_rms", "scale_by_stddev", "scale_by_adam",
    "add_decayed_weights", "clip", "clip_by_global_norm", "global_norm",
    # composition and wrappers
    "chain", "apply_updates", "inject_hyperparams", "MultiSteps", "skip_not_finite",
    "skip_large_updates",
    # schedules
    "constant_schedule", "polynomial_schedule", "linear_schedule", "exponential_decay",
    "cosine_decay_schedule", "warmup_cosine_decay_schedule", "piecewise_constant_schedule",
    "join_schedules", "inverse_time_decay",
    # hyperparameters
    "hyperparams", "set_hyperparams", "learning_rate",
]
