"""Handwritten digits with no download: scikit-learn's bundled 8x8 images, a small MLP.

    pip install funcnn[digits]        # scikit-learn, for the data set only
    python experiments/digits.py      # a few seconds on a laptop CPU

1,797 images of 8x8 pixels (values 0-16) are split 80/20 into training and test
sets (a fixed split, ``--split-seed``), scaled to [0, 1] and flattened to 64 inputs.
A 64-64-10 ReLU network is trained with Adam on softmax cross-entropy; the test
accuracy is printed (about 0.98) and recorded, with per-epoch metrics, a plot and
checkpoints, in ``runs/digits/<config hash>/`` by :mod:`funcnn.experiment`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from funcnn import data, experiment, losses, nn, optim, train


@dataclasses.dataclass(frozen=True)
class Config:
    hidden: int = experiment.option(64, help="neurons in the hidden layer")
    lr: float = experiment.option(1e-2, help="Adam learning rate")
    epochs: int = 30
    batch_size: int = 32
    test_fraction: float = 0.2
    split_seed: int = experiment.option(0, help="seed of the train/test split")

    def __post_init__(self):
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1), got {self.test_fraction}")


def run(r: experiment.Run) -> dict[str, float]:
    cfg = r.config
    (x, y), (x_test, y_test) = data.load_digits(test_fraction=cfg.test_fraction,
                                                seed=cfg.split_seed)
    x = x.reshape(len(x), -1).astype(np.float32) / 16.0
    x_test = x_test.reshape(len(x_test), -1).astype(np.float32) / 16.0
    y, y_test = y.astype(np.int32), y_test.astype(np.int32)

    model = nn.serial(nn.dense(cfg.hidden, init="he"), nn.relu(), nn.dense(10))
    opt = optim.adam(cfg.lr)
    loss = losses.softmax_cross_entropy
    state = train.init_state(model, opt, r.key, (64,))
    state, history = r.fit(model, loss, opt, state, x, y, epochs=cfg.epochs,
                           batch_size=cfg.batch_size, validation_data=(x_test, y_test))
    test = train.evaluate(model, loss, state.params, x_test, y_test)
    r.log_result(test_accuracy=test["accuracy"], test_loss=test["loss"])
    print(f"digits: test accuracy {test['accuracy']:.4f} on {len(y_test)} images "
          f"({len(y)} for training), test loss {test['loss']:.4f}")
    return test


if __name__ == "__main__":
    experiment.main("digits", Config, run, checkpoint_every=5,
                    description=__doc__.split("\n")[0])
