"""Data-parallel ``fit`` over a device mesh against ``fit`` on one device, one run.

    python benchmarks/bench_scale.py [--devices N] [--workload A|B|all] [--repeat R]
                                     [--scale K]

``--devices N`` makes JAX see N CPU devices (``funcnn.sweep.use_cpu_devices``, before
JAX starts; default: one per usable core); on a GPU or TPU the mesh takes every
accelerator there is. Contenders, each ``train.fit`` on the same data (checked and
placed once with ``train.device_data``) for the same steps:

* ``no mesh``: one device, today's program (the baseline, ratio 1);
* ``mesh of 1``: the data-parallel code path on a mesh of one device (its overhead);
* ``Explicit mesh of N`` and ``Auto mesh of N``: the batch split over N devices, the
  parameters and optimizer state replicated.

Workloads (float32, Adam 1e-3): A, a 784-128-ReLU-10 MLP on MNIST-shaped synthetic
data, batch 128 (x ``--scale``), 50 steps a call; B, a small conv net (conv 8 3x3 SAME,
ReLU, max-pool 2, conv 16 3x3, ReLU, max-pool 2, dense 10) on 28x28x1 images, batch 64
(x ``--scale``), 20 steps a call.

Reported: the median over ``--repeat`` interleaved rounds of the compiled call's time
per step (``history.clock``, compilation excluded: each contender runs once before
timing) and of the whole ``fit`` call per step (checks and placement included), and
the ratio of each to the baseline (< 1: faster). On a 2-core CPU expect no gain: one
JAX CPU device already runs its matmuls on both cores, so splitting the batch into
devices only adds the all-reduce and the bookkeeping.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=None,
                   help="CPU devices to create (default: one per usable core)")
    p.add_argument("--workload", default="all", choices=["A", "B", "all"])
    p.add_argument("--repeat", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--scale", type=int, default=1,
                   help="multiply the batch size (and the data) by this, for big devices")
    return p.parse_args()


ARGS = _args() if __name__ == "__main__" else None

import jax  # noqa: E402

from funcnn import sweep  # noqa: E402

if ARGS is not None:
    sweep.use_cpu_devices(ARGS.devices)

import numpy as np  # noqa: E402

from funcnn import losses, nn, optim, train  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import env_line, print_table  # noqa: E402

SCE = losses.softmax_cross_entropy


def _mesh(n: int, kind: str | None):
    devices = jax.devices()[:n]
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is None or kind is None:
        return jax.make_mesh((n,), ("data",), devices=devices)
    return jax.make_mesh((n,), ("data",), axis_types=(getattr(axis_type, kind),),
                         devices=devices)


def _workload(name: str, scale: int):
    rng = np.random.default_rng(0)
    if name == "A":
        batch, steps = 128 * scale, 50
        model = nn.serial(nn.dense(128), nn.relu(), nn.dense(10))
        x = rng.random((batch * steps, 784), np.float32)
        shape = (784,)
    else:
        batch, steps = 64 * scale, 20
        model = nn.serial(nn.conv2d(8, 3, padding="SAME"), nn.relu(), nn.max_pool(2, 2),
                          nn.conv2d(16, 3), nn.relu(), nn.max_pool(2, 2), nn.flatten(),
                          nn.dense(10))
        x = rng.random((batch * steps, 28, 28, 1), np.float32)
        shape = (28, 28, 1)
    y = rng.integers(0, 10, len(x)).astype(np.int32)
    return model, train.device_data(x, y, num_classes=10), shape, batch, steps


def run(name: str, n: int, repeat: int, scale: int) -> list[list]:
    model, data, shape, batch, steps = _workload(name, scale)
    opt = optim.adam(1e-3)
    state = train.init_state(model, opt, jax.random.key(0), shape)
    contenders = {"no mesh": None, "mesh of 1": _mesh(1, None)}
    if n > 1:
        for kind in ("Explicit", "Auto"):
            contenders[f"{kind} mesh of {n}"] = _mesh(n, kind)
    if batch % n:
        raise SystemExit(f"batch {batch} does not split over {n} devices; pick --devices")

    def call(mesh):
        t = time.perf_counter()
        s, h = train.fit(model, SCE, opt, state, data, epochs=1, batch_size=batch,
                         mesh=mesh, progress=False)
        jax.block_until_ready(s)
        whole = time.perf_counter() - t
        return float(np.sum(h.clock["time_s"])) / steps, whole / steps, s

    finals = {}
    for label, mesh in contenders.items():  # compile each once, untimed
        finals[label] = call(mesh)[2]
    ref = jax.tree.leaves(finals["no mesh"].params)
    for label, s in finals.items():
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))
                   for a, b in zip(jax.tree.leaves(s.params), ref))
        if diff > 1e-4:
            print(f"warning: {label} ends {diff:.2g} (relative) from no mesh", flush=True)
    times = {label: ([], []) for label in contenders}
    for r in range(repeat):
        order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
        for label in order:
            step, whole, _ = call(contenders[label])
            times[label][0].append(step)
            times[label][1].append(whole)
    base_step = statistics.median(times["no mesh"][0])
    base_whole = statistics.median(times["no mesh"][1])
    rows = []
    for label, (step, whole) in times.items():
        ms, ws = statistics.median(step), statistics.median(whole)
        rows.append([name, label, batch, ms * 1e3, ms / base_step, ws * 1e3, ws / base_whole])
    return rows


def main() -> None:
    n = jax.device_count()
    print(env_line(), flush=True)
    print(f"devices: {n} x {jax.devices()[0].device_kind}", flush=True)
    rows = []
    for name in ("A", "B") if ARGS.workload == "all" else (ARGS.workload,):
        rows += run(name, n, ARGS.repeat, ARGS.scale)
    print_table(rows, ["workload", "contender", "batch", "ms/step (compiled call)",
                       "ratio", "ms/step (whole fit)", "ratio "])


if __name__ == "__main__":
    main()
