"""Sweeps and data-parallel ``fit`` across processes (``jax.distributed``), one run.

    python benchmarks/bench_processes.py [--processes P] [--configs C] [--repeat R]

Starts the same work in two layouts of the same devices on this machine, each a fresh
set of processes on the loopback interface (CPU collectives over gloo):

* ``1 process x P devices``: one process that sees P CPU devices;
* ``P processes x 1 device``: P processes joined by ``jax.distributed.initialize``,
  one CPU device each (the layout of one process per GPU, or per host).

Work, in both (float32):

* ``sweep``: ``sweep.run`` of C configurations (learning rates x seeds) of a
  784-64-ReLU-10 MLP on 2048 MNIST-shaped synthetic examples, 2 epochs of batch 128,
  strategy "auto" (sharded over all P devices); reported as configurations per second
  of the compiled run (``results.run_s``) and of the whole call;
* ``fit``: data-parallel ``train.fit`` of the same MLP over a mesh of the P devices,
  batch 128, 4 epochs; reported as milliseconds per step of the compiled calls
  (``history.clock``, the first call, which compiles, left out).

Each figure is the median of ``--repeat`` runs inside each layout's processes; the
ratio column is the multi-process layout over the single process. On a 2-core CPU,
two processes of one device and one process of two devices share the same two cores,
so expect about the same rate: the point is what the cross-process runtime costs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=2, help="P: processes (and devices)")
    p.add_argument("--configs", type=int, default=8, help="C: configurations in the sweep")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per layout")
    p.add_argument("--worker", nargs=4, metavar=("PID", "NPROC", "DEVICES", "PORT"),
                   help=argparse.SUPPRESS)
    return p.parse_args()


def worker(pid: int, nproc: int, devices: int, port: int, configs: int, repeat: int) -> dict:
    import jax

    jax.config.update("jax_num_cpu_devices", devices)
    if nproc > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", nproc, pid)
    import numpy as np

    from funcnn import losses, nn, optim, sweep, train

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2048, 784)).astype(np.float32)
    y = rng.integers(0, 10, 2048)
    model = nn.serial(nn.dense(64), nn.relu(), nn.dense(10))
    opt = optim.sgd(0.1)
    sce = losses.softmax_cross_entropy
    seeds = max(1, configs // 4)
    lrs = np.geomspace(0.01, 0.3, configs // seeds).tolist()
    space = sweep.grid(learning_rate=lrs, seed=list(range(seeds)))
    out: dict = {"sweep_run_s": [], "sweep_call_s": [], "fit_ms_per_step": []}
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    state = train.init_state(model, opt, jax.random.key(0), (784,))
    for r in range(repeat + 1):  # the first of each compiles
        t0 = time.perf_counter()
        res = sweep.run(model, sce, opt, x, y, space, epochs=2, batch_size=128)
        call = time.perf_counter() - t0
        _, hist = train.fit(model, sce, opt, state, x, y, epochs=4, batch_size=128,
                            mesh=mesh, epochs_per_call=1)
        if r:
            out["sweep_run_s"].append(res.run_s)
            out["sweep_call_s"].append(call)
            steps = np.diff(np.concatenate([[0], hist.clock["step"]]))[1:]
            out["fit_ms_per_step"].append(
                1e3 * float(np.sum(hist.clock["time_s"][1:]) / np.sum(steps)))
    out.update(strategy=res.strategy, devices=res.devices, configs=len(space),
               process_count=jax.process_count(), device_count=jax.device_count())
    if nproc > 1:
        jax.distributed.shutdown()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _layout(nproc: int, devices: int, args: argparse.Namespace) -> dict:
    """Runs one layout in fresh processes; returns process 0's report."""
    port = str(_free_port())
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    cmd = lambda pid: [sys.executable, __file__, "--configs", str(args.configs),  # noqa: E731
                       "--repeat", str(args.repeat), "--worker", str(pid), str(nproc),
                       str(devices), port]
    procs = [subprocess.Popen(cmd(pid), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for pid in range(nproc)]
    try:
        outs = [p.communicate(timeout=1800) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for pid, (p, (_, err)) in enumerate(zip(procs, outs)):
        if p.returncode:
            raise SystemExit(f"layout {nproc}x{devices}: process {pid} failed:\n{err[-3000:]}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def main() -> None:
    args = _args()
    if args.worker:
        pid, nproc, devices, port = (int(v) for v in args.worker)
        print(json.dumps(worker(pid, nproc, devices, port, args.configs, args.repeat)))
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _timing import env_line  # noqa: E402

    print(env_line())
    p = args.processes
    one = _layout(1, p, args)
    many = _layout(p, 1, args)
    med = statistics.median
    rows = [("sweep: configs/s (compiled run)", one["configs"] / med(one["sweep_run_s"]),
             many["configs"] / med(many["sweep_run_s"])),
            ("sweep: configs/s (whole call)", one["configs"] / med(one["sweep_call_s"]),
             many["configs"] / med(many["sweep_call_s"])),
            ("fit over a mesh: ms/step", med(one["fit_ms_per_step"]),
             med(many["fit_ms_per_step"]))]
    print(f"\n{one['configs']} configurations, strategy {one['strategy']} on "
          f"{one['devices']} / {many['devices']} devices; median of {args.repeat}:")
    print(f"| measure                          | 1 process x {p} devices | "
          f"{p} processes x 1 device | ratio |")
    print("|----------------------------------|---------------------:|"
          "-----------------------:|------:|")
    for name, a, b in rows:
        print(f"| {name:<32} | {a:>20.2f} | {b:>23.2f} | {b / a:>5.2f} |")


if __name__ == "__main__":
    main()
