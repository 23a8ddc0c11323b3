"""The cases of test_multiprocess: one process of a two-process JAX job on this machine.

Run as ``python -m tests.multiprocess_cases PID PORT OUT`` twice (PID 0 and 1), both
with the same free PORT: each joins ``jax.distributed`` on the loopback interface with
2 CPU devices (4 in the job), runs every case, and writes ``OUT/result_PID.json``. A
case reports numbers (the largest relative difference from the single-process result)
or the error message it raised, so that the test can check that every process raised
the same clear error. Process 1 records (with an audit hook) whatever it would
change in the shared run folder ``OUT/runs``, so the test can see that it wrote
nothing.
"""

import json
import os
import sys
import traceback
from pathlib import Path

import jax

PID, PORT, OUT = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.distributed.initialize(f"127.0.0.1:{PORT}", num_processes=2, process_id=PID,
                           initialization_timeout=120)

import dataclasses  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from funcnn import distributed, experiment, losses, nn, optim, sweep, train  # noqa: E402

SCE = losses.softmax_cross_entropy
MESH = jax.make_mesh((jax.device_count(),), ("data",))
DENSE = nn.serial(nn.dense(8), nn.relu(), nn.dropout(0.2), nn.dense(3))
CONV = nn.serial(nn.conv2d(3, (3, 3)), nn.relu(), nn.max_pool((2, 2), (2, 2)), nn.flatten(),
                 nn.dense(3))
OPT = optim.adam(0.01)


def rel_diff(a, b) -> float:
    worst = 0.0
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u, v = np.asarray(distributed.to_host(u), np.float64), np.asarray(v, np.float64)
        scale = max(float(np.max(np.abs(v))), 1e-30)
        worst = max(worst, float(np.max(np.abs(u - v))) / scale)
    return worst


def data(shape, n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)), rng.integers(0, 3, n)


def fit_case(model, shape, engine, dtype, again=False):
    """fit over the 4 devices of both processes against fit on one device; ``again``:
    a second call from the returned state (arrays across processes) carries on."""
    x, y = data(shape)
    state = train.init_state(model, OPT, jax.random.key(1), shape, dtype=dtype)
    kw = dict(epochs=2, batch_size=8, engine=engine, validation_data=(x[:8], y[:8]))
    mine, hist = train.fit(model, SCE, OPT, state, x, y, mesh=MESH, **kw)
    one, hist1 = train.fit(model, SCE, OPT, state, x, y, **kw)
    if again:
        mine, _ = train.fit(model, SCE, OPT, mine, x, y, mesh=MESH, **kw)
        one, _ = train.fit(model, SCE, OPT, one, x, y, **kw)
    ev = train.evaluate(model, SCE, mine.params, x, y, mesh=MESH)
    ev1 = train.evaluate(model, SCE, one.params, x, y)
    return {"params": rel_diff(mine.params, one.params),
            "opt_state": rel_diff(mine.opt_state, one.opt_state),
            "history": rel_diff(hist.metrics, hist1.metrics),
            "evaluate": max(abs(ev[k] - ev1[k]) / max(abs(ev1[k]), 1e-30) for k in ev1)}


def sweep_case():
    """8 configurations over the devices of both processes against one process."""
    x, y = data((5,))
    space = sweep.grid(learning_rate=[0.003, 0.01, 0.03, 0.1], seed=[0, 1])
    res = sweep.run(DENSE, SCE, OPT, x, y, space, epochs=2, batch_size=8, dtype=jnp.float64)
    alone = sweep.run(DENSE, SCE, OPT, x, y, space, epochs=2, batch_size=8,
                      dtype=jnp.float64, devices=jax.local_devices()[:1], strategy="loop")
    return {"strategy": res.strategy, "devices": res.devices,
            "history": rel_diff(res.history, alone.history),
            "params": rel_diff(res.params, alone.params),
            "final_loss": res.history["loss"][:, -1].tolist()}


def gather_case():
    x, y = data((5,))
    half = slice(16 * PID, 16 * (PID + 1))
    xg, yg = distributed.gather_processes(x[half], y[half])
    state = train.init_state(DENSE, OPT, jax.random.key(1), (5,), dtype=jnp.float64)
    a, _ = train.fit(DENSE, SCE, OPT, state, xg, yg, epochs=1, batch_size=8, mesh=MESH)
    b, _ = train.fit(DENSE, SCE, OPT, state, x, y, epochs=1, batch_size=8, mesh=MESH)
    return {"equal": bool(np.array_equal(xg, x) and np.array_equal(yg, y)),
            "params": rel_diff(a.params, b.params)}


@dataclasses.dataclass(frozen=True)
class Config:
    epochs: int = 2


def run_fn(run):
    x, y = data((5,))
    state = train.init_state(DENSE, OPT, run.key, (5,), dtype=jnp.float64)
    state, history = run.fit(DENSE, SCE, OPT, state, x, y, epochs=run.config.epochs,
                             batch_size=8, mesh=MESH)
    run.log_result(final_loss=float(history.metrics["loss"][-1]))
    return float(history.metrics["loss"][-1])


WRITES = []  # what process 1 changed under OUT/runs (an audit hook records it)


def _audit(event, args):
    if event == "open" and args[0] is not None and (
            any(c in str(args[1] or "") for c in "wax+") or (args[2] or 0) & (
                os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
        path = str(args[0])
    elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree"):
        path = str(args[0])
    else:
        return
    if path.startswith(str(OUT / "runs")):
        WRITES.append(f"{event} {path}")


def experiment_case():
    """Both processes run the experiment in one (shared) run folder: process 0 writes
    it, and process 1, which trains too, changes nothing in it."""
    runs = OUT / "runs"
    if PID == 1:
        sys.addaudithook(_audit)
    loss = experiment.execute("mp", Config(epochs=2), run_fn, runs_dir=runs, plots=False,
                              verbose=False)
    files = sorted(str(p.relative_to(runs)) for p in runs.rglob("*") if p.is_file())
    manifest = json.loads((next(runs.glob("mp/*")) / "manifest.json").read_text())
    return {"loss": loss, "files": files, "layout": manifest["layout"],
            "writes": list(WRITES)}


def bad(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 (the message is the result)
        return f"{type(e).__name__}: {e}"
    finally:
        print(f"process {PID}: a bad case done", file=sys.stderr, flush=True)
    return "no error"


def bad_cases():
    x, y = data((5,))
    state = train.init_state(DENSE, OPT, jax.random.key(1), (5,), dtype=jnp.float64)
    fit = lambda **kw: train.fit(DENSE, SCE, OPT, **{  # noqa: E731
        "state": state, "x": x, "y": y, "epochs": 1, "batch_size": 8, "mesh": MESH, **kw})
    x_nan = x.copy()
    x_nan[3, 1] = np.nan if PID == 1 else x_nan[3, 1]
    x_other = x + PID
    y_other = (y + PID) % 3
    other_state = train.init_state(DENSE, OPT, jax.random.key(PID), (5,), dtype=jnp.float64)
    space = sweep.grid(learning_rate=[0.01, 0.1 + PID])
    return {
        "nan_on_one": bad(lambda: fit(x=x_nan)),
        "data_differs": bad(lambda: fit(x=x_other)),
        "labels_differ": bad(lambda: fit(y=y_other)),
        "batch_size_differs": bad(lambda: fit(batch_size=8 * (PID + 1))),
        "state_differs": bad(lambda: fit(state=other_state)),
        "length_differs": bad(lambda: distributed.gather_processes(x[:16 + PID], y[:16 + PID])),
        "batch_not_divisible": bad(lambda: fit(batch_size=6)),
        "sweep_space_differs": bad(lambda: sweep.run(DENSE, SCE, OPT, x, y, space, epochs=1,
                                                     batch_size=8, dtype=jnp.float64)),
        # process 0 finds the run of experiment_case and process 1 nothing
        "experiment_folder_not_shared": bad(lambda: experiment.execute(
            "mp", Config(epochs=2), run_fn, runs_dir=OUT / ("runs" if PID == 0 else "other"),
            plots=False, verbose=False)),
    }


def main():
    out = {"process_count": jax.process_count(), "device_count": jax.device_count()}
    cases = {"fit/dense/backprop/float64": lambda: fit_case(DENSE, (5,), "backprop",
                                                             jnp.float64, again=True),
             "fit/dense/jax/float32": lambda: fit_case(DENSE, (5,), "jax", jnp.float32),
             "fit/conv/backprop/float64": lambda: fit_case(CONV, (6, 6, 2), "backprop",
                                                            jnp.float64),
             "sweep": sweep_case, "gather": gather_case, "experiment": experiment_case,
             "bad": bad_cases}
    only = os.environ.get("FUNCNN_CASES")  # a comma-separated subset, for debugging
    for name, case in cases.items():
        if only and name not in only.split(","):
            continue
        try:
            out[name] = case()
        except Exception:  # noqa: BLE001 (reported to the test)
            out[name] = {"crashed": traceback.format_exc()}
        print(f"process {PID}: {name} done", file=sys.stderr, flush=True)
    (OUT / f"result_{PID}.json").write_text(json.dumps(out, indent=1))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
