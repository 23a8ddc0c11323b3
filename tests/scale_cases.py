"""The cases of test_scale: data-parallel ``fit`` on 4 CPU devices against one device.

Run as ``python -m tests.scale_cases [PART]`` in a process started with 4 CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``; the count is fixed once JAX
starts, so the test starts a process of its own). It prints one JSON object: for each
case the largest relative difference between the data-parallel run and the one-device
run (final parameters, optimizer state and history), and the messages of the bad-input
cases. Float64 cases and float32 ones run in the same process (x64 on; the parameters'
dtype sets the computation's). ``PART`` (0 or 1) runs half of the cases, so that two
processes can compile on two cores at once.
"""

import json
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from funcnn import losses, nn, optim, parallel, train  # noqa: E402

DEVICES = 4
SCE = losses.softmax_cross_entropy


def make_mesh(kind: str, n: int = DEVICES, name: str = "data"):
    """A 1-D mesh of the first ``n`` devices whose axis is ``kind`` ("Explicit" or
    "Auto")."""
    axis_type = getattr(jax.sharding, "AxisType", None)
    devices = jax.devices()[:n]
    if axis_type is None:  # a JAX without axis types: every mesh is Auto
        return jax.make_mesh((n,), (name,), devices=devices)
    return jax.make_mesh((n,), (name,), axis_types=(getattr(axis_type, kind),),
                         devices=devices)


def rel_diff(a, b) -> float:
    """The largest ``max|a - b| / max|b|`` over the float leaves of two pytrees."""
    worst = 0.0
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        if not np.issubdtype(np.asarray(v).dtype, np.floating) or v.size == 0:
            continue
        scale = max(float(np.max(np.abs(v))), 1e-30)
        worst = max(worst, float(np.max(np.abs(u - v))) / scale)
    return worst


def _history(h) -> dict:
    return {k: np.asarray(v) for k, v in h.metrics.items()}


DENSE = nn.serial(nn.dense(16), nn.relu(), nn.dropout(0.2), nn.layer_norm(), nn.dense(8),
                  nn.tanh(), nn.dense(3))


def conv_model():
    """One-channel input (the c == 1 im2col path), then a 4-channel conv (the general
    path); max and average pooling. A new value each call: a new compiled program."""
    return nn.serial(nn.conv2d(4, 3, padding="SAME"), nn.relu(), nn.max_pool(2, 2),
                     nn.conv2d(4, 3), nn.tanh(), nn.avg_pool(2, 1), nn.flatten(),
                     nn.dense(3))


CONV = conv_model()


def _data(kind: str, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    if kind == "dense":
        x = rng.normal(size=(n, 4))
        y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
        return x, y, (4,)
    x = rng.normal(size=(n, 8, 8, 1))
    y = (x[:, :4].mean(axis=(1, 2, 3)) > 0).astype(np.int32) * 2
    return x, y, (8, 8, 1)


_REFERENCE = {}  # one-device runs, shared by the Explicit and Auto cases


SGD = optim.sgd(0.05, momentum=0.9)


def fit_pair(model, engine, mesh_kind, dtype, *, val=False, steps=None, placed=False,
             **fit_kw):
    """The largest relative difference between ``fit`` on a mesh of 4 and without.

    With ``steps`` the run on the mesh trains ``steps`` updates in rows of one epoch
    (``run_steps``), which is the same training as the reference's ``epochs``. With
    ``placed`` the data given to ``fit`` on the mesh is already there (replicated), as
    a user who placed it would pass it."""
    kind = "conv" if model.children[0].name == "conv2d" else "dense"
    x, y, shape = _data(kind, 64)
    kw = dict(epochs=2, batch_size=16, engine=engine)
    if val:
        kw["validation_data"] = _data(kind, 16, seed=1)[:2]
    kw.update(fit_kw)

    def run(mesh, **more):
        state = train.init_state(model, SGD, jax.random.key(0), shape, dtype=dtype)
        data = (x, y)
        if placed and mesh is not None:
            data = jax.device_put(data, jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec()))
        s, h = train.fit(model, SCE, SGD, state, *data, mesh=mesh, **{**kw, **more})
        return s, _history(h)

    key = (id(model), engine, jnp.dtype(dtype).name, repr(sorted(fit_kw.items())), val)
    if key not in _REFERENCE:
        _REFERENCE[key] = run(None)
    more = {}
    if steps is not None:
        per_epoch = -(-64 // kw["batch_size"]) if fit_kw.get("drop_remainder") is False \
            else 64 // kw["batch_size"]
        more = dict(epochs=None, steps=steps, eval_every=per_epoch)
    (s0, h0), (s1, h1) = _REFERENCE[key], run(make_mesh(mesh_kind), **more)
    assert set(h0) == set(h1), (set(h0), set(h1))
    assert int(s0.step) == int(s1.step)
    sharding = jax.tree.leaves(s1.params)[0].sharding
    assert len(sharding.device_set) == DEVICES, sharding  # trained on the mesh, replicated
    assert sharding.is_fully_replicated, sharding
    return max(rel_diff(s1.params, s0.params), rel_diff(s1.opt_state, s0.opt_state),
               rel_diff(h1, h0))


def evaluate_pair(mesh_kind, dtype):
    model = DENSE
    x, y, shape = _data("dense", 32)
    params = model.init(jax.random.key(1), shape, dtype)
    a = train.evaluate(model, SCE, params, x, y)
    b = train.evaluate(model, SCE, params, x, y, mesh=make_mesh(mesh_kind))
    assert set(a) == set(b)
    return max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-30) for k in a)


def train_step_pair(mesh_kind):
    """A jitted ``train_step`` with a mesh equals one without (float64, Adam), and is
    really data-parallel: its compiled program works on a quarter of the batch per
    device and all-reduces the gradients. Returns ``{"diff", "all_reduces",
    "local_batch"}``."""
    model, opt = DENSE, optim.adam(1e-2)
    x, y, shape = _data("dense", 16)
    state = train.init_state(model, opt, jax.random.key(2), shape, dtype=jnp.float64)
    x = jnp.asarray(x)
    step = jax.jit(train.train_step, static_argnames=(
        "model", "loss", "update", "engine", "mesh", "batch_axis"))
    mesh = make_mesh(mesh_kind)
    kw = dict(model=model, loss=SCE, update=opt.update)
    a, ma = step(state, x, y, **kw)
    with parallel.mesh_context(mesh):
        b, mb = step(state, x, y, mesh=mesh, **kw)
        hlo = step.lower(state, x, y, mesh=mesh, **kw).compile().as_text()
    return {"diff": max(rel_diff(b.params, a.params), rel_diff(mb, ma)),
            "all_reduces": hlo.count("all-reduce("),
            # the first dense layer's product on a device: (16 / 4 examples, 16 units)
            "local_batch": "f64[4,16]" in hlo}


def bad_input() -> dict:
    """The messages of the bad inputs (each must raise before training)."""
    model, opt = DENSE, optim.sgd(0.1)
    x, y, shape = _data("dense", 64)
    state = train.init_state(model, opt, jax.random.key(0), shape, dtype=jnp.float32)
    out = {}
    explicit = make_mesh("Explicit")
    cases = {  # name: (examples, fit's arguments)
        "no_axis": (64, dict(mesh=make_mesh("Explicit", name="batch"), batch_size=16)),
        "not_divisible": (64, dict(mesh=explicit, batch_size=10)),
        "full_batch_not_divisible": (64, dict(mesh=make_mesh("Auto", n=3))),
        "rest_not_divisible": (62, dict(mesh=explicit, batch_size=16, drop_remainder=False)),
        "not_a_mesh": (64, dict(mesh="data", batch_size=16)),
        "batch_axis_type": (64, dict(mesh=explicit, batch_size=16, batch_axis=3)),
        "val_not_divisible": (64, dict(mesh=explicit, batch_size=16,
                                       validation_data=(x[:10], y[:10]))),
    }
    for name, (n, kw) in cases.items():
        try:
            train.fit(model, SCE, opt, state, x[:n], y[:n], epochs=1, **kw)
            out[name] = None
        except (ValueError, TypeError) as e:
            out[name] = f"{type(e).__name__}: {e}"
    try:
        train.evaluate(model, SCE, state.params, x[:10], y[:10], mesh=make_mesh("Explicit"))
        out["evaluate_not_divisible"] = None
    except ValueError as e:
        out["evaluate_not_divisible"] = f"ValueError: {e}"
    return out


def main(part: int | None = None) -> dict:
    """Runs the cases (of one ``part``, 0 or 1, or all), returns the report."""
    assert jax.device_count() == DEVICES, jax.devices()
    f32, f64 = jnp.float32, jnp.float64
    out, times = {}, {}

    def case(where, name, fn, *args, **kw):
        if part is not None and where != part:
            return
        t = time.perf_counter()
        try:
            out[name] = fn(*args, **kw)
        except Exception as e:  # noqa: BLE001  reported, the test shows it
            out[name] = f"{type(e).__name__}: {e}"
        times[name] = round(time.perf_counter() - t, 2)

    # Each case compiles a program (about 3 s here), so the cases cover the grid
    # (engine x mesh type x dtype x model) rather than fill it; each one-device run is
    # shared by the cases that compare with it (and so in the same part). The dense
    # float32 runs train on a smaller last batch too (64 examples in batches of 24).
    last = dict(batch_size=24, drop_remainder=False)
    for mesh_kind in ("Explicit", "Auto"):
        case(0, f"dense/backprop/{mesh_kind}/float32", fit_pair, DENSE, "backprop",
             mesh_kind, f32, val=True, **last)
        case(0, f"dense/jax/{mesh_kind}/float64", fit_pair, DENSE, "jax", mesh_kind, f64)
        case(1, f"conv/jax/{mesh_kind}/float32", fit_pair, CONV, "jax", mesh_kind, f32)
    # data the caller already placed on the mesh (replicated) trains as host data does
    case(0, "dense_placed/backprop/Explicit/float32", fit_pair, DENSE, "backprop",
         "Explicit", f32, val=True, placed=True, **last)
    # fit(steps=...) (run_steps) on the mesh against fit(epochs=2) on one device
    case(0, "dense_steps/backprop/Explicit/float32", fit_pair, DENSE, "backprop",
         "Explicit", f32, val=True, steps=6, **last)
    case(1, "conv/backprop/Explicit/float32", fit_pair, CONV, "backprop", "Explicit", f32)
    # the weight gradient of a convolution computed as a convolution (large problems);
    # read when a program is traced, so a new model (a new program) for it
    from funcnn.nn import conv as conv_module
    saved, conv_module.IM2COL_MAX = conv_module.IM2COL_MAX, 0
    try:
        case(1, "conv_by_conv/backprop/Explicit/float64", fit_pair, conv_model(),
             "backprop", "Explicit", f64)
    finally:
        conv_module.IM2COL_MAX = saved
    case(0, "evaluate/Explicit/float64", evaluate_pair, "Explicit", f64)
    case(0, "evaluate/Auto/float32", evaluate_pair, "Auto", f32)
    case(1, "train_step/Explicit/float64", train_step_pair, "Explicit")
    case(0, "bad_input", bad_input)
    return {"cases": out, "times": times, "jax": jax.__version__}


if __name__ == "__main__":  # python -m tests.scale_cases [PART]
    json.dump(main(int(sys.argv[1]) if len(sys.argv) > 1 else None), sys.stdout)
