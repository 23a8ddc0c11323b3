"""Hand-derived backprop (``funcnn.backprop``) against ``jax.grad``: time per call.

    python benchmarks/bench_backprop.py [--repeat N] [--number K] [--dump-hlo DIR]

Both contenders are jitted, float32, and get the same params and batch:

* ``mlp``:    784-128-10 ReLU MLP, batch 128 (random MNIST-shaped inputs),
* ``spiral``: 2-64-3 ReLU MLP on the nnfs spiral set, 300 points, full batch,

each with softmax cross-entropy on integer labels, as ``grad`` and as
``value_and_grad``. Before timing, the two gradients are compared (max relative error
over all leaves). Timing interleaves the contenders (hand, jax, jax, hand, ...) and
reports the median time per call and the ratio hand/jax (target <= 1.0): both the ratio
of the medians and the median of the round-by-round ratios, which cancels slow drift.
``--dump-hlo DIR`` writes every compiled HLO module, for comparing what XLA runs.

A second table times ``backprop.check`` (the gradient checker, float64, both train and
eval modes) on small layers: cold (a fresh layer object, so compiling included, as a
user's first call) and warm (the same layer again, another seed). Target: a small layer
checks in under 2 s cold.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _timing

import jax
import jax.numpy as jnp
import numpy as np

from _timing import env_line, interleaved_times, print_table
from funcnn import backprop, data, losses, nn


def _cases():
    loss = losses.softmax_cross_entropy

    mlp = nn.serial(nn.dense(128), nn.relu(), nn.dense(10))
    kp, kx, ky = jax.random.split(jax.random.key(0), 3)
    mlp_params = mlp.init(kp, (784,))
    mlp_x = jax.random.uniform(kx, (128, 784), jnp.float32)
    mlp_y = jax.random.randint(ky, (128,), 0, 10, jnp.int32)

    spiral = nn.serial(nn.dense(64), nn.relu(), nn.dense(3))
    sp_params = spiral.init(jax.random.key(1), (2,))
    X, y = data.spiral_data(100, 3)
    sp_x, sp_y = jnp.asarray(X), jnp.asarray(y.astype(np.int32))

    return [("mlp 784-128-10, N=128", mlp, mlp_params, mlp_x, mlp_y, loss),
            ("spiral 2-64-3, N=300", spiral, sp_params, sp_x, sp_y, loss)]


def _contenders(model, loss, kind):
    def objective(p, x, y):
        return loss(model.apply(p, x), y)

    if kind == "grad":
        return jax.jit(backprop.grad(model, loss)), jax.jit(jax.grad(objective))
    return (jax.jit(backprop.value_and_grad(model, loss)),
            jax.jit(jax.value_and_grad(objective)))


def _max_rel_err(a, b) -> float:
    """max |a - b| / max |b| over all leaves (both pytrees of the same structure)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise AssertionError(f"pytree structures differ: {jax.tree.structure(a)} vs "
                             f"{jax.tree.structure(b)}")
    err = 0.0
    for u, v in zip(la, lb):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        err = max(err, float(np.max(np.abs(u - v)) / max(np.max(np.abs(v)), 1e-30)))
    return err


def _check_times():
    """Seconds for backprop.check on small layers: cold (fresh layer) and warm."""
    cases = [
        ("dense(16) (8,)", lambda: nn.dense(16), (8,)),
        ("serial(dense(8), tanh, dense(4)) (6,)",
         lambda: nn.serial(nn.dense(8), nn.tanh(), nn.dense(4)), (6,)),
        ("residual(serial(dense(16), relu, dropout)) (16,)",
         lambda: nn.residual(nn.serial(nn.dense(16), nn.relu(), nn.dropout(0.2))), (16,)),
        ("softmax (10,)", nn.softmax, (10,)),
    ]
    rows = []
    for name, ctor, shape in cases:
        cold = []
        for seed in range(3):
            layer = ctor()
            t0 = time.perf_counter()
            result = backprop.check(layer, input_shape=shape, seed=seed)
            cold.append(time.perf_counter() - t0)
        warm = []
        for seed in range(3, 13):
            t0 = time.perf_counter()
            backprop.check(layer, input_shape=shape, seed=seed)
            warm.append(time.perf_counter() - t0)
        rows.append((name, float(np.median(cold)), float(np.median(warm)), result.fd_points))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=200,
                    help="timed rounds per case (each round times both contenders)")
    ap.add_argument("--number", type=int, default=None,
                    help="calls per timing (default: calibrated to ~2 ms)")
    ap.add_argument("--dump-hlo", metavar="DIR", default=None,
                    help="write the optimized HLO of every compiled function to DIR")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    print(env_line(), flush=True)
    rows, worst_err = [], 0.0
    for name, model, params, x, y, loss in _cases():
        for kind in ("grad", "value_and_grad"):
            hand, auto = _contenders(model, loss, kind)
            gh, ga = hand(params, x, y), auto(params, x, y)
            err = _max_rel_err(gh, ga)
            worst_err = max(worst_err, err)
            if args.dump_hlo:
                os.makedirs(args.dump_hlo, exist_ok=True)
                tag = f"{name.split()[0]}_{kind}"
                for who, fn in (("hand", hand), ("jax", auto)):
                    text = fn.lower(params, x, y).compile().as_text()
                    with open(os.path.join(args.dump_hlo, f"{tag}_{who}.hlo"), "w") as f:
                        f.write(text)
            t = interleaved_times({"hand": lambda: hand(params, x, y),
                                   "jax": lambda: auto(params, x, y)},
                                  repeat=args.repeat, number=args.number)
            th, ta = np.median(t["hand"]), np.median(t["jax"])
            paired = np.median(t["hand"] / t["jax"])
            rows.append((name, kind, th * 1e6, ta * 1e6, float(th / ta), float(paired),
                         f"{err:.1e}"))

    print()
    print_table(rows, ["case", "fn", "hand µs", "jax.grad µs", "hand/jax",
                       "paired hand/jax", "max rel err"])
    print(f"\n(median per call over {args.repeat} interleaved rounds; "
          f"total {time.perf_counter() - start:.1f} s)")
    print()
    print_table(_check_times(), ["layer (input shape)", "check cold s", "check warm s",
                                 "fd points"])
    if worst_err > 1e-4:
        print(f"WARNING: hand and jax.grad gradients differ (max rel err {worst_err:.1e})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
