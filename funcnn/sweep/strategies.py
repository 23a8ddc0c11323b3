"""Choosing how to run a sweep: the strategies, their defaults, and CPU devices."""

from __future__ import annotations

import math
import os

import jax
import numpy as np

STRATEGIES = ("auto", "vmap", "chunked", "sharded", "loop")


def default_strategy(backend: str | None = None,
                     device_count: int | None = None) -> tuple[str, int | None]:
    """``(strategy, chunk_size)`` that ``run(strategy="auto")`` uses on ``backend``.

    From measurements (see the :mod:`funcnn.sweep` docstring): on a CPU a loop over
    configurations inside one program per device beats vmap, and several CPU devices
    run in parallel; on accelerators vmap fills the device.
    """
    backend = jax.default_backend() if backend is None else backend
    n = jax.device_count(backend) if device_count is None else int(device_count)
    if backend == "cpu":
        return ("sharded", 1) if n > 1 else ("chunked", 1)
    return ("sharded", None) if n > 1 else ("vmap", None)


def use_cpu_devices(n: int | None = None) -> int:
    """Makes JAX present ``n`` CPU devices (default: one per usable core); returns ``n``.

    A sweep on a CPU runs its devices in parallel, so this is what lets it use every
    core. It sets ``jax_num_cpu_devices``, which JAX reads when its backends start:
    call it right after ``import jax``, before any array is created. The same can be
    done from outside with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``.
    Raises RuntimeError when JAX has already started.
    """
    if n is None:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            n = os.cpu_count() or 1
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"use_cpu_devices: n must be a positive int; got {n!r}")
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except RuntimeError as e:
        raise RuntimeError(
            "use_cpu_devices: JAX has already started (an array was created or "
            "jax.devices() was called), so its CPU device count is fixed. Call "
            "sweep.use_cpu_devices() right after `import jax`, or run with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n}. ({e})") from None
    return int(n)


def _resolve_strategy(strategy, chunk_size, n_configs, devices):
    if strategy not in STRATEGIES:
        raise ValueError(f"sweep.run: strategy must be one of {STRATEGIES}; got {strategy!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(
            chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"sweep.run: chunk_size must be an int >= 1 (configurations "
                         f"vmapped at a time), or None; got {chunk_size!r}")
    backend = devices[0].platform
    note = ""
    if strategy == "auto":
        strategy, default_chunk = default_strategy(backend, len(devices))
        note = f"auto on {backend} with {len(devices)} device(s)"
        if backend == "cpu" and len(devices) == 1 and (os.cpu_count() or 1) > 1:
            note += ("; call sweep.use_cpu_devices() right after `import jax` to run on "
                     "every core")
        if chunk_size is None:
            chunk_size = default_chunk
        elif strategy == "vmap":
            strategy = "chunked"
    elif strategy in ("vmap", "loop"):
        if chunk_size is not None:
            raise ValueError(f"sweep.run: chunk_size applies to the 'chunked' and "
                             f"'sharded' strategies, not {strategy!r}; drop it or pick "
                             "strategy='chunked'")
    elif strategy == "chunked" and chunk_size is None:
        chunk_size = 1 if backend == "cpu" else max(1, math.ceil(n_configs / 4))
    return strategy, (None if chunk_size is None else int(chunk_size)), note
