"""Small generated data sets from *Neural Networks from Scratch* (the ``nnfs`` package).

The book calls ``nnfs.init()``, which seeds numpy's *global* random state with 0 and
makes ``np.zeros`` and ``np.random.randn`` return float32. funcnn keeps no global
state, so these functions draw from an explicit ``np.random.RandomState`` (the
legacy generator behind ``np.random.seed``: same seed, same stream) and reproduce
the float32 rounding by hand. The result equals the book's arrays bit for bit:

    >>> X, y = spiral_data(100, 3)            # == nnfs after nnfs.init()
    >>> X.dtype, y.dtype
    (dtype('float32'), dtype('uint8'))

The book draws its weights right after the data from the same stream. Pass your own
``rng`` to continue it, and round each draw to float32 as ``nnfs.init()`` does:

    >>> rng = np.random.RandomState(0)
    >>> X, y = spiral_data(100, 3, rng=rng)
    >>> w1 = 0.01 * rng.randn(2, 3).astype(np.float32)   # the book's first weights
"""

from __future__ import annotations

import numpy as np

_F32 = np.float32


def _stream(seed: int | None, rng: np.random.RandomState | None) -> np.random.RandomState:
    """The random stream to draw from: ``rng`` if given, else a fresh one seeded ``seed``."""
    if rng is not None:
        if seed is not None:
            raise ValueError(
                "pass either seed= or rng=, not both: rng= continues an existing stream, "
                "seed= starts a new one")
        if not isinstance(rng, np.random.RandomState):
            raise TypeError(
                f"rng must be a np.random.RandomState (the legacy generator the book's "
                f"np.random.randn uses), got {type(rng).__name__}; fix: "
                f"rng = np.random.RandomState(0)")
        return rng
    if seed is not None and (isinstance(seed, (bool, np.bool_))
                             or not isinstance(seed, (int, np.integer))
                             or not 0 <= seed < 2**32):
        raise ValueError(f"seed must be an int in [0, 2**32) (numpy's RandomState seeds), "
                         f"got {seed!r}")
    return np.random.RandomState(0 if seed is None else seed)


def _check_counts(samples: int, classes: int | None = None) -> None:
    """Clear errors for a non-positive or non-integer ``samples`` / ``classes``."""
    for name, value in (("samples", samples), ("classes", classes)):
        if name == "classes" and classes is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if classes is not None and classes > 256:
        raise ValueError(
            f"classes must be at most 256 (labels are uint8, as in nnfs), got {classes}")


def spiral_data(samples: int, classes: int, *, seed: int | None = None,
                rng: np.random.RandomState | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` interleaved spiral arms of ``samples`` points each (nnfs ``spiral_data``).

    Returns ``X`` of shape (samples * classes, 2) float32 and ``y`` of shape
    (samples * classes,) uint8, class by class. ``seed`` defaults to 0, the seed
    ``nnfs.init()`` uses; ``rng`` continues an existing ``RandomState`` stream instead.
    """
    _check_counts(samples, classes)
    rng = _stream(seed, rng)
    X = np.zeros((samples * classes, 2), dtype=_F32)
    y = np.zeros(samples * classes, dtype=np.uint8)
    for c in range(classes):
        rows = slice(samples * c, samples * (c + 1))
        r = np.linspace(0.0, 1, samples)                      # radius, float64
        noise = rng.randn(samples).astype(_F32) * _F32(0.2)   # float32, as after nnfs.init()
        t = np.linspace(c * 4, (c + 1) * 4, samples) + noise  # angle, float64 again
        X[rows] = np.c_[r * np.sin(t * 2.5), r * np.cos(t * 2.5)]  # rounded to float32
        y[rows] = c
    return X, y


def vertical_data(samples: int, classes: int, *, seed: int | None = None,
                  rng: np.random.RandomState | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` Gaussian blobs side by side along x (nnfs ``vertical_data``).

    Class ``c`` is centred at (c / 3, 0.5) with standard deviation 0.1. Returns
    ``X`` (samples * classes, 2) float32 and ``y`` (samples * classes,) uint8.
    """
    _check_counts(samples, classes)
    rng = _stream(seed, rng)
    X = np.zeros((samples * classes, 2), dtype=_F32)
    y = np.zeros(samples * classes, dtype=np.uint8)
    for c in range(classes):
        rows = slice(samples * c, samples * (c + 1))
        # Two draws, x then y, in the book's order; arithmetic in float32 as after nnfs.init().
        x0 = rng.randn(samples).astype(_F32) * _F32(0.1) + _F32(c / 3)
        x1 = rng.randn(samples).astype(_F32) * _F32(0.1) + _F32(0.5)
        X[rows] = np.c_[x0, x1]
        y[rows] = c
    return X, y


def sine_data(samples: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """One period of a sine for regression (nnfs ``sine_data``); no randomness.

    ``X`` holds ``samples`` evenly spaced points in [0, 1) and ``y = sin(2 pi X)``,
    both of shape (samples, 1) and float64, exactly as nnfs returns them
    (``nnfs.init()`` does not touch ``np.arange`` or ``np.sin``).
    """
    _check_counts(samples)
    X = np.arange(samples).reshape(-1, 1) / samples
    y = np.sin(2 * np.pi * X).reshape(-1, 1)
    return X, y
