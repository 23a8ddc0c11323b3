"""Checking a data set at the boundary, and cutting it into minibatches.

Everything here works on numpy arrays on the host; the training loop moves each
batch to the device. Shuffling takes an explicit ``key`` (a ``jax.random.key``) or
an integer ``seed``, never hidden global state: pass a new key each epoch, e.g.
``jax.random.fold_in(key, epoch)``, to get a new order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np


def _as_array(a: Any, name: str) -> np.ndarray:
    """``a`` as a numpy array with at least one (batch) axis, or a clear error."""
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as e:  # ragged rows
        raise ValueError(f"{name} must be a numeric array with one row per example, all rows "
                         f"of one shape; numpy cannot make one from it ({e}); fix: pad or "
                         "drop the rows that differ") from None
    if arr.ndim == 0:
        raise ValueError(
            f"{name} must be an array whose first axis runs over examples, got a scalar "
            f"{arr!r}; fix: pass one row per example, e.g. shape (N, ...)")
    if arr.dtype == object:
        raise ValueError(
            f"{name} must be a numeric array, got dtype=object (ragged rows or "
            f"non-numbers?); fix: build it with np.stack or np.asarray(..., dtype=float)")
    if arr.dtype.kind == "c":
        raise ValueError(
            f"{name} is complex ({arr.dtype}); funcnn trains on real numbers and would drop "
            f"the imaginary part silently; fix: pass {name}.real, or np.abs({name}), or "
            "stack the real and imaginary parts as features")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    """Raise when a float array holds NaN or inf, naming how many and where the first is."""
    if arr.dtype.kind in "biu":  # bool and integer arrays cannot hold NaN or inf
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} holds {int(bad.sum())} non-finite value(s) (NaN or inf), the first at "
            f"index {first}: {arr[first]!r}; fix: clean or drop those examples before "
            f"training (one NaN turns every weight into NaN after a step)")


def check_dataset(x: Any, y: Any, *, num_classes: int | None = None) -> None:
    """Validate a data set of inputs ``x`` and targets ``y``; raise ``ValueError`` if bad.

    Checks that both have a first axis of the same nonzero length, that float data
    holds no NaN or inf, and, when ``num_classes`` is given, that ``y`` is either
    integer labels in ``[0, num_classes)`` of shape (N,) or one-hot / probability
    rows of shape (N, num_classes).
    """
    x, y = _as_array(x, "x"), _as_array(y, "y")
    if len(x) != len(y):
        raise ValueError(
            f"x and y must hold the same number of examples, got len(x)={len(x)} "
            f"(shape {x.shape}) and len(y)={len(y)} (shape {y.shape}); fix: make row i of "
            f"x match row i of y")
    if len(x) == 0:
        raise ValueError("the data set is empty (0 examples); fix: pass at least one example")
    _check_finite(x, "x")
    _check_finite(y, "y")
    if num_classes is None:
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if y.ndim == 2:  # one-hot or probability rows
        if y.shape[1] != num_classes:
            raise ValueError(
                f"one-hot targets y must have shape (N, num_classes)=(N, {num_classes}), "
                f"got {y.shape}; fix: pass num_classes={y.shape[1]} or rebuild y")
        return
    if y.ndim != 1:
        raise ValueError(
            f"class labels y must have shape (N,) or one-hot (N, {num_classes}), got "
            f"{y.shape}; fix: y.reshape(-1) if it holds one label per example")
    if y.dtype.kind not in "iu":
        raise ValueError(
            f"class labels y must be integers, got dtype {y.dtype}; fix: "
            f"y.astype(np.int32) if they are whole numbers")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"class labels y must lie in [0, {num_classes}), but {int(bad.sum())} do not, "
            f"the first y[{i}]={y[i]}; fix: relabel to 0..{num_classes - 1} or pass the "
            f"right num_classes")


def batches_per_epoch(n: int, batch_size: int, *, drop_remainder: bool) -> int:
    """How many minibatches one pass over ``n`` examples makes: ``n // batch_size``,
    plus one smaller batch of the ``n % batch_size`` left over unless ``drop_remainder``.

    The keyword has no default on purpose: :func:`batches` keeps the remainder by default
    and ``train.fit`` drops it, so say which. ``train.fit(..., steps=k * B)`` with ``B``
    from here trains exactly as ``epochs=k``.
    """
    for name, value in (("n", n), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"batches_per_epoch: {name} must be a positive int; got {value!r}")
    if batch_size > n:
        raise ValueError(f"batches_per_epoch: batch_size must be in [1, {n}] (the number of "
                         f"examples); got {batch_size}")
    if not isinstance(drop_remainder, (bool, np.bool_)):
        raise TypeError(f"batches_per_epoch: drop_remainder must be True or False; got "
                        f"{drop_remainder!r}")
    return int(n // batch_size + (not drop_remainder and n % batch_size > 0))


def batches(x: Any, y: Any, batch_size: int, *, key: jax.Array | None = None,
            seed: int | None = None, drop_remainder: bool = False
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterate over ``(x_batch, y_batch)`` minibatches of ``batch_size`` examples.

    In order by default; shuffled when a ``key`` (``jax.random.key``) or an int
    ``seed`` is given. The last batch is smaller when ``batch_size`` does not divide
    the data set, unless ``drop_remainder=True`` drops it (handy under ``jit``, where
    every new shape compiles again). With ``key=jax.random.fold_in(jax.random.fold_in(
    state.key, 1), epoch)`` these are exactly the batches ``train.fit`` trains on in that
    epoch (the last one only with ``fit(..., drop_remainder=False)``). The data set is checked with
    :func:`check_dataset` when this is called, before the first batch.
    """
    x, y = _as_array(x, "x"), _as_array(y, "y")
    check_dataset(x, y)
    n = len(x)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or not 1 <= batch_size <= n:
        raise ValueError(
            f"batch_size must be an int in [1, {n}] (the data set holds {n} examples), "
            f"got {batch_size!r}; fix: pick a batch size no larger than the data set")
    if not isinstance(drop_remainder, (bool, np.bool_)):
        raise TypeError(f"drop_remainder must be True or False; got {drop_remainder!r}")
    if key is not None and seed is not None:
        raise ValueError("pass either key= or seed= to shuffle, not both")
    if key is not None:
        if not _is_key(key):
            raise TypeError(
                f"key must be a jax.random.key, got {_describe(key)}; fix: "
                f"key=jax.random.key(0), or seed=0 for an int seed")
        order = np.asarray(jax.random.permutation(key, n))
    elif seed is not None:
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) \
                or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}; fix: seed=0, or "
                             "key=jax.random.key(0)")
        order = np.random.default_rng(seed).permutation(n)
    else:
        order = None
    stop = n - n % batch_size if drop_remainder else n
    return _iterate(x, y, order, batch_size, stop)


def _is_key(key: Any) -> bool:
    """A typed key (``jax.random.key``) or a raw one (``jax.random.PRNGKey``: 2 uint32)."""
    if not isinstance(key, jax.Array):
        return False
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 0
    return key.dtype == np.uint32 and key.shape == (2,)


def _describe(value: Any) -> str:
    if isinstance(value, jax.Array):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return type(value).__name__


def _iterate(x: np.ndarray, y: np.ndarray, order: np.ndarray | None, batch_size: int,
             stop: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The generator behind :func:`batches` (kept apart so that checks run eagerly)."""
    for start in range(0, stop, batch_size):
        if order is None:
            rows = slice(start, start + batch_size)
        else:
            rows = order[start:start + batch_size]
        yield x[rows], y[rows]
