"""funcnn at a git ref against the working tree, in one process: before/after figures.

    python benchmarks/bench_versions.py [--base REF | --base-dir DIR] [--repeat N]
                                        [--fit-repeat N]

When a change touches a hot path (the layers' rules, the backprop driver, ``fit``), its
note needs the figures before and after, from one run on one machine. This script
extracts ``funcnn/`` at ``REF`` (default ``HEAD``) into a temporary folder as the
package ``funcnn_base`` (imports rewritten), imports it beside the working tree's
``funcnn``, and times, interleaved round by round:

* ``backprop.value_and_grad`` (jitted, float32) on the 784-128-10 MLP at batch 128 and
  the 2-64-3 spiral net on 300 points, with ``jax.value_and_grad`` as the reference;
* ``train.fit`` on bench_fit's workloads A (60000x784, one epoch, batch 128; numpy
  data in, and data checked once with ``train.device_data``) and B (spiral, 2000
  full-batch steps), with bench_fit's pure-JAX scan as the reference.

It prints a table of medians and the paired (round-by-round) ratio head/base; the
target for a refactoring is 1.00 within noise (about 2-3 % on the 2-core CPU).
``--base-dir DIR`` takes a folder holding a ``funcnn/`` package instead of a git ref
(for a machine without the repository's history, such as a lent GPU).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _timing, bench_fit

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from _timing import env_line, interleaved_times, print_table  # noqa: E402


def import_base(ref: str | None = None, base_dir: str | None = None) -> object:
    """``funcnn`` at git ``ref`` (or in ``base_dir``) as the package ``funcnn_base``."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="funcnn_base_"))
    if base_dir is not None:
        shutil.copytree(pathlib.Path(base_dir) / "funcnn", tmp / "funcnn_base")
    else:
        root = pathlib.Path(subprocess.check_output(
            ["git", "rev-parse", "--show-toplevel"], cwd=HERE, text=True).strip())
        archive = subprocess.check_output(["git", "archive", ref, "funcnn"], cwd=root)
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        (tmp / "funcnn").rename(tmp / "funcnn_base")
    for path in (tmp / "funcnn_base").rglob("*.py"):
        text = re.sub(r"^(\s*)(from|import) funcnn\b", r"\1\2 funcnn_base",
                      path.read_text(), flags=re.M)
        path.write_text(text)
    sys.path.insert(0, str(tmp))
    return importlib.import_module("funcnn_base")


def grad_cases(fn):
    """(name, hand value_and_grad, args) for one funcnn version."""
    loss = fn.losses.softmax_cross_entropy
    mlp = fn.nn.serial(fn.nn.dense(128), fn.nn.relu(), fn.nn.dense(10))
    kp, kx, ky = jax.random.split(jax.random.key(0), 3)
    mlp_args = (mlp.init(kp, (784,)), jax.random.uniform(kx, (128, 784), jnp.float32),
                jax.random.randint(ky, (128,), 0, 10, jnp.int32))
    spiral = fn.nn.serial(fn.nn.dense(64), fn.nn.relu(), fn.nn.dense(3))
    x, y = fn.data.spiral_data(100, 3)
    sp_args = (spiral.init(jax.random.key(1), (2,)), jnp.asarray(x),
               jnp.asarray(y.astype(np.int32)))
    return [("value_and_grad mlp 784-128-10 N=128", mlp, loss, mlp_args),
            ("value_and_grad spiral 2-64-3 N=300", spiral, loss, sp_args)]


def fit_runner(fn, wl, device_data=False):
    """``fit`` as a user calls it on numpy data, or on data checked once on the device
    (``train.device_data``), which leaves out the per-call host checks and copy."""
    import bench_fit
    model = fn.nn.serial(fn.nn.dense(wl.hidden), fn.nn.relu(), fn.nn.dense(wl.classes))
    opt = fn.optim.adam(bench_fit.LR)
    holder = [fn.train.init_state(model, opt, jax.random.key(0), (wl.x.shape[1],))]
    x, y = wl.x, wl.y
    if device_data:
        x, y = fn.train.device_data(wl.x, wl.y, num_classes=wl.classes), None

    def run():
        holder[0], hist = fn.train.fit(model, fn.losses.softmax_cross_entropy, opt,
                                       holder[0], x, y, epochs=wl.epochs,
                                       batch_size=wl.batch, progress=False)
        return float(hist["loss"][-1])

    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="HEAD", help="git ref of the 'before' version")
    ap.add_argument("--base-dir", default=None,
                    help="a folder holding the 'before' funcnn/ (instead of --base)")
    ap.add_argument("--repeat", type=int, default=200, help="rounds for the gradient cases")
    ap.add_argument("--fit-repeat", type=int, default=7, help="rounds for the fit cases")
    ap.add_argument("--cases", default="grad,A,A-device,B",
                    help="comma-separated subset of: grad, A, A-device, B")
    args = ap.parse_args(argv)
    cases = set(args.cases.split(","))

    import funcnn as head
    base = import_base(args.base, args.base_dir)
    import bench_fit
    print(env_line())
    print(f"base: funcnn at {args.base_dir or args.base}; "
          f"head: {pathlib.Path(head.__file__).parent}\n",
          flush=True)
    rows = []
    start = time.perf_counter()
    grad_pairs = zip(grad_cases(head), grad_cases(base)) if "grad" in cases else []
    for (name, m_h, l_h, a_h), (_, m_b, l_b, a_b) in grad_pairs:
        f_h = jax.jit(head.backprop.value_and_grad(m_h, l_h))
        f_b = jax.jit(base.backprop.value_and_grad(m_b, l_b))
        f_j = jax.jit(jax.value_and_grad(lambda p, x, y: l_h(m_h.apply(p, x), y)))
        t = interleaved_times({"head": lambda: f_h(*a_h), "base": lambda: f_b(*a_b),
                               "jax": lambda: f_j(*a_h)}, repeat=args.repeat)
        rows.append(_row(name, "µs", 1e6, t))
    wl_a, wl_b = bench_fit.workload_a(False), bench_fit.workload_b(False)
    for wl, dev in ((wl_a, False), (wl_a, True), (wl_b, False)):
        if wl.key + ("-device" if dev else "") not in cases:
            continue
        runners = {"head": fit_runner(head, wl, dev), "base": fit_runner(base, wl, dev),
                   "jax": bench_fit.make_pure_jax(wl)}
        for r in runners.values():
            r()  # compile
        t = interleaved_times(runners, repeat=args.fit_repeat, number=1, warmup=1)
        rows.append(_row(f"fit workload {wl.key}" + (", device_data" if dev else ""),
                         "ms", 1e3, t))
    print_table(rows, ["case", "unit", "head", "base", "jax ref", "head/base (medians)",
                       "head/base (paired)", "head/jax"])
    print(f"\n(total {time.perf_counter() - start:.0f} s; load average "
          f"{os.getloadavg()[0]:.2f})")
    return 0


def _row(name, unit, scale, t):
    h, b, j = (float(np.median(t[k])) for k in ("head", "base", "jax"))
    paired = float(np.median(np.asarray(t["head"]) / np.asarray(t["base"])))
    return (name, unit, f"{h * scale:.1f}", f"{b * scale:.1f}", f"{j * scale:.1f}",
            f"{h / b:.3f}", f"{paired:.3f}", f"{h / j:.3f}")


if __name__ == "__main__":
    sys.exit(main())
