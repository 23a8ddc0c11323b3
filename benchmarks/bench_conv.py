"""Convolutional training step: funcnn's hand rules against ``jax.grad`` and the peers.

    python benchmarks/bench_conv.py [--batch 10,128] [--repeat 3] [--scale] [--skip-peers]
    python benchmarks/bench_conv.py --cpu-devices 2   # also fit over a 2-device CPU mesh

The net is Nielsen's ``dbl_conv`` (``funcnn.book.network3("dbl_conv")``: 28x28x1 ->
conv 5x5 20, max-pool 2, sigmoid -> conv 5x5 40, max-pool 2, sigmoid -> 100 sigmoid ->
10), SGD lr 0.1, softmax cross-entropy, float32, on MNIST-shaped random images. Per
batch size, one timed run is a fixed number of steps (200 at batch 10, 20 at 128, or
``--steps``), and the table gives milliseconds per step and ratios, all from one run:

* ``funcnn fit (backprop)``: ``train.fit`` on device data (one epoch = one compiled
  ``lax.scan``), hand rules (``funcnn.nn.conv``: the weight gradient a canonical
  NHWC/HWIO convolution, the input gradient a matmul and col2im);
* ``funcnn fit (jax)``: the same with ``engine="jax"`` (``jax.grad``; its transposed
  convolutions use swapped dimension numbers, slow on CPU inside a scan:
  jax-ml/jax#12868). Target: hand rules >= 10x faster at batch 10, 15x at 128;
* ``loop: jit(hand step)``: a Python loop calling a jitted ``train.train_step`` per
  batch (device-resident batches): scan against loop for the same rules;
* ``loop: jit(jax.grad step)``: the same with ``jax.grad``, outside a scan;
* ``Flax Linen`` and ``Equinox``: the same net written as their docs teach
  (``nn.Conv``/``nn.max_pool`` with ``optax.sgd`` and a jitted ``train_step``;
  ``eqx.nn.Conv2d``/``MaxPool2d`` per example under ``jax.vmap``, channels-first, with
  ``eqx.filter_jit``), called per batch from Python; skipped when not installed;
* ``reference: plain rules, scan`` and ``reference: jax.grad, scan``: the issue's own
  reference (``_conv_reference.py``): the same net with plain canonical-layout hand
  rules, written without funcnn, SGD in one ``lax.scan``, and ``jax.grad`` of the same
  code in the same scan. Their ratio is what the method gains over ``jax.grad`` on this
  machine (the issue's targets came from 10.7x and 18x on the machine it was written
  on); ``fit`` against the reference shows what funcnn adds or loses;
* ``matmul floor``: the step's FLOPs (9.2 MFLOP per example: forward, both weight
  gradients, the second convolution's input gradient, the dense layers) divided by
  the rate of a 2048x2048 float32 matmul on this machine. Target: fit within 4x.

``--cpu-devices N`` makes JAX present the CPU as ``N`` devices
(``sweep.use_cpu_devices``) and adds ``funcnn fit (backprop|jax), N-device mesh``:
the same ``fit`` with ``mesh=jax.make_mesh((N,), ("data",))``, each step's batch split
over the devices, which run in parallel (data parallelism within one CPU): a small
batch's operations are too small for XLA to spread over the cores. Compare the mesh
rows with the one-device ``fit`` of a run without ``--cpu-devices``: in a process with
N CPU devices, the one-device rows run slower than in a default process (measured
4.5 against 3.7 ms/step at batch 10 on 2 cores), so the ratio within such a run
overstates the mesh's gain.

``--sweep`` adds a sweep of four learning rates of the same net (``sweep.run``, 100
steps of batch 10 each) under ``strategy="auto"`` and each explicit strategy: on a
CPU ``vmap`` turns the convolutions into grouped convolutions, which XLA runs slower
than a loop over configurations, so ``auto`` must not pick it there.

Timing: every contender runs once untimed (compiles), then ``--repeat`` interleaved
rounds (``_timing.interleaved_times``); a time is the median. Ratios are within one
run only: the machine's speed changes from week to week.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
import numpy as np

import _conv_reference as reference
from _timing import env_line, interleaved_times, print_table
from funcnn import book, losses, optim, sweep, train

LR = 0.1


def flops_per_example() -> float:
    """Multiply-adds x 2 of one training example through dbl_conv (see the docstring)."""
    conv1 = 24 * 24 * 20 * 5 * 5 * 1 * 2          # 28x28x1 -> 24x24x20
    conv2 = 8 * 8 * 40 * 5 * 5 * 20 * 2           # 12x12x20 -> 8x8x40
    dense = 640 * 100 * 2 + 100 * 10 * 2
    # forward: all; backward: dW of both convs, dx of conv2 (not of conv1: the data),
    # dW and dx of both dense layers.
    return (conv1 + conv2 + dense) + (conv1 + 2 * conv2) + 2 * dense


def matmul_rate(n: int = 2048) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def data(steps: int, batch: int):
    rng = np.random.default_rng(0)
    x = rng.random((steps * batch, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, steps * batch).astype(np.int32)
    return x, y


def funcnn_contenders(x, y, batch, mesh=None):
    model, _, _ = book.network3("dbl_conv")
    opt = optim.sgd(LR)
    state = train.init_state(model, opt, jax.random.key(0), (28, 28, 1))
    dev = train.device_data(x, y, num_classes=10)
    loss = losses.softmax_cross_entropy
    out = {}
    for engine in ("backprop", "jax"):
        def run(engine=engine):
            s, _ = train.fit(model, loss, opt, state, dev, epochs=1, batch_size=batch,
                             engine=engine, progress=False)
            return s.params
        out[f"funcnn fit ({engine})"] = run
    if mesh is not None:
        # The data replicated on the mesh's devices once, as fit would place it.
        on_mesh = jax.device_put((x, y), jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec()))
        for engine in ("backprop", "jax"):
            def run(engine=engine):
                s, _ = train.fit(model, loss, opt, state, *on_mesh, epochs=1, batch_size=batch,
                                 engine=engine, progress=False, mesh=mesh)
                return s.params
            out[f"funcnn fit ({engine}), {mesh.size}-device mesh"] = run
    xb = jnp.asarray(x).reshape(-1, batch, 28, 28, 1)
    yb = jnp.asarray(y).reshape(-1, batch)
    for engine, label in (("backprop", "hand"), ("jax", "jax.grad")):
        step = jax.jit(lambda s, xx, yy, engine=engine: train.train_step(
            s, xx, yy, model=model, loss=loss, update=opt.update, engine=engine)[0])

        def run(step=step):
            s = state
            for i in range(xb.shape[0]):
                s = step(s, xb[i], yb[i])
            return s.params
        out[f"loop: jit({label} step)"] = run
    return out


def reference_contenders(x, y, batch):
    params = reference.init(jax.random.key(0))
    xb = jnp.asarray(x).reshape(-1, batch, 28, 28, 1)
    yb = jnp.asarray(y).reshape(-1, batch)
    out = {}
    for label, gradient in (("plain rules", reference.grad_fn),
                            ("jax.grad", jax.grad(reference.loss))):
        fit = reference.scan_fit(gradient, LR)
        out[f"reference: {label}, scan"] = lambda fit=fit: fit(params, xb, yb)
    return out


def flax_contender(x, y, batch):
    import flax.linen as fnn
    import optax
    from flax.training import train_state

    class CNN(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            x = fnn.Conv(20, (5, 5), padding="VALID")(x)
            x = fnn.sigmoid(fnn.max_pool(x, (2, 2), strides=(2, 2)))
            x = fnn.Conv(40, (5, 5), padding="VALID")(x)
            x = fnn.sigmoid(fnn.max_pool(x, (2, 2), strides=(2, 2)))
            x = x.reshape((x.shape[0], -1))
            x = fnn.sigmoid(fnn.Dense(100)(x))
            return fnn.Dense(10)(x)

    cnn = CNN()
    params = cnn.init(jax.random.key(0), jnp.ones((1, 28, 28, 1)))["params"]
    state = train_state.TrainState.create(apply_fn=cnn.apply, params=params,
                                          tx=optax.sgd(LR))

    @jax.jit
    def train_step(state, images, labels):
        def loss_fn(params):
            logits = state.apply_fn({"params": params}, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        grads = jax.grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads)

    xb, yb = jnp.asarray(x).reshape(-1, batch, 28, 28, 1), jnp.asarray(y).reshape(-1, batch)

    def run():
        s = state
        for i in range(xb.shape[0]):
            s = train_step(s, xb[i], yb[i])
        return s.params
    return {"Flax Linen": run}


def equinox_contender(x, y, batch):
    import equinox as eqx
    import optax

    class CNN(eqx.Module):
        layers: list

        def __init__(self, key):
            k = jax.random.split(key, 4)
            self.layers = [eqx.nn.Conv2d(1, 20, 5, key=k[0]), eqx.nn.MaxPool2d(2, 2),
                           jax.nn.sigmoid, eqx.nn.Conv2d(20, 40, 5, key=k[1]),
                           eqx.nn.MaxPool2d(2, 2), jax.nn.sigmoid, jnp.ravel,
                           eqx.nn.Linear(640, 100, key=k[2]), jax.nn.sigmoid,
                           eqx.nn.Linear(100, 10, key=k[3])]

        def __call__(self, x):          # one image, (1, 28, 28): channels-first
            for layer in self.layers:
                x = layer(x)
            return x

    model = CNN(jax.random.key(0))
    optimiser = optax.sgd(LR)
    opt_state = optimiser.init(eqx.filter(model, eqx.is_array))

    def loss(model, images, labels):
        logits = jax.vmap(model)(images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @eqx.filter_jit
    def make_step(model, opt_state, images, labels):
        grads = eqx.filter_grad(loss)(model, images, labels)
        updates, opt_state = optimiser.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state

    xb = jnp.asarray(x).transpose(0, 3, 1, 2).reshape(-1, batch, 1, 28, 28)
    yb = jnp.asarray(y).reshape(-1, batch)

    def run():
        m, o = model, opt_state
        for i in range(xb.shape[0]):
            m, o = make_step(m, o, xb[i], yb[i])
        return eqx.filter(m, eqx.is_array)
    return {"Equinox": run}


def bench_sweep(repeat: int) -> None:
    model, _, _ = book.network3("dbl_conv")
    x, y = data(100, 10)
    space = sweep.grid(learning_rate=[0.03, 0.1, 0.3, 1.0])
    opt = optim.sgd(LR)
    fns, labels = {}, {}
    for kw in ({"strategy": "auto"}, {"strategy": "vmap"},
               {"strategy": "chunked", "chunk_size": 1}, {"strategy": "loop"}):
        def call(kw=kw):
            res = sweep.run(model, losses.softmax_cross_entropy, opt, x, y, space, epochs=1,
                            batch_size=10, keep_params=False, **kw)
            labels[kw["strategy"]] = res.strategy + (f", chunk {res.chunk_size}"
                                                     if res.chunk_size else "")
            return res.history["loss"]
        fns[kw["strategy"]] = call
    times = interleaved_times(fns, warmup=1, repeat=repeat, number=1)
    best = min(float(np.median(v)) for v in times.values())
    rows = [(f"{k} ({labels[k]})", float(np.median(v)), float(np.median(v)) / best)
            for k, v in times.items()]
    print(f"\nsweep of 4 learning rates, dbl_conv, 100 steps of batch 10 each, median of "
          f"{repeat} (load average {os.getloadavg()[0]:.2f}):")
    print_table(rows, ["strategy", "s/sweep", "x fastest"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", default="10,128", help="batch sizes, comma-separated")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scale", action="store_true", help="GPU: 10x the steps per run")
    ap.add_argument("--skip-peers", action="store_true", help="no Flax / Equinox rows")
    ap.add_argument("--sweep", action="store_true", help="also time sweep strategies")
    ap.add_argument("--cpu-devices", type=int, default=None,
                    help="present the CPU as N devices and add fit over an N-device mesh")
    args = ap.parse_args()
    mesh = None
    if args.cpu_devices is not None:
        if args.cpu_devices < 1:
            ap.error(f"--cpu-devices must be >= 1, got {args.cpu_devices}")
        sweep.use_cpu_devices(args.cpu_devices)   # before JAX starts
        if jax.default_backend() != "cpu":
            ap.error(f"--cpu-devices is for a CPU; the backend here is {jax.default_backend()}")
        mesh = jax.make_mesh((args.cpu_devices,), ("data",))
    print(env_line())
    rate = matmul_rate()
    print(f"matmul 2048x2048 float32: {rate / 1e9:.0f} GFLOP/s; dbl_conv trains "
          f"{flops_per_example() / 1e6:.1f} MFLOP per example; load average "
          f"{os.getloadavg()[0]:.2f}")
    for batch in (int(b) for b in args.batch.split(",")):
        steps = args.steps or (200 if batch <= 32 else 20) * (10 if args.scale else 1)
        x, y = data(steps, batch)
        fns = funcnn_contenders(x, y, batch, mesh)
        fns.update(reference_contenders(x, y, batch))
        if not args.skip_peers:
            for make in (flax_contender, equinox_contender):
                try:
                    fns.update(make(x, y, batch))
                except ImportError as e:
                    print(f"  ({make.__name__}: skipped, {e})")
        times = interleaved_times(fns, warmup=1, repeat=args.repeat, number=1)
        ms = {k: 1e3 * float(np.median(v)) / steps for k, v in times.items()}
        hand = ms["funcnn fit (backprop)"]
        floor = 1e3 * batch * flops_per_example() / rate
        rows = [(k, v, v / hand) for k, v in ms.items()]
        rows.append(("matmul floor", floor, floor / hand))
        print(f"\nbatch {batch}, {steps} steps per run, median of {args.repeat} "
              f"(load average {os.getloadavg()[0]:.2f}):")
        print_table(rows, ["contender", "ms/step", "x funcnn fit (backprop)"])
        print(f"funcnn fit: {ms['funcnn fit (jax)'] / hand:.1f}x faster than engine='jax'; "
              f"{hand / floor:.1f}x the matmul floor")
        plain = ms["reference: plain rules, scan"]
        print(f"the issue's reference: plain rules {ms['reference: jax.grad, scan'] / plain:.1f}x "
              f"faster than jax.grad of the same code; funcnn fit {plain / hand:.2f}x the "
              f"reference's speed")
        if mesh is not None:
            on = ms[f"funcnn fit (backprop), {mesh.size}-device mesh"]
            print(f"over a {mesh.size}-device CPU mesh: {on:.2f} ms/step, "
                  f"{ms[f'funcnn fit (jax), {mesh.size}-device mesh'] / on:.1f}x faster than "
                  f"engine='jax' over the same mesh, {on / floor:.1f}x the matmul floor "
                  f"(compare with the one-device fit of a run without --cpu-devices)")
    if args.sweep:
        bench_sweep(args.repeat)


if __name__ == "__main__":
    main()
