"""Nielsen chapter 5: why deep networks are hard to train (the vanishing gradient).

    python experiments/nielsen_vanishing.py --data-dir /path/to/mnist --hidden-layers 4
    python experiments/nielsen_vanishing.py --data-dir DIR --all      # the whole chapter

The book's runs (``network2.py``): [784, 30, ..., 30, 10] with 1 to 4 hidden layers
of 30 sigmoid neurons, the cross-entropy cost, L2 lambda 5.0, eta 0.1, mini-batches of
10, 30 epochs, weights N(0, 1/n_in) and biases N(0, 1). Nielsen's validation
accuracies: 96.48 / 96.90 / 96.57 / 96.53 %: depth does not help.

Why: the "speed of learning" of a layer, the norm of the cost's gradient with respect
to its biases, falls layer by layer towards the input. On 1,000 training images at
initialisation (batch gradient), Nielsen measures 0.07 / 0.31 with two hidden
layers, 0.012 / 0.060 / 0.283 with three and 0.003 / 0.017 / 0.070 / 0.285 with four:
the first hidden layer learns about 100 times slower than the last. Each run prints
its own initial speeds (Nielsen's draw is random, so compare magnitudes and the
first-to-last ratio, not digits), and ``fit(..., diagnostics=...)`` records them per
epoch while training: ``speed_of_learning.png`` and ``diagnostics.md`` in the run
folder, with the fraction of saturated sigmoid units per layer.

``--activation relu --init he`` runs the same nets with what fixed it: ReLU hidden
units and weights scaled to keep the signal's variance; ``--init glorot`` keeps the
sigmoids and only rescales the initial weights (and zeroes the biases). ``--all`` runs
the three families at all four depths.

The gradients are those of funcnn's mean cost; Nielsen's cross-entropy sums over the
K = 10 outputs, so the speeds printed here are multiplied by K to be his. The learning
rate and L2 map onto funcnn as in ``nielsen_mnist.py`` (lr = eta K, l2 = lambda/(2nK)).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import backprop, diagnostics, experiment, losses, metrics, nn, optim, train
from nielsen_mnist import K, load

BOOK_ACCURACY = {1: 96.48, 2: 96.90, 3: 96.57, 4: 96.53}
BOOK_SPEEDS = {1: None, 2: (0.07, 0.31), 3: (0.012, 0.060, 0.283),
               4: (0.003, 0.017, 0.070, 0.285)}
INITS = {"nielsen": ("nielsen", "normal"), "glorot": ("glorot", 0.0), "he": ("he", 0.0)}


@dataclasses.dataclass(frozen=True)
class Config:
    hidden_layers: int = experiment.option(2, help="hidden layers of 30 neurons (1 to 4)")
    activation: Literal["sigmoid", "relu"] = "sigmoid"
    init: Literal["nielsen", "glorot", "he"] = experiment.option(
        "nielsen", help="nielsen: w ~ N(0, 1/n_in), b ~ N(0, 1); glorot / he: b = 0")
    epochs: int = 30
    batch_size: int = 10
    eta: float = 0.1
    lmbda: float = 5.0
    hidden: int = 30
    train_size: int = experiment.option(50000, help="training images (the next 10,000 "
                                        "of the training file are the validation data)")
    dataset: Literal["mnist", "fashion"] = "mnist"
    engine: Literal["backprop", "mixed", "jax"] = "backprop"
    data_dir: str | None = experiment.option(
        None, help="folder with the four IDX files (default: download and cache)",
        hashed=False)

    def __post_init__(self):
        if not 1 <= self.hidden_layers <= 4:
            raise ValueError(f"hidden_layers must be 1 to 4; got {self.hidden_layers}")
        if not 1000 <= self.train_size <= 50000:
            raise ValueError(f"train_size must be in [1000, 50000]; got {self.train_size}")


def build(cfg: Config):
    init, bias = INITS[cfg.init]
    act = nn.sigmoid if cfg.activation == "sigmoid" else nn.relu
    layers = []
    for _ in range(cfg.hidden_layers):
        layers += [nn.dense(cfg.hidden, init=init, bias_init=bias), act()]
    return nn.serial(*layers, nn.dense(K, init="nielsen" if cfg.init == "nielsen" else
                                       "glorot", bias_init=bias))


def initial_speeds(model, params, x, targets) -> list[float]:
    """Nielsen's speed of learning of each hidden layer at initialisation: ||dC/db||
    of his cost (K times funcnn's mean) on the given images, as a batch gradient."""
    g = jax.jit(backprop.grad(model, losses.binary_cross_entropy_with_logits))(
        params, jnp.asarray(x), jnp.asarray(targets))
    return [K * float(jnp.linalg.norm(g[i].b)) for i in range(0, len(g) - 1, 2)]


def run(r: experiment.Run) -> dict[str, float]:
    cfg = r.config
    (x, y), (x_val, y_val), _ = load(cfg)
    n = len(x)
    targets = np.eye(K, dtype=np.float32)[y]
    model = build(cfg)
    opt = optim.sgd(cfg.eta * K)
    state = train.init_state(model, opt, r.key, (784,))
    speeds = initial_speeds(model, state.params, x[:1000], targets[:1000])
    book = BOOK_SPEEDS[cfg.hidden_layers]
    print(f"[784, {', '.join([str(cfg.hidden)] * cfg.hidden_layers)}, 10] {cfg.activation}, "
          f"init {cfg.init}: initial speed of learning per hidden layer (1,000 images): "
          + " / ".join(f"{s:.3g}" for s in speeds)
          + (f"; first/last {speeds[-1] / speeds[0]:.0f}x" if len(speeds) > 1 else "")
          + (f" (Nielsen: {' / '.join(map(str, book))})" if book and cfg.init == "nielsen"
             and cfg.activation == "sigmoid" else ""))
    l2 = cfg.lmbda / (2 * n * K)
    penalty = train.dense_penalty(state.params, weight_l2=l2) if l2 else None
    names = ["grad_norm", "update_ratio",
             "saturation" if cfg.activation == "sigmoid" else "dead_units"]
    state, history = r.fit(model, losses.binary_cross_entropy_with_logits, opt, state, x,
                           targets, epochs=cfg.epochs, batch_size=cfg.batch_size,
                           penalty=penalty, engine=cfg.engine, metrics=[metrics.accuracy],
                           validation_data=(x_val, np.eye(K, dtype=np.float32)[y_val]),
                           diagnostics=names)
    try:
        fig = diagnostics.plot_speed_of_learning(
            history, title=f"{cfg.hidden_layers} hidden layers, {cfg.activation}, {cfg.init}")
        fig.savefig(r.path("speed_of_learning.png"), dpi=120)
    except ImportError:
        pass
    val = np.asarray(history["val_accuracy"])
    result = {"val_accuracy": float(val[-1]), "best_val_accuracy": float(val.max()),
              "best_epoch": int(val.argmax()) + 1,
              **{f"initial_speed_{i + 1}": s for i, s in enumerate(speeds)}}
    r.log_result(**result)
    print(f"validation accuracy {100 * val[-1]:.2f}% (best {100 * val.max():.2f}% at epoch "
          f"{result['best_epoch']})" + (f"; Nielsen: {BOOK_ACCURACY[cfg.hidden_layers]}%"
                                        if cfg.activation == "sigmoid" and
                                        cfg.init == "nielsen" else ""))
    return result


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--all" in argv:  # the chapter: 1-4 hidden layers, sigmoid; ReLU + He; Glorot
        argv.remove("--all")
        for extra in (["--activation", "sigmoid", "--init", "nielsen"],
                      ["--activation", "relu", "--init", "he"],
                      ["--activation", "sigmoid", "--init", "glorot"]):
            for depth in (1, 2, 3, 4):
                experiment.main("nielsen_vanishing", Config, run,
                                [*argv, *extra, "--hidden-layers", str(depth)],
                                description=__doc__.split("\n")[0])
    else:
        experiment.main("nielsen_vanishing", Config, run, description=__doc__.split("\n")[0])
