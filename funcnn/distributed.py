"""Several processes, one program: what ``fit``, sweeps and run folders need when JAX
runs as a multi-controller job (``jax.distributed.initialize()``).

JAX's model is SPMD across processes: every process runs the same Python program,
and a jitted computation over a mesh whose devices belong to several processes runs as
one program on all of them, its collectives (the gradient all-reduce) crossing the
network. funcnn adds nothing to that runtime. What it adds are the checks that make a
mistake an error instead of a hang or a silent divergence, and the few host-side steps
that differ when not every device is this process's own:

* :func:`checked_together`: every process must call ``fit`` (or ``sweep.run``) with
  the same settings, the same data and the same initial state, and a check that fails
  on one process must stop them all; otherwise one process waits forever in a
  collective that another never reaches, or trains something else. Each process runs
  its checks, then all exchange (one small all-gather) whether they passed and hashes
  of what must agree, and every process raises the same error, naming what differs
  and where, before anything runs.
* :func:`gather_processes`: a data set held in parts, one per process, becomes the
  whole set (the parts in process order) on every process.
* :func:`global_array` and :func:`to_host`: arrays placed on, and fetched from, devices
  of other processes.
* :func:`is_main`: only process 0 writes run folders and checkpoints.

With one process each of these is free: no exchange, no copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, Sharding

__all__ = ["is_main", "spans_processes", "check_all_processes", "layout",
           "layout_key", "checked_together", "Agreement", "fingerprint",
           "gather_processes", "global_array", "local", "to_host", "barrier"]


def is_main() -> bool:
    """Whether this is process 0, the one that writes files (always True alone)."""
    return jax.process_index() == 0


def spans_processes(devices: Any) -> bool:
    """Whether ``devices`` (a mesh, a sharding or an iterable of devices) include a
    device of another process than this one."""
    if devices is None:
        return False
    if isinstance(devices, Mesh):
        devices = devices.devices.flat
    elif isinstance(devices, Sharding):
        devices = devices.device_set
    return any(d.process_index != jax.process_index() for d in devices)


def check_all_processes(devices: Any, where: str) -> None:
    """A ValueError unless ``devices`` (a mesh or devices) that span processes include
    devices of every process: each process must take part in a program over several
    processes, and one without devices in it could not."""
    if not spans_processes(devices):
        return
    if isinstance(devices, Mesh):
        devices = devices.devices.flat
    have = sorted({d.process_index for d in devices})
    if len(have) != jax.process_count():
        raise ValueError(
            f"{where}: the mesh (or device list) holds devices of processes {have} of the "
            f"{jax.process_count()} processes, and this is process {jax.process_index()}; "
            "a program over several processes needs devices of every process. Build it "
            "from all of them, e.g. jax.make_mesh((jax.device_count(),), ('data',)), or use "
            "only this process's (jax.local_devices()).")


def layout(mesh: Any = None) -> dict[str, Any]:
    """The run's layout as manifests record it: process count, device count (all
    processes) and, with a mesh, its axes and their sizes."""
    out: dict[str, Any] = {"process_count": jax.process_count(),
                           "device_count": jax.device_count()}
    if mesh is not None:
        out["mesh"] = {str(name): int(size) for name, size in mesh.shape.items()}
    return out


def layout_key(layout: dict | None) -> tuple:
    """What of a recorded :func:`layout` decides the order in which data-parallel sums
    add, so what two runs must share to be bitwise equal: the process count and the
    mesh (None: no mesh). A missing record reads as one process without a mesh."""
    layout = layout or {}
    return (layout.get("process_count", 1), layout.get("mesh"))


# --------------------------------------------------------------------------------------
# Agreement across processes
# --------------------------------------------------------------------------------------

def fingerprint(value: Any) -> str:
    """A hash of ``value``: arrays and pytrees of them by shape, dtype and bytes (typed
    PRNG keys by their key data), anything else by ``repr``."""
    h = hashlib.blake2b(digest_size=16)
    leaves, treedef = jax.tree.flatten(value)
    h.update(repr(treedef).encode())
    for leaf in leaves:
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
            a = np.ascontiguousarray(to_host(leaf))
            h.update(f"{a.shape}{a.dtype}".encode())
            h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
        else:
            h.update(repr(leaf).encode())
    return h.hexdigest()


class Agreement:
    """What :func:`checked_together` compares across processes: named values and what
    to do when one differs."""

    def __init__(self) -> None:
        self.items: dict[str, Any] = {}
        self.fixes: dict[str, str] = {}

    def same(self, name: str, value: Any, fix: str = "pass the same value on every process"
             ) -> None:
        """``value`` must be the same on every process (by :func:`fingerprint`)."""
        self.items[name] = value
        self.fixes[name] = fix


_BLOB = 8192  # bytes per process in the exchange: an error message and the hashes


@contextlib.contextmanager
def checked_together(where: str, enabled: bool = True) -> Iterator[Agreement]:
    """Runs a block of input checks so that all processes fail together or go on
    together.

    Inside the block the caller checks its inputs (raising as usual) and names with
    ``agree.same(name, value)`` what must be equal on every process. On leaving it,
    every process sends the others, in one all-gather, whether its checks raised (and
    the message) and the hashes of its named values. Then:

    * a process whose own check raised re-raises its error;
    * every other process raises a ValueError quoting the first failed process's
      message, instead of waiting forever in the collective that process never reaches;
    * otherwise, a named value that differs raises the same ValueError everywhere,
      naming it, which processes agree, and the fix.

    With one process (or ``enabled=False``) it is a plain block: errors pass through and
    nothing is compared.
    """
    agree = Agreement()
    error: BaseException | None = None
    try:
        yield agree
    except Exception as e:  # noqa: BLE001 (re-raised below, after the exchange)
        error = e
    if not enabled or jax.process_count() == 1:
        if error is not None:
            raise error
        return
    mine = {"error": None if error is None else f"{type(error).__name__}: {error}",
            "items": {} if error is not None else
            {name: [fingerprint(v), _shown(v)] for name, v in agree.items.items()}}
    blob = json.dumps(mine).encode()
    if len(blob) > _BLOB and mine["error"]:  # a long message: keep its start
        mine["error"] = mine["error"][:_BLOB // 4] + " ..."
        blob = json.dumps(mine).encode()
    if len(blob) > _BLOB:  # many long settings: compare their hashes only
        mine["items"] = {name: [d, None] for name, (d, _) in mine["items"].items()}
        blob = json.dumps(mine).encode()
    buf = np.zeros(_BLOB, np.uint8)
    buf[:len(blob)] = np.frombuffer(blob, np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(buf))  # (P, _BLOB)
    seen = [json.loads(bytes(row).rstrip(b"\0").decode(errors="replace"))
            for row in everyone]
    if error is not None:
        raise error
    failed = [p for p, s in enumerate(seen) if s["error"]]
    if failed:
        p = failed[0]
        raise ValueError(f"{where}: process {p} of {len(seen)} failed its input checks "
                         f"with: {seen[p]['error']} (this process's inputs passed; every "
                         "process stops, and nothing was run)")
    bad = []
    for name in agree.items:
        groups: dict[str, list[int]] = {}
        for p, s in enumerate(seen):
            groups.setdefault(s["items"][name][0], []).append(p)
        if len(groups) > 1:
            shown = [seen[ps[0]]["items"][name][1] for ps in groups.values()]
            split = ("; " if any(v is not None for v in shown) else " vs ").join(
                (f"process {ps[0]}" if len(ps) == 1 else f"processes {ps}")
                + (f": {v}" if v is not None else "") for ps, v in zip(groups.values(), shown))
            bad.append(f"{name} is not the same on every process ({split}); "
                       f"{agree.fixes[name]}")
    if bad:
        raise ValueError(
            f"{where}: with several processes (jax.process_count() = {len(seen)}) every "
            "process must run the same program on the same inputs, but "
            + "; ".join(bad) + ". Nothing was run.")


def _shown(value: Any) -> str | None:
    """A short ``repr`` of a setting for the error message; None for data."""
    if any(isinstance(v, (np.ndarray, jax.Array)) for v in jax.tree.leaves(value)):
        return None
    text = repr(value)
    return text if len(text) <= 120 else None


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (alone: returns)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# --------------------------------------------------------------------------------------
# Data and arrays across processes
# --------------------------------------------------------------------------------------

def gather_processes(x: Any, y: Any = None, *, where: str = "gather_processes"
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Each process's part of a data set -> the whole set on every process.

    For data loaded in parts (process ``p`` reads shard ``p`` of the files): the
    whole set is the parts concatenated in process order, as
    ``jax.make_array_from_process_local_data`` orders them. Every part must have the
    same number of examples and the same example shape and dtype; otherwise every
    process raises a ValueError naming each process's shape. Alone it returns ``x, y``
    as NumPy arrays. Pass the result to ``fit``, ``evaluate`` or ``sweep.run`` as the
    global data set::

        x, y = distributed.gather_processes(x_part, y_part)
        state, history = train.fit(..., x, y, mesh=mesh)

    ``fit`` keeps the whole set on every device (it draws shuffled minibatches from it
    on device), so this costs no more memory than passing the whole set.
    """
    x = np.asarray(to_host(x))
    y = None if y is None else np.asarray(to_host(y))
    if jax.process_count() == 1:
        return x, y
    parts = [x] if y is None else [x, y]
    meta = np.array([[a.ndim, a.shape[0] if a.ndim else -1, int(a.dtype.num),
                      int(np.prod(a.shape[1:], dtype=np.int64)) if a.ndim else 0]
                     for a in parts], np.int64)
    shapes = np.asarray(multihost_utils.process_allgather(meta))  # (P, parts, 4)
    if not (shapes == shapes[:1]).all():
        seen = "; ".join(
            f"process {p}: " + ", ".join(f"{n} {k} examples" for n, k in
                                         zip(("x", "y"), shapes[p, :, 1]))
            for p in range(shapes.shape[0]))
        raise ValueError(
            f"{where}: every process must hold a part of the same size, example shape and "
            f"dtype (the parts are concatenated in process order), but they differ ({seen}; "
            "shapes and dtypes compared too). Split the data set into "
            f"{jax.process_count()} equal parts, e.g. np.array_split(..., "
            f"{jax.process_count()})[jax.process_index()] after trimming it to a multiple "
            "of the process count.")
    if any(a.ndim == 0 for a in parts):
        raise ValueError(f"{where}: x and y must have a leading example axis")
    out = [np.asarray(multihost_utils.process_allgather(a, tiled=True)) for a in parts]
    return out[0], (out[1] if y is not None else None)


def global_array(value: Any, sharding: Sharding) -> jax.Array:
    """``value`` (the same on every process) placed with ``sharding``, which may name
    devices of other processes: each process puts its own devices' pieces. Typed PRNG
    keys travel as their key data. Alone, or on this process's devices only, it is
    ``jax.device_put``."""
    if not spans_processes(sharding):
        return jax.device_put(value, sharding)
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(value)
        return jax.random.wrap_key_data(global_array(jax.random.key_data(value), sharding),
                                        impl=impl)
    host = np.asarray(to_host(value))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def local(tree: Any) -> Any:
    """``tree`` with every array on this process's devices: a replicated array spanning
    processes becomes this process's own copy (no transfer), a split one is gathered
    (a collective). For host-side checks that run before the arrays are placed again,
    e.g. a state returned by a previous ``fit`` over a mesh across processes."""
    def one(a: Any) -> Any:
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return a
        if a.is_fully_replicated:
            return a.addressable_data(0)
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return jax.tree.map(one, tree)


def to_host(tree: Any) -> Any:
    """``tree``'s arrays on the host as NumPy. An array split across processes is
    gathered (every process must call this then: it is a collective); a replicated one
    is read from this process's own copy."""
    def one(a: Any) -> Any:
        if not isinstance(a, jax.Array) or a.is_fully_addressable or a.is_fully_replicated:
            return jax.device_get(a) if isinstance(a, jax.Array) else a
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return jax.tree.map(one, tree)

