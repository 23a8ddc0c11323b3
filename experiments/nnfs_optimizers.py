"""NNFS chapter 10: SGD, SGD + momentum, Adagrad, RMSprop and Adam on spiral data.

From the book's own initialization (``nnfs.init()``, ``0.01 * randn`` weights drawn
after ``spiral_data(100, 3)``), Dense(2,64)-ReLU-Dense(64,3), 10001 full-batch epochs,
the book's hyperparameters and conventions (``optim.nnfs``). Prints a table
against the book's numpy results and saves the loss curves.

    python experiments/nnfs_optimizers.py --out out/nnfs_optimizers

Runs in float64 by default: the book's numpy (after ``nnfs.init()``) computes its dot
products in float64 too, and these runs are chaotic enough that float32 rounding
moves the final accuracy of SGD + momentum by several points (``--dtype float32``
shows it).
"""

import argparse
import pathlib
import time

import jax

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="out/nnfs_optimizers", help="folder for the plot")
parser.add_argument("--epochs", type=int, default=10001)
parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
parser.add_argument("--engine", choices=["backprop", "jax"], default="backprop")
args = parser.parse_args()
if args.dtype == "float64":
    jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from funcnn import book, losses, train  # noqa: E402

rows, curves = [], {}
for name, make in book.CHAPTER10_OPTIMIZERS.items():
    model, params, x, y = book.spiral_setup()
    params = jax.tree.map(lambda a: a.astype(args.dtype), params)
    opt = make()
    state = train.init_state(model, opt, jax.random.key(0), (2,), params=params)
    t0 = time.perf_counter()
    state, hist = train.fit(model, losses.softmax_cross_entropy, opt, state,
                            x.astype(args.dtype), y, epochs=args.epochs, engine=args.engine)
    seconds = time.perf_counter() - t0
    last = hist.last()
    ref_acc, ref_loss = book.CHAPTER10_REFERENCE[name]
    rows.append((name, last["accuracy"], last["loss"], ref_acc, ref_loss, seconds))
    curves[name] = hist["loss"]

print(f"\nNNFS chapter 10, {args.epochs} epochs, {args.dtype}, engine={args.engine}\n")
print("| optimizer | acc | loss | book acc | book loss | seconds |")
print("|---|---:|---:|---:|---:|---:|")
for name, acc, loss, racc, rloss, sec in rows:
    rl = "" if rloss is None else f"{rloss:.3f}"
    print(f"| {name} | {acc:.3f} | {loss:.3f} | {racc:.3f} | {rl} | {sec:.2f} |")

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("\n(matplotlib not installed: pip install funcnn[viz] for the plot)")
else:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, c in curves.items():
        ax.plot(np.arange(1, len(c) + 1), c, label=name)
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="NNFS chapter 10 optimizers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    print(f"\nsaved {out / 'loss_curves.png'}")
