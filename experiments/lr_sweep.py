"""Learning rate x decay for the NNFS Adam model, then 16 seeds at the best setting.

    python experiments/lr_sweep.py                     # 10001 epochs, as the book
    python experiments/lr_sweep.py --epochs 2001 --out out/quick

The model and data of NNFS chapter 10's final Adam run: Dense(2, 64), ReLU,
Dense(64, 3) with the book's ``0.01 * randn`` init, softmax cross-entropy,
``spiral_data(100, 3)``, full batch, Adam with the book's epsilon (1e-7) and decay
``lr / (1 + decay * t)`` (the book: lr 0.05, decay 5e-7, 10001 epochs, accuracy about
0.97). Here:

1. an 8 x 8 grid of learning rate x decay, the 64 configurations trained as one
   sweep (``funcnn.sweep``); prints the best by final training accuracy and saves a
   heatmap, loss curves, and the results as JSON and CSV under ``--out``;
2. 16 initialization seeds at the best setting: the mean and spread of the accuracy,
   which says how much of the grid's best is the setting and how much is luck.

On a CPU the script turns each core into a JAX device first, so the sweep spreads the
configurations over the cores (see ``funcnn.sweep``).
"""

from __future__ import annotations

import argparse
import os
import time

import jax

from funcnn import sweep

if __name__ == "__main__":
    sweep.use_cpu_devices()  # before JAX starts: one CPU device per core

import numpy as np  # noqa: E402

from funcnn import losses, nn, optim  # noqa: E402
from funcnn.data import spiral_data  # noqa: E402

LEARNING_RATES = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2]
DECAYS = [0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]


def nnfs_model() -> nn.Layer:
    """Dense(2, 64), ReLU, Dense(64, 3) with the NNFS book's ``0.01 * randn`` weights."""
    return nn.serial(nn.dense(64, init="nnfs"), nn.relu(), nn.dense(3, init="nnfs"))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10001,
                   help="full-batch epochs per configuration (default: the book's 10001)")
    p.add_argument("--seeds", type=int, default=16, help="seeds at the best setting")
    p.add_argument("--out", default=os.path.join("out", "lr_sweep"), help="output folder")
    p.add_argument("--strategy", default="auto", choices=sweep.STRATEGIES)
    args = p.parse_args(argv)
    if args.epochs < 1 or args.seeds < 1:
        p.error("--epochs and --seeds must be positive")
    os.makedirs(args.out, exist_ok=True)

    x, y = spiral_data(100, 3)
    model = nnfs_model()
    opt = optim.nnfs.adam(0.05, decay=5e-7)  # the book's; the grid overrides
    loss = losses.softmax_cross_entropy
    print(f"JAX: {jax.default_backend()}, {jax.device_count()} device(s); "
          f"{args.epochs} epochs per configuration", flush=True)

    # 1. the grid ---------------------------------------------------------------------
    space = sweep.grid(learning_rate=LEARNING_RATES, decay=DECAYS)
    t0 = time.perf_counter()
    res = sweep.run(model, loss, opt, x, y, space, epochs=args.epochs,
                    strategy=args.strategy)
    print(f"\n{len(res)} configurations in {time.perf_counter() - t0:.1f} s "
          f"(strategy {res.strategy}, chunk {res.chunk_size}, {res.devices} device(s); "
          f"compile {res.compile_s:.1f} s, run {res.run_s:.1f} s); "
          f"diverged: {int(res.diverged.sum())}")
    best = res.best("accuracy")
    print(f"best: learning_rate={best['learning_rate']:g}, decay={best['decay']:g}: "
          f"accuracy {best['accuracy']:.3f}, loss {best['loss']:.4f}")
    print("\ntop 5 by final training accuracy:\n" + res.summary("accuracy", top=5))
    book = int(np.flatnonzero((res.values["learning_rate"] == 0.05)
                              & (res.values["decay"] == 1e-7))[0])
    print(f"\nnear the book's setting (lr 0.05, decay 1e-7 ~ 5e-7): accuracy "
          f"{res.final['accuracy'][book]:.3f}, loss {res.final['loss'][book]:.4f}")
    res.to_json(os.path.join(args.out, "grid.json"))
    res.to_csv(os.path.join(args.out, "grid.csv"))
    try:
        res.plot_heatmap("accuracy", x="decay", y="learning_rate").savefig(
            os.path.join(args.out, "heatmap_accuracy.png"), dpi=120)
        res.plot_heatmap("loss", x="decay", y="learning_rate").savefig(
            os.path.join(args.out, "heatmap_loss.png"), dpi=120)
        res.plot_curves("loss", by="learning_rate").savefig(
            os.path.join(args.out, "loss_curves.png"), dpi=120)
        print(f"saved heatmaps and loss curves to {args.out}/")
    except ImportError as e:
        print(f"plots skipped: {e}")

    # 2. seeds at the best setting ------------------------------------------------------
    seeds = sweep.grid(seed=list(range(args.seeds))) * sweep.zipped(
        learning_rate=[best["learning_rate"]], decay=[best["decay"]])
    s = sweep.run(model, loss, opt, x, y, seeds, epochs=args.epochs, strategy=args.strategy)
    acc, lss = s.final["accuracy"][~s.diverged], s.final["loss"][~s.diverged]
    print(f"\n{args.seeds} seeds at learning_rate={best['learning_rate']:g}, "
          f"decay={best['decay']:g} ({s.run_s:.1f} s): accuracy mean {acc.mean():.3f}, "
          f"std {acc.std(ddof=1) if len(acc) > 1 else 0:.3f}, min {acc.min():.3f}, "
          f"max {acc.max():.3f}; loss mean {lss.mean():.4f}, std "
          f"{lss.std(ddof=1) if len(lss) > 1 else 0:.4f}; diverged {int(s.diverged.sum())}")
    s.to_csv(os.path.join(args.out, "seeds.csv"))
    return {"best": best, "seed_accuracy_mean": float(acc.mean()),
            "seed_accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0}


if __name__ == "__main__":
    main()
