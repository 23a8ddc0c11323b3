"""Data parallelism over a device mesh, on JAX's own sharding machinery.

``train.fit(..., mesh=mesh)`` splits every minibatch over one axis of a
``jax.sharding.Mesh`` (``"data"`` by default: ``batch_axis=``) and keeps the
parameters, the optimizer state and the data set replicated on every device of it::

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    state, history = train.fit(model, loss, opt, state, x, y, epochs=5, batch_size=128,
                               mesh=mesh)

Nothing here is funcnn's own runtime: the batch gets a ``NamedSharding``, and XLA's SPMD
partitioner runs each device's share of the step and adds the devices' partial sums
where a computation sums over the batch. In the hand rules those sums are visible: the
dense rule's ``dW = x^T dy`` contracts the batch axis, so with the batch split each
device computes ``x_d^T dy_d`` over its own examples and the all-reduce that adds them
*is* data parallelism's gradient all-reduce (``db = sum(dy, 0)``, the conv and
layer-norm parameter gradients and the losses' batch means alike).

The two kinds of mesh axis (``jax.sharding.AxisType``):

* **Explicit** (the default of ``jax.make_mesh`` since JAX 0.9): shardings are part of
  the arrays' types, and an operation whose output sharding would be ambiguous raises
  ``ShardingTypeError`` while tracing. A contraction over the sharded batch axis is
  such an operation (reduce-scatter or all-reduce?), so the rules that contract it say
  where the result goes: :func:`batch_matmul` and :func:`out_sharding` (the parameter's
  own sharding, replicated), :func:`unsharded` for the per-example losses before
  their pairwise sum; :func:`sharded_like` lets dropout draw each device's share of
  its mask only.
* **Auto**: XLA propagates shardings itself; only the batch's is constrained.

Without a mesh (or on a mesh whose arrays are not sharded in their types) every helper
here returns exactly today's computation (``batch_matmul(a, b) is a @ b``), so a run
without a mesh compiles the same program as before.

The rule, checked before training starts: every batch that is split (``batch_size``,
the smaller last batch with ``drop_remainder=False``, the validation and evaluation
sets) must divide evenly over the devices of the batch axis; there is no padding.

Works from JAX 0.7 on: the pieces that newer JAX added (``jax.typeof`` with shardings,
``out_sharding=``, ``jax.reshard``, ``jax.set_mesh``) are looked up, not assumed.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from funcnn import distributed

Array = jax.Array

__all__ = ["DEFAULT_AXIS", "check_mesh", "batch_devices", "check_divisible", "is_explicit",
           "batch_sharding", "replicate", "shard_batch", "constrain_batch",
           "constrain_replicated", "mesh_context", "sharded_in_type", "unsharded",
           "out_sharding", "sharded_like", "batch_matmul", "conv_general_dilated"]

DEFAULT_AXIS = "data"

# Feature detection (JAX 0.7.2 ... 0.12): each is None where this JAX lacks it.
_AXIS_TYPE = getattr(jax.sharding, "AxisType", None)
_TYPEOF = getattr(jax, "typeof", None)
_RESHARD = getattr(jax, "reshard", None) or getattr(jax.sharding, "reshard", None)
_SET_MESH = getattr(jax, "set_mesh", None) or getattr(jax.sharding, "use_mesh", None)


def _takes(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


_MATMUL_OUT = _takes(jnp.matmul, "out_sharding")
_CONV_OUT = _takes(lax.conv_general_dilated, "out_sharding")
_RANDOM_OUT = _takes(jax.random.bernoulli, "out_sharding")


# --------------------------------------------------------------------------------------
# The mesh and its batch axis (host side, checked before anything runs)
# --------------------------------------------------------------------------------------

def _axes(batch_axis: str | Sequence[str]) -> tuple[str, ...]:
    return (batch_axis,) if isinstance(batch_axis, str) else tuple(batch_axis)


def _shown(batch_axis: str | Sequence[str]) -> str:
    axes = _axes(batch_axis)
    return repr(axes[0]) if len(axes) == 1 else repr(axes)


def check_mesh(mesh: Any, batch_axis: str | Sequence[str], where: str
               ) -> str | tuple[str, ...]:
    """Checks that ``mesh`` is a ``jax.sharding.Mesh`` holding ``batch_axis`` (a name,
    or a tuple of names to split the batch over several axes) of one kind, Explicit or
    Auto; returns ``batch_axis`` as a name or a tuple (hashable: a static argument).
    Raises a ValueError or TypeError that says how to make a suitable mesh."""
    recipe = "jax.make_mesh((jax.device_count(),), ('data',))"
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{where}: mesh must be a jax.sharding.Mesh (e.g. {recipe}); got "
                        f"{type(mesh).__name__}")
    if not (isinstance(batch_axis, str) or (
            isinstance(batch_axis, (tuple, list)) and batch_axis
            and all(isinstance(a, str) for a in batch_axis))):
        raise TypeError(f"{where}: batch_axis must be a mesh axis name or a tuple of "
                        f"them; got {batch_axis!r}")
    axes = _axes(batch_axis)
    missing = [a for a in axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(
            f"{where}: the mesh has axes {tuple(mesh.axis_names)} but no axis "
            f"{missing[0]!r} to split the batch over; pass batch_axis= one of "
            f"{tuple(mesh.axis_names)}, or make the mesh with that axis, e.g. {recipe}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"{where}: batch_axis names an axis twice: {axes}")
    kinds = {_kind(mesh, a) for a in axes}
    if "manual" in kinds:
        raise ValueError(f"{where}: the batch axis {axes} of the mesh is Manual (inside "
                         "jax.shard_map); fit shards the batch itself: pass a mesh whose "
                         "batch axis is Explicit or Auto")
    if len(kinds) > 1:
        raise ValueError(f"{where}: the batch axes {axes} mix Explicit and Auto axis "
                         "types; make them all one kind (axis_types= of jax.make_mesh)")
    return axes[0] if len(axes) == 1 else axes


def _kind(mesh: Mesh, axis: str) -> str:
    """``"explicit"``, ``"auto"`` or ``"manual"``: the type of one mesh axis."""
    types = getattr(mesh, "axis_types", None)
    if _AXIS_TYPE is None or types is None:
        return "auto"
    if isinstance(types, dict):  # some JAX versions: {AxisType: names}
        for kind, names in types.items():
            if axis in (_axes(names) if names is not None else ()):
                return str(getattr(kind, "name", kind)).lower()
        return "auto"
    kind = types[list(mesh.axis_names).index(axis)]
    return str(getattr(kind, "name", kind)).lower()


def is_explicit(mesh: Mesh, batch_axis: str | Sequence[str] = DEFAULT_AXIS) -> bool:
    """Whether the batch axis of ``mesh`` is Explicit (sharding in types)."""
    return _kind(mesh, _axes(batch_axis)[0]) == "explicit"


def batch_devices(mesh: Mesh, batch_axis: str | Sequence[str] = DEFAULT_AXIS) -> int:
    """How many shards the batch is split into: the size of the batch axis (axes)."""
    return math.prod(mesh.shape[a] for a in _axes(batch_axis))


def check_divisible(n: int, mesh: Mesh, batch_axis: str | Sequence[str], what: str,
                    where: str, fix: str = "") -> None:
    """A ValueError unless ``n`` examples split evenly over the batch axis."""
    d = batch_devices(mesh, batch_axis)
    if n % d:
        lower, upper = (n // d) * d, -(-n // d) * d
        near = " or ".join(str(v) for v in (lower, upper) if v > 0)
        raise ValueError(
            f"{where}: {what} ({n} examples) does not split evenly over the {d} devices "
            f"of the mesh's batch axis {_shown(batch_axis)}: data parallelism gives each "
            f"device the same number of examples. Use a multiple of {d} (e.g. {near})"
            + (f"; {fix}" if fix else "") + ".")


def batch_sharding(mesh: Mesh, batch_axis: str | Sequence[str] = DEFAULT_AXIS
                   ) -> NamedSharding:
    """Leading (batch) axis split over ``batch_axis``, the other axes whole."""
    axes = _axes(batch_axis)
    return NamedSharding(mesh, PartitionSpec(axes[0] if len(axes) == 1 else axes))


def _replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` placed whole on every device of ``mesh`` (parameters, optimizer state,
    the data set that minibatches are gathered from). Host-side, outside ``jit``; on a
    mesh across processes every process passes the same ``tree`` and places its own
    devices' copies."""
    return _place(tree, _replicated_sharding(mesh))


def _place(tree: Any, sharding: NamedSharding) -> Any:
    if not distributed.spans_processes(sharding):
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda leaf: distributed.global_array(leaf, sharding), tree)


def shard_batch(tree: Any, mesh: Mesh, batch_axis: str | Sequence[str] = DEFAULT_AXIS
                ) -> Any:
    """``tree``'s arrays placed with their leading axis split over ``batch_axis`` (on a
    mesh across processes: the same ``tree`` on every process, as :func:`replicate`)."""
    return _place(tree, batch_sharding(mesh, batch_axis))


def _constrain(tree: Any, sharding: NamedSharding, explicit: bool) -> Any:
    if explicit and _RESHARD is not None:
        return _RESHARD(tree, sharding)
    return lax.with_sharding_constraint(tree, sharding)


def constrain_batch(tree: Any, mesh: Mesh | None,
                    batch_axis: str | Sequence[str] = DEFAULT_AXIS) -> Any:
    """Inside a computation: ``tree``'s leading axis split over ``batch_axis``
    (``jax.reshard`` on an Explicit axis, ``with_sharding_constraint`` on an Auto one);
    ``tree`` itself without a mesh. This is how each minibatch, gathered from the
    replicated data set in an order shuffled on device, lands on the data axis."""
    if mesh is None:
        return tree
    return _constrain(tree, batch_sharding(mesh, batch_axis), is_explicit(mesh, batch_axis))


def constrain_replicated(tree: Any, mesh: Mesh | None,
                         batch_axis: str | Sequence[str] = DEFAULT_AXIS) -> Any:
    """Inside a computation: ``tree`` replicated on every device of ``mesh`` (the
    parameters and optimizer state); ``tree`` itself without a mesh."""
    if mesh is None:
        return tree
    return _constrain(tree, _replicated_sharding(mesh), is_explicit(mesh, batch_axis))


@contextlib.contextmanager
def mesh_context(mesh: Mesh | None) -> Iterator[None]:
    """``jax.set_mesh(mesh)`` around host code that calls jitted programs (what an
    Explicit mesh needs while tracing); nothing without a mesh."""
    if mesh is None or _SET_MESH is None:
        yield
        return
    with _SET_MESH(mesh):
        yield


# --------------------------------------------------------------------------------------
# For the hand rules: sums over a sharded batch axis
# --------------------------------------------------------------------------------------

def _type_sharding(x: Any) -> NamedSharding | None:
    """The sharding in ``x``'s type (Explicit axes only), or None."""
    if _TYPEOF is None:
        return None
    try:
        s = getattr(_TYPEOF(x), "sharding", None)
    except TypeError:
        return None
    if not isinstance(s, NamedSharding) or getattr(s.mesh, "empty", True):
        return None
    return s


def sharded_in_type(*xs: Any) -> bool:
    """Whether any of ``xs`` is split over an Explicit mesh axis (its type says so).
    False without a mesh and on Auto meshes, whose shardings are not in the types."""
    for x in xs:
        s = _type_sharding(x)
        if s is not None and any(p is not None for p in s.spec):
            return True
    return False


def _mesh_of(*xs: Any) -> Any:
    for x in xs:
        s = _type_sharding(x)
        if s is not None:
            return s.mesh
    return None


def unsharded(x: Array) -> Array:
    """``x`` whole on every device when its type splits it (an all-gather), else ``x``
    itself. The losses gather their per-example values (N scalars) before the pairwise
    batch mean, which then adds them in the same order as on one device."""
    if not sharded_in_type(x):
        return x
    return _RESHARD(x, NamedSharding(_type_sharding(x).mesh, PartitionSpec()))


def out_sharding(*operands: Any, like: Any = None, spec: PartitionSpec | None = None
                 ) -> dict[str, Any]:
    """``{"out_sharding": ...}`` for an operation that sums over the sharded batch axis
    of ``operands``, or ``{}`` when none is sharded in its type (no mesh, an Auto mesh):
    then the call is exactly what it was without it.

    The result takes ``like``'s sharding (the parameter the result is the gradient of:
    replicated under data parallelism) or, without ``like``, ``spec`` (default:
    replicated) on the operands' mesh.
    """
    if not sharded_in_type(*operands):
        return {}
    s = _type_sharding(like) if like is not None else None
    if s is None:
        s = NamedSharding(_mesh_of(*operands), PartitionSpec() if spec is None else spec)
    return {"out_sharding": s}


def sharded_like(x: Any) -> dict[str, Any]:
    """``{"out_sharding": x's sharding}`` when ``x`` is split in its type and
    ``jax.random`` takes ``out_sharding`` (a dropout mask drawn per device), else ``{}``.
    With JAX's partitionable threefry (the default) the values do not depend on it."""
    if not (_RANDOM_OUT and sharded_in_type(x)):
        return {}
    return {"out_sharding": _type_sharding(x)}


def batch_matmul(a: Array, b: Array, *, like: Any = None) -> Array:
    """``a @ b`` for a product that contracts the batch axis (``x.T @ dy``), correct on
    an Explicit mesh: the result is summed over the devices (all-reduced) and sharded
    like ``like`` (default: replicated). Without a mesh it is ``a @ b``."""
    kw = out_sharding(a, b, like=like)
    if not kw:
        return a @ b
    if _MATMUL_OUT:
        return jnp.matmul(a, b, **kw)
    return unsharded(a) @ unsharded(b)   # an older JAX: gather, then multiply


def conv_general_dilated(lhs: Array, rhs: Array, *args: Any, like: Any = None,
                         spec: PartitionSpec | None = None, **kwargs: Any) -> Array:
    """``lax.conv_general_dilated`` for a convolution that sums over the sharded batch
    axis (a weight gradient), correct on an Explicit mesh (see :func:`batch_matmul`)."""
    kw = out_sharding(lhs, rhs, like=like, spec=spec)
    if kw and not _CONV_OUT:
        lhs, rhs, kw = unsharded(lhs), unsharded(rhs), {}
    return lax.conv_general_dilated(lhs, rhs, *args, **kwargs, **kw)
