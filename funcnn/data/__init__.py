"""Data for funcnn: generated sets, IDX files, MNIST / Fashion-MNIST, batching.

Everything returns numpy arrays on the host; the training loop moves them to the
device. Modules:

- ``generated``: the book's spiral, vertical and sine sets, equal to ``nnfs``.
- ``batching``: :func:`check_dataset`, the :func:`batches` iterator and
  :func:`batches_per_epoch`.
- ``idx``: :func:`read_idx` / :func:`write_idx` for the IDX format.
- ``mnist``: verified, cached loaders for MNIST and Fashion-MNIST.
- ``digits``: scikit-learn's bundled 8x8 digits (optional extra).
"""

from .batching import batches, batches_per_epoch, check_dataset
from .digits import load_digits
from .generated import sine_data, spiral_data, vertical_data
from .idx import encode_idx, read_idx, write_idx
from .mnist import (FASHION_MNIST, MNIST, SCALES, ChecksumError, DatasetSpec, IdxFile,
                    default_cache_dir, load_fashion_mnist, load_idx_dataset, load_mnist,
                    prepare_images)

__all__ = [
    "spiral_data", "vertical_data", "sine_data",
    "check_dataset", "batches", "batches_per_epoch",
    "read_idx", "write_idx", "encode_idx",
    "IdxFile", "DatasetSpec", "ChecksumError", "MNIST", "FASHION_MNIST",
    "default_cache_dir", "load_idx_dataset", "load_mnist", "load_fashion_mnist",
    "prepare_images", "SCALES", "load_digits",
]
