"""Training: an immutable train state, a pure train step, evaluate, and fit.

The loop, in the words of the NNFS book: forward pass, loss, backward pass, optimizer
step, repeated over minibatches and epochs. Here each piece is a pure function::

    state = train.init_state(model, opt, jax.random.key(0), (2,))
    state, history = train.fit(model, losses.softmax_cross_entropy, opt, state, x, y,
                               epochs=10, batch_size=128)

Speed: ``fit`` compiles whole epochs, an on-device shuffle plus every minibatch step,
into one ``lax.scan``, and for tiny epochs (full-batch spiral data) several epochs
into one call, so Python runs once per chunk of work rather than once per step.

Gradients come from the hand-derived :mod:`funcnn.backprop` (``engine="backprop"``,
the default), from hand rules with ``jax.vjp`` standing in for a layer or loss that
has none (``engine="mixed"``), or from ``jax.grad`` (``engine="jax"``); all follow the
same trajectory to float tolerance, which the tests check. Metrics (``metrics=``)
default to the loss's natural one.

Randomness: ``state.key`` is fixed for the run; the dropout key of step ``s`` is
``fold_in(fold_in(key, 0), s)`` and the shuffle of epoch ``e`` uses
``fold_in(fold_in(key, 1), e)``. So a run resumed from a checkpoint draws exactly
what the uninterrupted run would have drawn.

How long: ``fit(..., epochs=10)`` records a history row per epoch;
``fit(..., steps=300, eval_every=100)`` trains 300 updates and records a row (and
evaluates ``validation_data``) every 100, the last epoch partial if need be. Rows keep
their ``step``, ``epoch`` and wall ``time_s`` in ``history.clock``.
``drop_remainder=False`` trains on the smaller last batch of each epoch too.

Data parallelism: ``fit(..., mesh=jax.make_mesh((n,), ("data",)))`` splits every
minibatch over the mesh's ``"data"`` axis (``batch_axis=``) and replicates the
parameters and optimizer state; ``evaluate`` and ``train_step`` take ``mesh=`` too
(:mod:`funcnn.parallel`). The batch size must be a multiple of the axis's size.

Layout: ``state`` (TrainState, Penalty, init_state), ``inputs`` (DeviceData,
device_data, prepare_data), ``step`` (train_step, its gradient engines, evaluate),
``compiled`` (run_epochs, run_steps: the jitted programs), ``history`` (History)
and ``loop`` (fit, DivergedError); each imports only those before it.
"""

from funcnn.train.compiled import run_epochs, run_steps
from funcnn.train.history import History
from funcnn.train.inputs import DeviceData, device_data, prepare_data
from funcnn.train.loop import DivergedError, fit
from funcnn.train.state import Penalty, TrainState, dense_penalty, init_state
from funcnn.train.step import ENGINES, check_engine, evaluate, metric_set, train_step

# Private, but used by the tests and benchmarks: the jitted run_epochs and run_steps
# (their compile caches) and the jitted evaluation.
from funcnn.train.compiled import _run_epochs, _run_steps  # noqa: F401, E402
from funcnn.train.step import _evaluate  # noqa: F401, E402

__all__ = ["TrainState", "Penalty", "DivergedError", "History", "DeviceData", "init_state",
           "dense_penalty", "device_data", "prepare_data", "train_step", "evaluate", "fit",
           "run_epochs", "run_steps", "check_engine", "metric_set", "ENGINES"]
