"""funcnn: neural networks you can read, trained at full JAX speed.

Modules, in the order data flows through them:

- :mod:`funcnn.data`: generated sets (spiral, vertical, sine), IDX / MNIST /
  Fashion-MNIST loaders with verified downloads, batching and checks.
- :mod:`funcnn.nn`: layers, each carrying ``init``, ``apply`` and its hand backward rule.
- :mod:`funcnn.metrics`: accuracy, MAE and the rest, reported beside the loss.
- :mod:`funcnn.losses`: losses written by hand, each with its gradient and metric.
- :mod:`funcnn.backprop`: the driver that runs those rules (and ``check``, the gradient
  checker in :mod:`funcnn.gradcheck`; ``as_custom_vjp``, the bridge to ``jax.grad``).
- :mod:`funcnn.optim`: hand-written optimizers and schedules, optax-shaped.
- :mod:`funcnn.diagnostics`: gradient-flow diagnostics (Nielsen ch. 5) recorded in ``fit``.
- :mod:`funcnn.train`: train state, train step, evaluate, and ``fit`` (compiled epochs).
- :mod:`funcnn.parallel`: data parallelism over a device mesh (``fit(..., mesh=...)``).
- :mod:`funcnn.distributed`: several processes (``jax.distributed``): input checks that
  fail on every process together, data held in parts, process 0 writing the files.
- :mod:`funcnn.sweep`: many configurations trained as one compiled program.
- :mod:`funcnn.checkpoint`: save and load pytrees without pickle.
- :mod:`funcnn.experiment`: run folders, manifests, metrics, resume, reproducibility.
- :mod:`funcnn.book`: the NNFS book's set-ups, reproduced exactly.
"""

from funcnn import (backprop, book, checkpoint, data, diagnostics, distributed, experiment,
                    gradcheck, losses, metrics, nn, optim, parallel, sweep, train)

__version__ = "0.1.0"
__all__ = ["data", "nn", "metrics", "losses", "backprop", "gradcheck", "optim", "diagnostics",
           "train", "parallel", "distributed",
           "sweep", "checkpoint", "experiment", "book", "__version__"]
