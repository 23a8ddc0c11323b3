"""NNFS chapter 19 on Fashion-MNIST: funcnn against the book's numpy code, in one run.

    python benchmarks/bench_fashion.py [--epochs 10] [--data-dir DIR] [--repeat 1]

Both train the chapter-19 model (Dense(784,128) ReLU Dense(128,128) ReLU Dense(128,10),
softmax cross-entropy, Adam lr 0.001 decay 1e-3 eps 1e-7, batches of 128, the test set
evaluated after every epoch as the book's ``Model.train`` does), on the same data:

* ``numpy (NNFS)``: the book's classes (``_nnfs_numpy.py``: dense layer, ReLU,
  softmax + categorical cross-entropy with the fused backward, Adam with its
  ``pre_update_params / update_params / post_update_params`` loop) in the book's
  chapter-19 ``Model`` loop, step by step: float64 weights (``0.01 * randn``),
  float32 inputs, the loss and accuracy of every batch accumulated as the book does.
* ``funcnn``: ``train.fit`` with the same model, the hand-derived backprop and
  ``optim.nnfs.adam(...)``, float32, one compiled call per epoch.

Data: synthetic images of the same shape (60,000 + 10,000, 28x28 uint8, 10 classes)
by default; ``--data-dir`` reads the real IDX files. Timing: wall time of whole
epochs, each including its validation pass, the two contenders' epochs alternating
(see :func:`time_both`); funcnn's compilation is done before the clock starts, by a
warm-up epoch whose result is thrown away. The table gives seconds per epoch (median
over epochs) and numpy/funcnn, the speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _timing, _nnfs_numpy

import jax
import numpy as np

from _nnfs_numpy import ActivationReLU, ActivationSoftmaxLossCCE, LayerDense, OptimizerAdam
from funcnn import data, losses, nn, optim, train

try:
    from _timing import env_line, print_table
except ImportError:  # the helper is optional
    env_line = None
    print_table = None


# ------------------------------------------------------------------ the book's chapter-19 model

class NumpyModel:
    """The chapter-19 ``Model``: forward, loss, accuracy, backward, update per batch."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.dense = [LayerDense(0.01 * rng.standard_normal((n_in, n_out)), np.zeros(n_out))
                      for n_in, n_out in [(784, 128), (128, 128), (128, 10)]]
        self.relus = [ActivationReLU(), ActivationReLU()]
        self.softmax_loss = ActivationSoftmaxLossCCE()
        self.optimizer = OptimizerAdam(learning_rate=0.001, decay=1e-3, epsilon=1e-7)

    def forward(self, X, y):
        """Probabilities and mean loss of a batch."""
        d1, d2, d3 = self.dense
        d1.forward(X)
        self.relus[0].forward(d1.output)
        d2.forward(self.relus[0].output)
        self.relus[1].forward(d2.output)
        d3.forward(self.relus[1].output)
        loss = self.softmax_loss.forward(d3.output, y)
        return self.softmax_loss.output, loss

    def backward(self, output, y):
        d1, d2, d3 = self.dense
        self.softmax_loss.backward(output, y)
        d3.backward(self.softmax_loss.dinputs)
        self.relus[1].backward(d3.dinputs)
        d2.backward(self.relus[1].dinputs)
        self.relus[0].backward(d2.dinputs)
        d1.backward(self.relus[0].dinputs)

    def train_epoch(self, X, y, batch_size):
        """One pass over the batches in order; the epoch's mean loss and accuracy."""
        steps = len(X) // batch_size + (len(X) % batch_size != 0)  # the book keeps the tail
        loss_sum, correct = 0.0, 0  # the book's accumulated loss and accuracy
        for step in range(steps):
            batch_X = X[step * batch_size:(step + 1) * batch_size]
            batch_y = y[step * batch_size:(step + 1) * batch_size]
            output, loss = self.forward(batch_X, batch_y)
            loss_sum += loss * len(batch_y)
            correct += np.sum(np.argmax(output, axis=1) == batch_y)
            self.backward(output, batch_y)
            self.optimizer.pre_update_params()
            for layer in self.dense:
                self.optimizer.update_params(layer)
            self.optimizer.post_update_params()
        return loss_sum / len(X), correct / len(X)

    def evaluate(self, X, y, batch_size):
        """Validation accuracy, batch by batch (the loss is computed, as in the book, unused)."""
        correct = 0
        for step in range(len(X) // batch_size + (len(X) % batch_size != 0)):
            batch_y = y[step * batch_size:(step + 1) * batch_size]
            output, _ = self.forward(X[step * batch_size:(step + 1) * batch_size], batch_y)
            correct += np.sum(np.argmax(output, axis=1) == batch_y)
        return correct / len(X)


# ------------------------------------------------------------------ data and contenders

def load(data_dir: str | None) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Flattened inputs in [-1, 1] (float32) and int labels: real files or synthetic."""
    if data_dir:
        (xtr, ytr), (xte, yte) = data.load_fashion_mnist(data_dir)
    else:
        rng = np.random.default_rng(0)
        xtr = rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8)
        ytr = rng.integers(0, 10, 60000).astype(np.uint8)
        xte = rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8)
        yte = rng.integers(0, 10, 10000).astype(np.uint8)

    def scale(x):
        return (x.reshape(len(x), -1).astype(np.float32) - 127.5) / 127.5

    return (scale(xtr), ytr.astype(np.int32)), (scale(xte), yte.astype(np.int32))


def time_both(train_set, test_set, epochs: int) -> dict[str, tuple[list[float], float]]:
    """Per-epoch seconds and final validation accuracy of each contender.

    The epochs alternate, funcnn then numpy, so that a slow spell of the machine
    (other processes on a shared box) falls on both: funcnn's ``on_chunk`` hook, which
    ``train.fit`` calls after each compiled epoch has finished, runs one numpy epoch.
    """
    (x, y), (xt, yt) = train_set, test_set
    order = np.random.default_rng(0).permutation(len(x))  # the book shuffles once
    np_model, x_np, y_np = NumpyModel(seed=0), x[order], y[order]

    model = nn.serial(nn.dense(128, init="nnfs"), nn.relu(), nn.dense(128, init="nnfs"),
                      nn.relu(), nn.dense(10, init="nnfs"))
    opt = optim.nnfs.adam(1e-3, decay=1e-3)
    loss = losses.softmax_cross_entropy
    state = train.init_state(model, opt, jax.random.key(0), (784,))
    kw = dict(batch_size=128, validation_data=(xt, yt), epochs_per_call=1, progress=False)
    train.fit(model, loss, opt, state, x, y, epochs=1, **kw)  # compile (result thrown away)

    times: dict[str, list[float]] = {"numpy": [], "funcnn": []}
    np_acc = 0.0
    t_resume = 0.0

    def numpy_epoch(s, h):
        nonlocal np_acc, t_resume
        times["funcnn"].append(time.perf_counter() - t_resume)  # fit has synced its metrics
        t0 = time.perf_counter()
        np_model.train_epoch(x_np, y_np, 128)
        np_acc = float(np_model.evaluate(xt, yt, 128))
        times["numpy"].append(time.perf_counter() - t0)
        t_resume = time.perf_counter()

    t_resume = time.perf_counter()
    state, history = train.fit(model, loss, opt, state, x, y, epochs=epochs,
                               on_chunk=numpy_epoch, **kw)
    # the first funcnn epoch also moved the data set to the device and checked it
    return {"numpy": (times["numpy"], np_acc),
            "funcnn": (times["funcnn"], float(history["val_accuracy"][-1]))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per contender (10)")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the Fashion-MNIST IDX files (default: synthetic)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    train_set, test_set = load(args.data_dir)
    source = f"Fashion-MNIST from {args.data_dir}" if args.data_dir else "synthetic data"
    if env_line is not None:
        print(env_line())
    print(f"NNFS chapter 19, {args.epochs} epoch(s) each, {source}, batch 128\n", flush=True)
    load_before = _load_average()
    res = time_both(train_set, test_set, args.epochs)
    (t_np, acc_np), (t_fn, acc_fn) = res["numpy"], res["funcnn"]
    med_np, med_fn = statistics.median(t_np), statistics.median(t_fn)
    rows = [["numpy (NNFS book code, float64 weights)", med_np, 1.0, acc_np],
            ["funcnn (train.fit, float32)", med_fn, med_np / med_fn, acc_fn]]
    headers = ["contender", "s / epoch", "speed-up vs numpy", "val acc"]
    if print_table is not None:
        print_table(rows, headers)
    else:
        print(" | ".join(headers))
        for r in rows:
            print(" | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in r))
    print(f"\nfuncnn is {med_np / med_fn:.1f}x faster than the book's numpy code "
          f"(target: at least 3x).")
    print(f"per-epoch seconds, numpy: {_fmt_list(t_np)}; funcnn: {_fmt_list(t_fn)}")
    print(f"machine load average (1 min) before / after: {load_before} / {_load_average()}"
          " (other processes share the CPUs when it exceeds their number)")


def _fmt_list(xs: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in xs)


def _load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):  # not on this platform
        return "n/a"


if __name__ == "__main__":
    main()
