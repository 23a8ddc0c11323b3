"""Hyperparameter sweeps: many configurations of one model trained as one program.

Describe the configurations as a :class:`Space` (a grid, a list, random draws, or
products and sums of them), then train every one with the same model, data and number
of epochs::

    space = sweep.grid(learning_rate=np.geomspace(1e-3, 1e-1, 8),
                       decay=[0.0, 1e-4, 1e-3, 1e-2])
    res = sweep.run(model, losses.softmax_cross_entropy, optim.nnfs.adam(),
                    x, y, space, epochs=500)
    res.best("accuracy")            # {'index': 13, 'learning_rate': ..., 'accuracy': ...}
    res.to_csv("sweep.csv"); res.plot_heatmap("accuracy").savefig("heatmap.png")

**What can be swept.** Each name in the space is one of:

* an optimizer hyperparameter, as :func:`funcnn.optim.hyperparams` names it
  (``learning_rate``, ``decay``, ``momentum``, ``b1``, ``b2``, ``eps``,
  ``weight_decay``, ``"1/learning_rate"`` in a chain, ...). Values are put into each
  configuration's optimizer state with :func:`funcnn.optim.set_hyperparams`;
  hyperparameters not swept keep the optimizer's own values;
* ``seed``: the integer seed of ``jax.random.key(seed)``, which
  :func:`funcnn.train.init_state` splits into the initial weights' key and the run's
  key (dropout masks, shuffles). Not swept, it is ``run(seed=0)`` for every
  configuration;
* penalty strengths: ``l1`` and ``l2`` (one coefficient on every weight and bias,
  ``train.Penalty(l1, l2)``) or ``weight_l1``, ``weight_l2``, ``bias_l1``, ``bias_l2``
  (the NNFS per-layer form on dense and conv layers, :func:`funcnn.train.dense_penalty`); or the
  arguments of a penalty factory ``penalty=lambda l2: train.Penalty(l2=l2)``;
* the arguments of a model factory, such as a dropout rate (below).

**Model factories (dropout rate and other model settings).** A model is a
description (:class:`funcnn.nn.Layer`), and its dropout rate is part of it. To sweep
such a setting, pass a function instead of a layer; the sweep calls it by keyword with
this configuration's values, *inside* the compiled program, so the rate arrives as a
traced array (``nn.dropout`` accepts one) and every rate shares one compiled program::

    def make_model(dropout_rate):
        return nn.serial(nn.dense(64), nn.relu(), nn.dropout(dropout_rate), nn.dense(3))

    sweep.run(make_model, loss, opt, x, y, sweep.grid(dropout_rate=[0.0, 0.1, 0.3]), ...)

The factory's parameters name the values it takes; a parameter with a default need not
be swept. It must build the same architecture for every value (only numbers change).

**Same training as fit.** Each configuration runs :func:`funcnn.train.run_epochs` (the
nested ``lax.scan`` of whole epochs that ``fit`` jit-compiles) from
``train.init_state(model, optimizer, jax.random.key(seed), input_shape, dtype=dtype)``,
on the data as ``fit`` prepares it. So configuration ``i`` follows, to float rounding,
the trajectory of ``train.fit`` with the same seed, data, penalty and epochs; the tests
check this for every strategy in float64.

**Execution strategies** (``run(strategy=...)``):

* ``"vmap"``: ``jax.vmap`` over all configurations: one batched program.
* ``"chunked"``: ``lax.map(..., batch_size=chunk_size)``: ``chunk_size``
  configurations vmapped at a time, the chunks one after another inside one compiled
  program, so peak memory is that of one chunk. ``chunk_size=1`` is a loop over the
  configurations inside one program: compiled once, no per-configuration dispatch.
* ``"sharded"``: the configurations split over devices along a 1-D
  ``jax.sharding.Mesh`` (``jax.shard_map``), each device running its share chunked as
  above (``chunk_size=None``: its whole share vmapped at once).
* ``"loop"``: a Python loop calling one compiled single-configuration program (the
  reference; the least memory).

``strategy="auto"`` (the default) picks, from measurements on a 2-core CPU
(``benchmarks/bench_sweep.py``; speedups over a Python loop calling a jitted
``lax.scan`` once per configuration; A: 64 configs x 500 full-batch Adam steps of the
2-64-3 spiral model; B: 16 configs x 1 epoch, batch 128, of a 784-128-10 model):

* CPU, several devices: ``"sharded"`` with ``chunk_size=1``: each device (core) loops
  over its share inside one program. A: 1.8-1.9x, B: 1.5-1.6x. The same with a vmap per
  device: A 1.05-1.25x, B 1.45-1.55x.
* CPU, one device: ``"chunked"`` with ``chunk_size=1``: the loop moved inside one
  compiled program, as fast as the Python loop (A 0.98-1.0x, B 0.93-1.0x, within the
  noise) and never far slower, whereas a vmap over configurations ran at 0.57-0.95x on
  A (XLA's CPU backend executes the small batched matmuls of A poorly) though 1.15-1.3x
  on B. A CPU is one device unless JAX is told otherwise *before it starts*: call
  :func:`use_cpu_devices` right after ``import jax`` (or set
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N``) to turn each core into a
  device, and the sweep uses them all.
* GPU / TPU: ``"vmap"`` (one device) or ``"sharded"`` with a vmap per device (several):
  a batch of small networks fills the accelerator, where a loop leaves it idle (A ran
  6.5x faster than the loop on an H100, as measured by the issue's author; not
  re-measured here). Pass ``chunk_size`` to bound memory when the whole sweep does not
  fit, and ``keep_params=False`` when the final weights of every configuration do not.

Compilation is cached: a second sweep with the same model, loss and optimizer objects,
data shapes and strategy, differing only in the values, reuses the compiled program.

Modules: ``space`` (describing configurations), ``strategies`` (choosing how to run),
``execute`` (the compiled program and each strategy), ``checks`` and ``runner``
(:func:`run`), ``results`` (:class:`SweepResults`, rankings, exports) and ``plots``
(matplotlib, imported only when a plot is made).
"""

from .execute import PENALTY_NAMES, SEED
from .results import SweepResults
from .runner import run
from .space import Space, choice, configs, grid, log_uniform, randint, random, uniform, zipped
from .strategies import STRATEGIES, default_strategy, use_cpu_devices

__all__ = ["Space", "grid", "configs", "zipped", "random", "uniform", "log_uniform",
           "choice", "randint", "run", "SweepResults", "default_strategy",
           "use_cpu_devices", "STRATEGIES", "SEED", "PENALTY_NAMES"]
