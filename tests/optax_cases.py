"""The cases of test_optax_equal: funcnn and optax built by the same code, name for name.

Importable with or without x64, so the float32 cases run in a subprocess with JAX's
default (x64 off), where optax computes in float32 the way funcnn does; with x64 on,
optax's Python-float hyperparameters would make its float32 run partly float64.
"""

import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import optim as O

STEPS = 1000
TOL = {"float64": 1e-12, "float32": 1e-6}


def _grads(dtype, steps=STEPS, seed=0):
    """A stacked pytree of random gradients, leading axis the step; some steps large."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    scale = jnp.where(jax.random.uniform(k3, (steps, 1, 1)) < 0.1, 10.0, 1.0)
    return {"w": (jax.random.normal(k1, (steps, 3, 4)) * scale).astype(dtype),
            "b": jax.random.normal(k2, (steps, 4)).astype(dtype)}


def _params(dtype):
    return {"w": jnp.linspace(-1, 1, 12).reshape(3, 4).astype(dtype),
            "b": jnp.linspace(0.5, -0.5, 4).astype(dtype)}


def _trajectory(opt, params, grads):
    """Params after every update, for a stacked tree of gradients (traceable)."""

    def body(carry, g):
        p, s = carry
        u, s = opt.update(g, s, p)
        p = jax.tree.map(lambda p, u: p + u, p, u)
        return (p, s), p

    return jax.lax.scan(body, (params, opt.init(params)), grads)[1]


def _run(opt, params, grads):
    """Params after every update, for a stacked tree of gradients."""
    return jax.jit(lambda p, gs: _trajectory(opt, p, gs))(params, grads)


def assert_same(ours, theirs, dtype):
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(np.max(np.abs(b)), 1e-30)
        err = np.max(np.abs(a - b)) / scale
        tol = TOL[jnp.dtype(dtype).name]
        assert err <= tol, f"relative difference {err:.3g} > {tol}"


def _f64(f, schedule):
    """optax evaluates a schedule at its int32 count, and int32 / int is float32 in JAX,
    so its schedules carry float32 rounding even in float64 runs; give it a float64 step
    so both compute the same formula at the same precision."""
    if f is O or not jax.config.read("jax_enable_x64"):
        return schedule
    return lambda count: schedule(jnp.asarray(count, jnp.float64))


def _lin(f):
    return _f64(f, f.linear_schedule(0.1, 0.001, 600, 100))


def _cos(f):
    return _f64(f, f.warmup_cosine_decay_schedule(0.0, 0.1, 100, 800, 0.01, exponent=1.5))


# name -> function of the library (funcnn.optim or optax) building the transform
TRANSFORMS = {
    "identity": lambda f: f.identity(),
    "scale": lambda f: f.scale(-0.3),
    "scale_by_learning_rate": lambda f: f.scale_by_learning_rate(0.02),
    "scale_by_learning_rate_schedule": lambda f: f.scale_by_learning_rate(_lin(f)),
    "scale_by_learning_rate_plus": lambda f: f.scale_by_learning_rate(0.02, flip_sign=False),
    "scale_by_schedule": lambda f: f.scale_by_schedule(_cos(f)),
    "trace": lambda f: f.trace(0.9),
    "trace_nesterov": lambda f: f.trace(0.8, nesterov=True),
    "scale_by_rss": lambda f: f.scale_by_rss(),
    "scale_by_rss_c0": lambda f: f.scale_by_rss(0.5, 1e-3),
    "scale_by_rms": lambda f: f.scale_by_rms(),
    "scale_by_rms_outside": lambda f: f.scale_by_rms(0.99, 1e-7, 0.1, eps_in_sqrt=False),
    "scale_by_rms_corrected": lambda f: f.scale_by_rms(0.95, bias_correction=True),
    "scale_by_stddev": lambda f: f.scale_by_stddev(0.9, 1e-6, 0.5),
    "scale_by_adam": lambda f: f.scale_by_adam(),
    "scale_by_adam_eps_root": lambda f: f.scale_by_adam(0.8, 0.99, 1e-6, 1e-8),
    "scale_by_adam_nesterov": lambda f: f.scale_by_adam(nesterov=True),
    "add_decayed_weights": lambda f: f.add_decayed_weights(1e-2),
    "add_decayed_weights_mask": lambda f: f.add_decayed_weights(
        1e-2, mask=lambda p: {"w": True, "b": False}),
    "clip": lambda f: f.clip(1.5),
    "clip_by_global_norm": lambda f: f.clip_by_global_norm(4.0),
    "clip_by_global_norm_0": lambda f: f.clip_by_global_norm(0.0),
}
OPTIMIZERS = {
    "sgd": lambda f: f.sgd(0.01),
    "sgd_momentum": lambda f: f.sgd(0.01, 0.9),
    "sgd_nesterov": lambda f: f.sgd(0.01, momentum=0.9, nesterov=True),
    "sgd_schedule": lambda f: f.sgd(_f64(f, f.exponential_decay(0.05, 100, 0.9)), 0.5),
    "adagrad": lambda f: f.adagrad(0.1),
    "rmsprop": lambda f: f.rmsprop(0.01),
    "rmsprop_all": lambda f: f.rmsprop(0.01, 0.95, 1e-6, 0.1, False, True, 0.9, True, True),
    "adam": lambda f: f.adam(1e-2),
    "adam_schedule": lambda f: f.adam(_cos(f), b1=0.8),
    "nadam": lambda f: f.adam(1e-2, nesterov=True),
    "adamw": lambda f: f.adamw(1e-2, weight_decay=0.05),
    "adamw_mask": lambda f: f.adamw(1e-2, mask={"w": True, "b": False}),
    "chain_clip_adamw": lambda f: f.chain(f.clip_by_global_norm(5.0),
                                          f.adamw(_lin(f), weight_decay=1e-3)),
    "nested_chain": lambda f: f.chain(f.chain(f.clip(3.0), f.chain(f.scale_by_adam())),
                                      f.chain(f.add_decayed_weights(1e-3), f.scale(-1e-2))),
    "inject_adam": lambda f: f.inject_hyperparams(f.adam)(learning_rate=_cos(f), b1=0.85),
    "inject_sgd": lambda f: f.inject_hyperparams(f.sgd)(learning_rate=0.05, momentum=0.9),
    "multisteps": lambda f: f.MultiSteps(f.adam(1e-2), every_k_schedule=3,
                                         accumulator_dtype=None),
    "multisteps_sum": lambda f: f.MultiSteps(f.sgd(1e-3, 0.9), 4, use_grad_mean=False,
                                             accumulator_dtype=None),
    # the large gradients (a tenth of the steps, ||g||^2 ~ 1200 against ~16) are skipped
    "multisteps_skip_large": lambda f: f.MultiSteps(
        f.adam(1e-2), 3, should_skip_update_fn=functools.partial(
            f.skip_large_updates, max_squared_norm=200.0), accumulator_dtype=None),
}


SCHEDULES = {
    "constant_schedule": lambda f: f.constant_schedule(0.3),
    "polynomial_schedule": lambda f: f.polynomial_schedule(1.0, 0.01, 2.5, 700, 50),
    "polynomial_schedule_no_steps": lambda f: f.polynomial_schedule(1.0, 0.01, 2.0, 0),
    "linear_schedule": lambda f: f.linear_schedule(0.1, 0.001, 600, 100),
    "exponential_decay": lambda f: f.exponential_decay(0.1, 100, 0.9),
    "exponential_decay_all": lambda f: f.exponential_decay(0.1, 50, 0.5, 200, True, 0.02),
    "exponential_decay_growing": lambda f: f.exponential_decay(0.1, 50, 1.5, end_value=1.0),
    "cosine_decay_schedule": lambda f: f.cosine_decay_schedule(0.2, 800, 0.1, 2.0),
    "warmup_cosine_decay_schedule": lambda f: f.warmup_cosine_decay_schedule(
        0.0, 0.1, 100, 800, 0.01, exponent=1.5),
    "piecewise_constant_schedule": lambda f: f.piecewise_constant_schedule(
        0.5, {200: 0.1, 500: 0.5, 501: 2.0}),
    "join_schedules": lambda f: f.join_schedules(
        [f.linear_schedule(0.0, 1.0, 100), f.cosine_decay_schedule(1.0, 500),
         f.constant_schedule(0.01)], [100, 600]),
}


# ------------------------------------------- optax's "Getting started", both ways --
def _getting_started(lib, optimizer, steps=1000):
    """The notebook's linear model: 16 points, y = x . 0.5, mean L2 loss, 1000 steps."""

    def network(params, x):
        return jnp.dot(params, x)

    def compute_loss(params, x, y):
        y_pred = jax.vmap(network, in_axes=(None, 0))(params, x)
        return jnp.mean(0.5 * (y_pred - y) ** 2)  # optax.l2_loss

    xs = jax.random.normal(jax.random.PRNGKey(42), (16, 2))
    ys = jnp.sum(xs * 0.5, axis=-1)
    params = jnp.array([0.0, 0.0])
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(compute_loss)(params, xs, ys)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return lib.apply_updates(params, updates), opt_state

    for _ in range(steps):
        params, opt_state = step(params, opt_state)
    return params, opt_state


NOTEBOOK = {  # the notebook's optimizers, cell by cell
    "basic_adam": lambda f: f.adam(learning_rate=1e-2),
    "custom_chain": lambda f: f.chain(f.scale_by_adam(), f.scale(-1e-2)),
    "clip_adamw_schedule": lambda f: f.chain(
        f.clip(1.0), f.adamw(learning_rate=f.linear_schedule(1e-2, 1e-3, 500))),
    "inject_adamw": lambda f: f.inject_hyperparams(f.adamw)(
        learning_rate=f.linear_schedule(1e-2, 1e-3, 500)),
}



def _pair(name, dtype, optax):
    """Case ``name`` built by both libraries: (funcnn's, optax's)."""
    make = {**TRANSFORMS, **OPTIMIZERS}[name]
    ours, theirs = make(O), make(optax)
    if "multisteps" in name:  # optax's default accumulates in float32 even in float64 runs
        ours = O.MultiSteps(ours.inner_opt, ours._every_k, ours._use_grad_mean,
                            ours._should_skip, dtype)
        theirs = optax.MultiSteps(theirs.inner_opt, theirs._every_k_schedule,
                                  theirs._use_grad_mean, theirs._should_skip_update_fn,
                                  accumulator_dtype=dtype)
    return ours, theirs


def compare(name, dtype, optax):
    """Run case ``name`` with both libraries in ``dtype``; raise AssertionError if they differ."""
    ours, theirs = _pair(name, dtype, optax)
    params, grads = _params(dtype), _grads(dtype)
    assert_same(_run(ours, params, grads), _run(theirs, params, grads), dtype)


def run_all(cases, dtype):
    """{name: trajectories} for {name: optimizers} (a case's pair: (funcnn's, optax's)),
    all from one compiled program, each trajectory its own scan as in ``_run``:
    compiling dominates, and one program compiles about three times faster than one
    per trajectory."""
    run = jax.jit(lambda p, gs: {n: tuple(_trajectory(o, p, gs) for o in opts)
                                 for n, opts in cases.items()})
    return run(_params(dtype), _grads(dtype))


class Float32Hyperparams:
    """optax, with every float hyperparameter (defaults included) given as a float32 array.

    funcnn stores hyperparameters as arrays in the params' dtype, so a float32 run uses
    float32(0.999) everywhere, 1 - b2 included. optax folds ``1 - 0.999`` in Python
    double precision first, a coefficient 1.3e-5 away in relative terms; over 1000 Adam
    steps the trajectories then part by about 7e-6. Given the same float32 values,
    the two agree to 1e-6 (and ``test_equals_optax_over_1000_steps_float32`` pins the
    size of the difference with optax's own defaults).
    """

    def __init__(self, lib):
        self.lib = lib

    def __getattr__(self, name):
        import functools
        import inspect

        fn = getattr(self.lib, name)
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return fn

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            for k, v in bound.arguments.items():
                if isinstance(v, float) and not isinstance(v, bool):
                    bound.arguments[k] = jnp.float32(v)
            return fn(*bound.args, **bound.kwargs)

        return wrapped


def relative_difference(a, b) -> float:
    """The largest leaf's max |a - b| / max |b| (Adam with optax's own Python floats)."""
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
                     / np.max(np.abs(np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


if __name__ == "__main__":  # the float32 run: python -m tests.optax_cases
    import optax

    names, failures = [*TRANSFORMS, *OPTIMIZERS], {}
    pairs = {name: _pair(name, jnp.float32, Float32Hyperparams(optax)) for name in names}
    pairs["default_adam"] = (O.adam(1e-2), optax.adam(1e-2))  # optax's own Python floats
    runs = run_all(pairs, jnp.float32)
    for name in names:
        try:
            assert_same(*runs[name], jnp.float32)
        except AssertionError as e:
            failures[name] = str(e)
    json.dump({"failures": failures,
               "default_difference": relative_difference(*runs["default_adam"])}, sys.stdout)
