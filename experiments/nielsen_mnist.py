"""Nielsen's MNIST networks (Neural Networks and Deep Learning, chapters 1 and 3).

    python experiments/nielsen_mnist.py --data-dir /path/to/mnist                 # network.py
    python experiments/nielsen_mnist.py --network network2 --data-dir /path/to/mnist
    python experiments/nielsen_mnist.py --dataset fashion --data-dir /path/to/fashion-mnist

Two of the book's runs, on the book's split (the first 50,000 training images to
train, the other 10,000 as validation data, the 10,000 test images as test data),
inputs ``x / 255`` in [0, 1] and one-hot targets:

``--network network`` (``network.py``, chapter 1): [784, 30, 10], sigmoid on every
layer, quadratic cost, SGD with mini-batches of 10, eta 3.0, 30 epochs, weights and
biases drawn from N(0, 1) (``init="nielsen_large"``, ``bias_init="normal"``). The
book: 95.42% on the test data (its best epoch).

``--network network2`` (``network2.py``, chapter 3): [784, 100, 10], sigmoid, the
cross-entropy cost, L2 regularisation lambda 5.0, eta 0.5, mini-batches of 10, 30
epochs, weights from N(0, 1/n_in) and biases from N(0, 1) (``init="nielsen"``). The
book: 97.92%.

Nielsen's eta and lambda are used as he writes them, because the costs are his.
Write K = 10 for the number of outputs, m for the mini-batch size, n for the
training-set size. Nielsen's cost per example, C_x, sums over the K outputs; he
trains on the mini-batch mean ``C_m = (1/m) sum_x C_x`` with the step
``w <- w - eta * dC_m/dw`` (his ``eta/len(mini_batch)`` times a summed gradient), so
``optim.sgd(eta)`` on ``C_m`` is his step.

* Quadratic cost. ``C_x = 0.5 * ||a - y||^2``: ``book.nielsen_quadratic`` on the
  sigmoid outputs a, gradient ``(a - y) / m``.
* Cross-entropy. ``C_x = -sum_j [y_j ln a_j + (1 - y_j) ln(1 - a_j)]`` with
  ``a = sigmoid(z)``: computed stably from the logits z by
  ``losses.binary_cross_entropy_with_logits.with_reduction("sum")`` (summed over the
  outputs of each example, mean over the batch; ``book.nielsen_cross_entropy`` is the
  same cost on a). Its gradient ``(a - y) / m`` with respect to z is his ``delta``.
* L2. Nielsen's cost is ``C + (lambda / (2n)) sum w^2`` over the weights only (not
  the biases), which gives his ``w <- (1 - eta*lambda/n) w - eta dC_m/dw``:
  ``book.nielsen_l2(params, lambda, n)``. (lambda 5.0, n 50,000: 5e-5.)

(funcnn's ``mse`` and binary cross-entropies average over all m*K elements by default:
``K/2`` and ``K`` times smaller than these costs. Before the ``"sum"`` reduction this
script rescaled Nielsen's numbers instead: lr ``eta*K/2`` or ``eta*K``, L2
``lambda/(2nK)``; the steps are the same.)

Both then follow Nielsen's update to float rounding (funcnn computes in float32,
Nielsen in float64). Other differences: Nielsen stores weights as (out, in) and
computes ``W a + b``; funcnn as (in, out) and ``x @ W + b``: the same map. His
``random.shuffle`` is replaced by funcnn's per-epoch shuffle from the run's key, and
he also trains on the last, partial mini-batch when m does not divide n, and so does
this script (``drop_remainder=False``; with the default n 50,000 and m 10 there is none).

MNIST cannot be downloaded everywhere: ``--data-dir`` reads the four IDX files you
have, and ``--dataset fashion`` runs the same networks on Fashion-MNIST (where the
book's numbers do not apply). Per-epoch ``val_accuracy`` and ``test_accuracy`` (the
fraction of images whose largest output is the right digit) are in the run's
``metrics.jsonl``; its ``accuracy`` column is the same argmax accuracy on the training
mini-batches (``metrics=[metrics.accuracy]``: one-hot targets, whatever the cost).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import book, data, experiment, losses, metrics, nn, optim, train

DEFAULTS = {  # the book's settings for each network
    "network": {"hidden": 30, "eta": 3.0, "lmbda": 0.0, "init": "nielsen_large"},
    "network2": {"hidden": 100, "eta": 0.5, "lmbda": 5.0, "init": "nielsen"},
}
K = 10  # outputs


@dataclasses.dataclass(frozen=True)
class Config:
    network: Literal["network", "network2"] = experiment.option(
        "network", help="network.py (quadratic cost) or network2.py (cross-entropy + L2)")
    dataset: Literal["mnist", "fashion"] = experiment.option(
        "mnist", help="MNIST (the book's) or Fashion-MNIST")
    epochs: int = 30
    batch_size: int = experiment.option(10, help="mini-batch size m")
    hidden: int | None = experiment.option(None, help="hidden neurons (default: 30 / 100)")
    eta: float | None = experiment.option(None, help="Nielsen's eta (default: 3.0 / 0.5)")
    lmbda: float | None = experiment.option(None, help="Nielsen's L2 lambda (default: 0 / 5.0)")
    train_size: int = experiment.option(50000, help="training images; the next 10,000 of "
                                        "the training file are the validation data")
    engine: Literal["backprop", "jax"] = "backprop"
    data_dir: str | None = experiment.option(
        None, help="folder with the four IDX files (default: download and cache)",
        hashed=False)

    def __post_init__(self):
        # Fill the book's defaults in, so config.json and the hash hold the values used.
        for name, value in DEFAULTS[self.network].items():
            if name != "init" and getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if not 1 <= self.train_size <= 50000:
            raise ValueError(f"train_size must be in [1, 50000], got {self.train_size}")
        if self.network == "network" and self.lmbda:
            raise ValueError("network.py has no regularisation; use --network network2 "
                             f"for lmbda={self.lmbda}")


def load(cfg: Config):
    """The book's split: train, validation (next 10,000) and test; inputs in [0, 1]."""
    loader = data.load_mnist if cfg.dataset == "mnist" else data.load_fashion_mnist
    (x, y), (x_test, y_test) = loader(cfg.data_dir, flatten=True, scale="unit")
    y, y_test = y.astype(np.int32), y_test.astype(np.int32)
    return ((x[:cfg.train_size], y[:cfg.train_size]), (x[50000:], y[50000:]),
            (x_test, y_test))


def build(cfg: Config, n: int):
    """Model, Nielsen's cost, ``sgd(eta)`` and his L2 coefficient ``lambda / (2n)`` (on
    the weights: ``book.nielsen_l2``), which reproduce his update exactly."""
    init = DEFAULTS[cfg.network]["init"]
    layers = [nn.dense(cfg.hidden, init=init, bias_init="normal"), nn.sigmoid(),
              nn.dense(K, init=init, bias_init="normal")]
    if cfg.network == "network":
        model = nn.serial(*layers, nn.sigmoid())  # outputs a = sigmoid(z)
        loss = book.nielsen_quadratic
    else:
        model = nn.serial(*layers)  # outputs z; the loss applies the sigmoid
        loss = losses.binary_cross_entropy_with_logits.with_reduction("sum")
    return model, loss, optim.sgd(cfg.eta), cfg.lmbda / (2 * n)


def run(r: experiment.Run) -> dict[str, float]:
    cfg = r.config
    (x, y), (x_val, y_val), (x_test, y_test) = load(cfg)
    n = len(x)
    model, loss, opt, l2 = build(cfg, n)
    state = train.init_state(model, opt, r.key, (784,))
    penalty = book.nielsen_l2(state.params, cfg.lmbda, n)
    targets = np.eye(K, dtype=np.float32)[y]  # one-hot, as Nielsen's vectorized_result

    @jax.jit
    def correct(params, images, labels):
        return jnp.sum(jnp.argmax(model.apply(params, images), axis=1) == labels)

    xv, yv, xt, yt = map(jnp.asarray, (x_val, y_val, x_test, y_test))

    def accuracies(state):
        val, test = int(correct(state.params, xv, yv)), int(correct(state.params, xt, yt))
        print(f"  Nielsen style: {test} / {len(yt)} on the test data, {val} / {len(yv)} "
              "on the validation data")
        return {"val_accuracy": val / len(yv), "test_accuracy": test / len(yt)}

    print(f"{cfg.network} on {cfg.dataset}: [784, {cfg.hidden}, {K}], {loss!r}, eta "
          f"{cfg.eta}" + (f", lambda {cfg.lmbda} (l2 {l2:g} = lambda / 2n)" if l2 else ""))
    # Nielsen also trains on a last, partial mini-batch: keep it, so --train-size values
    # that batch_size does not divide match him too.
    state, history = r.fit(model, loss, opt, state, x, targets, epochs=cfg.epochs,
                           batch_size=cfg.batch_size, drop_remainder=False,
                           penalty=penalty, engine=cfg.engine,
                           metrics=[metrics.accuracy], epoch_metrics=accuracies)
    best = int(np.nanargmax(history["test_accuracy"]))
    result = {"test_accuracy": float(history["test_accuracy"][-1]),
              "val_accuracy": float(history["val_accuracy"][-1]),
              "best_test_accuracy": float(history["test_accuracy"][best]),
              "best_epoch": best + 1}
    r.log_result(**result)
    printed = {"network": "95.42%", "network2": "97.92%"}[cfg.network]
    print(f"final: test accuracy {100 * result['test_accuracy']:.2f}%, best "
          f"{100 * result['best_test_accuracy']:.2f}% at epoch {best + 1}"
          + (f" (the book, MNIST: {printed})" if cfg.dataset == "mnist" else ""))
    return result


if __name__ == "__main__":
    experiment.main("nielsen_mnist", Config, run, description=__doc__.split("\n")[0])
