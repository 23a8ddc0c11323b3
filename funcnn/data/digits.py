"""scikit-learn's bundled 8x8 handwritten digits: a data set that needs no download.

1,797 images of 8x8 pixels with values 0-16, digits 0-9. scikit-learn is an
optional extra (``pip install funcnn[digits]``), imported only when called.
"""

from __future__ import annotations

import numpy as np


def load_digits(*, test_fraction: float = 0.2, seed: int = 0
                ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The 8x8 digits split into ``(x_train, y_train), (x_test, y_test)``.

    Images are uint8 of shape (N, 8, 8) with values 0-16 (not 0-255: divide by 16
    to scale to [0, 1]); labels uint8 0-9. The split is a random permutation drawn
    from ``seed``, so the same seed always gives the same split.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as err:
        raise ImportError(
            "load_digits needs scikit-learn, an optional extra of funcnn; fix: "
            "pip install funcnn[digits]  (or: pip install scikit-learn)") from err
    if isinstance(test_fraction, (bool, np.bool_)) or not isinstance(
            test_fraction, (int, float, np.integer, np.floating)) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    bunch = sklearn_load_digits()
    x = bunch.images.astype(np.uint8)  # whole numbers 0..16 stored as float64
    y = bunch.target.astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])
