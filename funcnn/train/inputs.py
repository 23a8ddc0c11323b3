"""Data at the boundary: checked once, placed on the device (``DeviceData``)."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import nn
from funcnn.data import check_dataset
from funcnn.losses import Loss

Array = jax.Array


class DeviceData(NamedTuple):
    """A data set checked once and placed on the device, for repeated ``fit`` calls.

    Made by :func:`device_data`. ``fit`` and ``evaluate`` accept it in place of
    ``x`` (with ``y=None``) and skip the checks and the host-to-device copy, which for
    60,000 MNIST images cost about as much as a third of an epoch on a CPU.
    """

    x: Array
    y: Array
    num_classes: int | None


@functools.lru_cache(maxsize=64)
def _num_classes(model: nn.Layer, params_shapes: Any, example_shape: tuple[int, ...]) -> int:
    treedef, leaves = params_shapes
    params = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])
    x = jax.ShapeDtypeStruct((1,) + example_shape, leaves[0][1] if leaves else jnp.float32)
    return int(jax.eval_shape(model.apply, params, x).shape[-1])


def _classes_of(model: nn.Layer, loss: Callable, params: Any, x: Any, y: Any) -> int | None:
    """The number of classes integer labels must lie in, or None when they are not
    class labels.

    A :class:`~funcnn.losses.Loss` says so (``targets="classes"``). For a plain function
    integer labels of shape ``(N,)`` against an output of ``C >= 2`` columns can only be
    class indices, so they are checked too (JAX would clamp a wrong one silently).
    """
    if not jnp.issubdtype(y.dtype, jnp.integer) or y.ndim != 1:
        return None
    if isinstance(loss, Loss) and loss.targets != "classes":
        return None
    leaves, treedef = jax.tree.flatten(params)
    shapes = (treedef, tuple((tuple(a.shape), jnp.dtype(a.dtype)) for a in leaves))
    classes = _num_classes(model, shapes, tuple(x.shape[1:]))
    return classes if isinstance(loss, Loss) or classes >= 2 else None


@jax.jit
def _device_summary(x, y):
    """Scalars that say whether device data is fine (finite, label range)."""
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else True
    if jnp.issubdtype(y.dtype, jnp.inexact):
        return finite & jnp.all(jnp.isfinite(y)), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)
    return finite, jnp.min(y).astype(jnp.int32), jnp.max(y).astype(jnp.int32)


def device_data(x: Any, y: Any, *, num_classes: int | None = None,
                dtype: Any = jnp.float32) -> DeviceData:
    """Checks ``(x, y)`` and puts it on the device as ``dtype`` inputs and int32 labels.

    Checks: the same number of examples, no NaN or inf, integer labels in
    ``[0, num_classes)``. Arrays already on the device are checked there (three
    scalars come back), numpy arrays on the host; a failure gives the detailed message
    of :func:`funcnn.data.check_dataset`.
    """
    if isinstance(x, jax.Array) and isinstance(y, jax.Array) and len(x) == len(y) and len(x):
        finite, lo, hi = jax.device_get(_device_summary(x, y))
        ok = bool(finite) and (num_classes is None or
                               not jnp.issubdtype(y.dtype, jnp.integer) or
                               (lo >= 0 and hi < num_classes))
        if not ok:
            check_dataset(np.asarray(x), np.asarray(y), num_classes=num_classes)
    else:
        check_dataset(np.asarray(x), np.asarray(y), num_classes=num_classes)
    _check_range(x, dtype, "x")
    _warn_unscaled_pixels(x)
    xd = jnp.asarray(x, dtype)
    # y's dtype without indexing y (an array placed on a mesh cannot be sliced outside it)
    y_dtype = y.dtype if hasattr(y, "dtype") else np.asarray(y).dtype
    yd = jnp.asarray(y, jnp.int32) if jnp.issubdtype(y_dtype, jnp.integer) \
        else jnp.asarray(y, dtype)
    return DeviceData(xd, yd, num_classes)


def _warn_unscaled_pixels(x: Any) -> None:
    """uint8 inputs above 1 are raw pixels (0-255), as the image loaders give them by
    default: a network initialised for inputs of order 1 trains badly on them (MNIST:
    about chance accuracy), without any error. Warns once per call site."""
    if not hasattr(x, "dtype") or jnp.dtype(x.dtype) != jnp.uint8 or not np.size(x):
        return
    top = int(jnp.max(x)) if isinstance(x, jax.Array) else int(np.max(x))
    if top > 1:
        level, frame = 1, sys._getframe()  # point the warning at the caller's line
        while frame is not None and frame.f_globals.get("__name__", "").startswith("funcnn."):
            frame, level = frame.f_back, level + 1
        warnings.warn(f"the inputs x are uint8 with values up to {top}: raw pixels? "
                      "Networks train badly on unscaled inputs; scale them, e.g. x / 255, "
                      "or load with data.load_mnist(scale='unit')", UserWarning,
                      stacklevel=level)


def _check_range(x: Any, dtype: Any, name: str) -> None:
    """Float data wider than ``dtype`` must fit in it (1e39 would become inf in float32)."""
    if not hasattr(x, "dtype") or jnp.dtype(x.dtype).kind != "f" or \
            jnp.dtype(x.dtype).itemsize <= jnp.dtype(dtype).itemsize:
        return
    big = float(np.max(np.abs(np.asarray(x)))) if np.size(x) else 0.0
    limit = float(jnp.finfo(dtype).max)
    if big > limit:
        raise ValueError(f"{name} holds values up to {big:.3g}, beyond the {jnp.dtype(dtype).name} "
                         f"range of the parameters (max {limit:.3g}); they would become inf. "
                         "Fix: scale the data (e.g. standardise it), or use float64 "
                         "parameters with jax_enable_x64.")


def prepare_data(model: nn.Layer, loss: Callable, params: Any, x: Any,
                 y: Any = None, *, where: str = "prepare_data") -> tuple[Array, Array]:
    """Checks a data set at the boundary and returns it on the device, as ``fit`` does.

    ``x`` may be a :class:`DeviceData` (then ``y`` is None): only its class count is
    checked against the model. Inputs take the parameters' float dtype. ``params`` must
    be this model's for these inputs (:func:`funcnn.nn.check_params`). ``where`` (the
    caller, e.g. ``"fit (validation_data)"``) begins the message of a shape error.
    """
    shape = np.shape(x.x if isinstance(x, DeviceData) else x)
    nn.check_params(model, params, shape[1:], where, batch=shape[0] if shape else 1)
    dtype = jax.tree.leaves(params)[0].dtype
    if isinstance(x, DeviceData):
        if y is not None:
            raise ValueError("pass the labels inside DeviceData and y=None")
        data = x
        need = _classes_of(model, loss, params, data.x, data.y)
        if need is not None and data.num_classes != need:
            raise ValueError(f"this DeviceData was checked for num_classes="
                             f"{data.num_classes}, but the model has {need} outputs; make "
                             f"it with train.device_data(x, y, num_classes={need})")
        if data.x.dtype != dtype:
            data = data._replace(x=data.x.astype(dtype))
    else:
        if y is None:
            raise ValueError(f"{where}: y is missing (None): pass the labels or targets "
                             "beside x, one row per example, or x as a train.DeviceData "
                             "holding both")
        if not hasattr(y, "dtype"):
            y = np.asarray(y)
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        data = device_data(x, y, num_classes=_classes_of(model, loss, params, x, y),
                           dtype=dtype)
    return data.x, data.y
