"""funcnn: neural networks you can read, trained at full JAX speed.

Modules, in the order data flows through them:

- :mod:`funcnn.data`: generated sets (spiral, vertical, sine), IDX / MNIST /
  Fashion-MNIST loaders with verified downloads, batching and checks.
- :mod:`funcnn.nn`: layers as pure ``(init, apply)`` pairs and ``serial``.
- :mod:`funcnn.losses`: losses and metrics written by hand.
- :mod:`funcnn.backprop`: the hand-derived backward rule of every layer and loss.
- :mod:`funcnn.optim`: hand-written optimizers and schedules, optax-shaped.
- :mod:`funcnn.train`: train state, train step, evaluate, and ``fit`` (compiled epochs).
- :mod:`funcnn.sweep`: many configurations trained as one compiled program.
- :mod:`funcnn.checkpoint`: save and load pytrees without pickle.
- :mod:`funcnn.experiment`: run folders, manifests, metrics, resume, reproducibility.
- :mod:`funcnn.book`: the NNFS book's set-ups, reproduced exactly.
"""

from funcnn import backprop, book, checkpoint, data, experiment, losses, nn, optim, sweep, train

__version__ = "0.1.0"
__all__ = ["data", "nn", "losses", "backprop", "optim", "train", "sweep", "checkpoint",
           "experiment", "book", "__version__"]
