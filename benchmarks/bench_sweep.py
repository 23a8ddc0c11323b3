"""Hyperparameter sweeps: funcnn.sweep's strategies against the usual ways, in one run.

    python benchmarks/bench_sweep.py                  # A and B (B small), CPU split per core
    python benchmarks/bench_sweep.py --cpu-devices 1  # the CPU as one device
    python benchmarks/bench_sweep.py --full           # B on all 60000 examples

Workloads (float32, NNFS Adam: eps 1e-7, lr / (1 + decay * t)):

* A: 64 configurations (8 learning rates x 8 decays) of the 2-64-3 spiral model
  (spiral_data(100, 3)), 500 full-batch steps each.
* B: 16 configurations (4 x 4) of a 784-128-10 model for one epoch of synthetic
  MNIST-shaped data, batch 128, shuffled. By default 12000 examples (``--small``, 93
  steps per configuration; the full 60000 take minutes per contender on a 2-core CPU);
  ``--full`` uses 60000.

Contenders:

* ``python loop``: a Python loop over configurations, each one call of a jitted
  ``lax.scan`` (``train.run_epochs``), compiled once: the baseline (ratio 1).
* ``jit(vmap(scan))``: the naive batched program, one device.
* ``optax inject_hyperparams + vmap``: optax's Adam with its hyperparameters as state,
  ``jax.grad`` for gradients, vmapped (skipped with a note when optax is absent).
* ``funcnn.sweep``: ``strategy="auto"`` and each explicit strategy.

``compile s``: tracing + XLA compilation (once). ``run s``: the median (and the
minimum) over ``--repeat`` interleaved rounds of one complete, already compiled run,
the data already on the device for every contender (for funcnn.sweep, the whole
``sweep.run`` call: input checks, run, results fetched to the host). ``speedup``: the
loop's run time divided by this one's (> 1: faster than the loop). On a shared machine
the minimum is the run least disturbed by other processes.

CPU devices: JAX sees a CPU as one device unless told before it starts; this script
calls ``funcnn.sweep.use_cpu_devices(--cpu-devices)`` (default: one device per usable
core) right after ``import jax``, so ``strategy="auto"`` can shard across cores. The
baselines run on one device, as a user's loop would.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-devices", type=int, default=None,
                   help="CPU devices to create (default: one per usable core)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--small", dest="full", action="store_false",
                      help="B on 12000 examples (default)")
    size.add_argument("--full", dest="full", action="store_true",
                      help="B on all 60000 examples")
    p.set_defaults(full=False)
    p.add_argument("--workloads", default="AB", help="which workloads to run (A, B or AB)")
    p.add_argument("--repeat", type=int, default=5, help="interleaved timing rounds")
    return p.parse_args()


ARGS = _args() if __name__ == "__main__" else None

import jax  # noqa: E402

from funcnn import sweep  # noqa: E402

if ARGS is not None:
    sweep.use_cpu_devices(ARGS.cpu_devices)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from funcnn import losses, nn, optim, train  # noqa: E402
from funcnn.data import spiral_data  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    from _timing import env_line, print_table
except ImportError:  # pragma: no cover - the shared helper is absent
    import platform

    def env_line() -> str:
        return (f"python {platform.python_version()} | jax {jax.__version__} | backend "
                f"{jax.default_backend()} | devices {jax.device_count()}")

    def print_table(rows, headers):
        fmt = lambda c: f"{c:.3f}" if isinstance(c, float) else str(c)  # noqa: E731
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
        print("\n".join(lines), flush=True)

LOSS = losses.softmax_cross_entropy


def nnfs_adam() -> optim.Optimizer:
    return optim.nnfs.adam(0.05, decay=5e-7)


# --------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------

def workload_a():
    x, y = spiral_data(100, 3)
    model = nn.serial(nn.dense(64, init="nnfs"), nn.relu(), nn.dense(3, init="nnfs"))
    space = sweep.grid(learning_rate=np.geomspace(1e-3, 1e-1, 8),
                       decay=[0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    return dict(name="A: 64 configs x 500 full-batch steps, spiral 2-64-3, Adam",
                model=model, x=x, y=y, space=space, epochs=500, batch_size=None)


def workload_b(full: bool):
    n = 60000 if full else 12000
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int32)
    model = nn.serial(nn.dense(128, init="he"), nn.relu(), nn.dense(10))
    space = sweep.grid(learning_rate=[3e-4, 1e-3, 3e-3, 1e-2], decay=[0.0, 1e-4, 1e-3, 1e-2])
    return dict(name=f"B: 16 configs x 1 epoch of {n}x784 (batch 128, {n // 128} steps), "
                     f"784-128-10, Adam" + ("" if full else " [--small: use --full for 60000]"),
                model=model, x=x, y=y, space=space, epochs=1, batch_size=128)


# --------------------------------------------------------------------------------------
# Baselines, written the way a user would
# --------------------------------------------------------------------------------------

def funcnn_one(w, opt):
    """One configuration, (lr, decay, seed) -> final loss: train.run_epochs from scratch."""
    n = w["x"].shape[0]
    bs = w["batch_size"] or n

    def one(lr, decay, seed, x, y):
        state = train.init_state(w["model"], opt, jax.random.key(seed), x.shape[1:])
        state = train.TrainState(state.params, optim.set_hyperparams(
            state.opt_state, learning_rate=lr, decay=decay), state.step, state.key)
        final, m = train.run_epochs(state, x, y, None, None, model=w["model"], loss=LOSS,
                                    update=opt.update, engine="backprop", batch_size=bs,
                                    shuffle=True, epochs=w["epochs"])
        return final.params, m["loss"]

    return one


def optax_one(w):
    """The same with optax: inject_hyperparams(adam), jax.grad, NNFS decay by hand."""
    import optax

    model, n = w["model"], w["x"].shape[0]
    bs = w["batch_size"] or n
    steps = n // bs
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=0.05, eps=1e-7)

    def one(lr, decay, seed, x, y):
        k_init, k_run = jax.random.split(jax.random.key(seed))
        params = model.init(k_init, x.shape[1:])
        opt_state = tx.init(params)

        def loss_fn(p, xb, yb):
            return LOSS(model.apply(p, xb), yb)

        def step(carry, idx):
            params, opt_state, t = carry
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])  # this step's minibatch
            loss, g = jax.value_and_grad(loss_fn)(params, xb, yb)
            opt_state.hyperparams["learning_rate"] = lr / (1 + decay * t)
            upd, opt_state = tx.update(g, opt_state, params)
            return (optax.apply_updates(params, upd), opt_state, t + 1), loss

        def epoch(carry, e):
            if steps == 1:
                return jax.lax.scan(lambda c, _: step(c, None), carry, length=1)
            perm = jax.random.permutation(jax.random.fold_in(k_run, e), n)[:steps * bs]
            return jax.lax.scan(step, carry, perm.reshape(steps, bs))

        (params, _, _), losses_ = jax.lax.scan(epoch, (params, opt_state, 0),
                                               jnp.arange(w["epochs"]))
        return params, losses_

    return one


def _args_of(w):
    cols = w["space"].columns
    return (jnp.asarray(cols["learning_rate"], jnp.float32),
            jnp.asarray(cols["decay"], jnp.float32), jnp.zeros(len(w["space"]), jnp.int32),
            jnp.asarray(w["x"]), jnp.asarray(w["y"], jnp.int32))


def loop_contender(one, args):
    f = jax.jit(one)
    lr, decay, seed, x, y = args
    t0 = time.perf_counter()
    c = f.lower(lr[0], decay[0], seed[0], x, y).compile()
    compile_s = time.perf_counter() - t0
    rows = [(lr[i], decay[i], seed[i]) for i in range(len(lr))]  # sliced before timing
    return compile_s, lambda: [c(*r, x, y) for r in rows]


def vmap_contender(one, args):
    f = jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None, None)))
    t0 = time.perf_counter()
    c = f.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    return compile_s, lambda: c(*args)


def sweep_contender(w, opt, x, y, **kw):
    """``x, y`` already on the device, as the baselines have them; each call still checks
    them (NaN/inf, labels) as ``fit`` does, which is counted in the run time."""
    def call():
        return sweep.run(w["model"], LOSS, opt, x, y, w["space"], epochs=w["epochs"],
                         batch_size=w["batch_size"], **kw)
    first = call()
    label = f"{first.strategy}" + (f", chunk {first.chunk_size}"
                                   if first.chunk_size is not None else "") + \
        (f", {first.devices} devices" if first.devices > 1 else "")
    return first.compile_s, call, label, first


# --------------------------------------------------------------------------------------

def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not available
        return "n/a"


def bench(w, repeat: int):
    print(f"\n### {w['name']}\n", flush=True)
    print(f"load average before: {_load()}; {repeat} interleaved rounds\n", flush=True)
    opt = nnfs_adam()
    args = _args_of(w)
    contenders = {}  # label -> (compile_s, fn)
    c, fn = loop_contender(funcnn_one(w, opt), args)
    contenders["python loop over jit(scan) (baseline)"] = (c, fn)
    c, fn = vmap_contender(funcnn_one(w, opt), args)
    contenders["jit(vmap(scan)), one device"] = (c, fn)
    try:
        import optax  # noqa: F401
        c, fn = vmap_contender(optax_one(w), args)
        contenders["optax inject_hyperparams + jax.grad, jit(vmap)"] = (c, fn)
    except ImportError:
        print("note: optax is not installed; its contender is skipped", flush=True)
    explicit = [dict(strategy="vmap"), dict(strategy="chunked", chunk_size=1),
                dict(strategy="chunked", chunk_size=8), dict(strategy="loop")]
    if jax.device_count() > 1:
        explicit += [dict(strategy="sharded", chunk_size=1), dict(strategy="sharded")]
    results, compiled = {}, {}
    for kw in explicit + [{}]:  # auto last: its program is one of the explicit ones
        c, fn, label, first = sweep_contender(w, opt, *args[3:], **kw)
        c = compiled.setdefault(label, c)  # a cached program: report its first compile
        label = f"funcnn.sweep {'auto -> ' if not kw else ''}{label}"
        contenders[label] = (c, fn)
        results[label] = first
    # interleaved timing: every round runs each contender once, order reversed each round
    names = list(contenders)
    times = {k: [] for k in names}
    for r in range(repeat):
        for k in (names if r % 2 == 0 else names[::-1]):
            fn = contenders[k][1]
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - t0)
    base, base_min = float(np.median(times[names[0]])), float(np.min(times[names[0]]))
    rows = []
    for k in names:
        run_s, run_min = float(np.median(times[k])), float(np.min(times[k]))
        rows.append([k, round(contenders[k][0], 2), round(run_s, 3), round(run_min, 3),
                     round(base / run_s, 2), round(base_min / run_min, 2)])
    print_table(rows, ["contender", "compile s", "run s (median)", "run s (min)",
                       "speedup vs loop (median)", "speedup (min)"])
    print(f"\nload average after: {_load()} (other processes on this machine skew the "
          "parallel contenders most; the min is the least disturbed run)", flush=True)
    some = next(iter(results.values()))
    print(f"\nbest of the sweep: {some.best('loss')}", flush=True)
    return rows


def main() -> None:
    print(env_line(), flush=True)
    print(f"JAX devices: {jax.devices()}; sweep.default_strategy() = "
          f"{sweep.default_strategy()}", flush=True)
    if "A" in ARGS.workloads:
        bench(workload_a(), ARGS.repeat)
    if "B" in ARGS.workloads:
        bench(workload_b(ARGS.full), max(3, ARGS.repeat - 2))


if __name__ == "__main__":
    main()
