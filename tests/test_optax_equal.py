"""funcnn's transforms, optimizers and schedules equal optax's, name for name.

Each pair runs 1000 updates on the same random gradients, each inside its own ``lax.scan``
(all the cases in one compiled program, see ``run_all``);
the parameter trajectories must agree to 1e-12 in float64 (here) and 1e-6 in float32
(in a subprocess without x64), relative to the trajectory's scale. Then funcnn's and
optax's pieces mix inside one chain either way, and the cells of optax's "Getting
started" notebook, written with funcnn's optimizers, give optax's numbers. The cases
are in ``optax_cases.py``. Skipped where optax is not installed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from funcnn import optim as O  # noqa: E402
from tests.optax_cases import (NOTEBOOK, OPTIMIZERS, SCHEDULES, STEPS,  # noqa: E402
                               TRANSFORMS, _getting_started, _grads, _lin, _pair, _params,
                               _run, _trajectory, assert_same, compare, run_all)

optax = pytest.importorskip("optax")


@pytest.fixture(scope="module")
def float64_runs():
    """Every case's two trajectories from one compiled program (see run_all); None if
    building it fails, and each case then runs alone, so that the failure is its own."""
    names = [*TRANSFORMS, *OPTIMIZERS]
    try:
        return run_all({n: _pair(n, jnp.float64, optax) for n in names}, jnp.float64)
    except Exception:  # noqa: BLE001
        return None


@pytest.mark.parametrize("name", list(TRANSFORMS) + list(OPTIMIZERS))
def test_equals_optax_over_1000_steps_float64(name, float64_runs):
    if float64_runs is None:
        compare(name, jnp.float64, optax)
    else:
        assert_same(*float64_runs[name], jnp.float64)


def test_equals_optax_over_1000_steps_float32():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "tests.optax_cases"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["failures"] == {}
    # With optax's Python-float hyperparameters (see Float32Hyperparams) Adam parts by
    # about 7e-6 after 1000 float32 steps: the size of float32(0.999)'s rounding.
    assert result["default_difference"] < 2e-5


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_equals_optax_at_every_step(name):
    ours, theirs = SCHEDULES[name](O), SCHEDULES[name](optax)
    steps = jnp.arange(STEPS, dtype=jnp.float64)  # see _f64
    a, b = jax.vmap(ours)(steps), jax.vmap(theirs)(steps)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b, np.float64), rtol=1e-12, atol=1e-15)


def test_inject_hyperparams_state_reads_like_optax():
    params, grads = _params(jnp.float64), _grads(jnp.float64, steps=5)
    ours = O.inject_hyperparams(O.adam)(learning_rate=_lin(O))
    theirs = optax.inject_hyperparams(optax.adam)(learning_rate=_lin(optax))
    s, t = ours.init(params), theirs.init(params)
    ours_update, theirs_update = jax.jit(ours.update), jax.jit(theirs.update)  # 2 compiles
    for i in range(5):
        g = jax.tree.map(lambda x: x[i], grads)
        (_, s), (_, t) = ours_update(g, s, params), theirs_update(g, t, params)
        assert float(s.hyperparams["learning_rate"]) == pytest.approx(
            float(t.hyperparams["learning_rate"]), rel=1e-12)
    # a number may be changed between steps, as in optax
    s = O.inject_hyperparams(O.sgd)(learning_rate=0.1).init(params)
    s.hyperparams["learning_rate"] = jnp.asarray(0.5)
    u, _ = O.inject_hyperparams(O.sgd)(learning_rate=0.1).update(params, s, params)
    np.testing.assert_allclose(u["b"], -0.5 * params["b"])


def test_multisteps_has_updated_and_equals_a_k_times_larger_batch():
    params = _params(jnp.float64)
    grads = _grads(jnp.float64, steps=6)
    big = jax.tree.map(lambda g: g.reshape(2, 3, *g.shape[1:]).mean(1), grads)
    opt = O.MultiSteps(O.adam(0.1), 3, accumulator_dtype=jnp.float64)
    s, p = opt.init(params), params
    flags = []
    update = jax.jit(opt.update)  # one compile, not one per op
    for i in range(6):
        u, s = update(jax.tree.map(lambda x: x[i], grads), s, p)
        p = O.apply_updates(p, u)
        flags.append(bool(opt.has_updated(s)))
    assert flags == [False, False, True, False, False, True]
    ref = _run(O.adam(0.1), params, big)
    assert_same(p, jax.tree.map(lambda x: x[-1], ref), jnp.float64)


def test_multisteps_skips_gradients_that_are_not_finite_as_optax():
    """NaN and inf gradients (steps 1 and 4 of 8) are left out of the accumulation, the
    counts and the inner state; the other steps train as optax's, and skip_state reports
    the same."""
    params, grads = _params(jnp.float64), _grads(jnp.float64, steps=8)
    grads["w"] = grads["w"].at[1, 0, 0].set(jnp.nan).at[4, 2, 1].set(jnp.inf)
    ours = O.MultiSteps(O.adam(0.1), 2, should_skip_update_fn=O.skip_not_finite,
                        accumulator_dtype=jnp.float64)
    theirs = optax.MultiSteps(optax.adam(0.1), 2, should_skip_update_fn=optax.skip_not_finite,
                              accumulator_dtype=jnp.float64)
    run = jax.jit(lambda p, gs: (_trajectory(ours, p, gs), _trajectory(theirs, p, gs)))
    a, b = run(params, grads)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(a))
    assert_same(a, b, jnp.float64)
    s = ours.init(params)
    assert jax.tree.map(lambda v: v.item(), s.skip_state) == {"should_skip": False,
                                                              "num_not_finite": 0}
    for i in range(3):
        _, s = ours.update(jax.tree.map(lambda g: g[i], grads), s, params)
    # step 1 was skipped: two gradients taken (one inner update), skip_state from step 2
    assert (int(s.mini_step), int(s.gradient_step)) == (0, 1)
    assert int(s.skip_state["num_not_finite"]) == 0
    _, s = ours.update(jax.tree.map(lambda g: g[1], grads), s, params)
    assert bool(s.skip_state["should_skip"]) and int(s.skip_state["num_not_finite"]) == 1
    assert (int(s.mini_step), int(s.gradient_step)) == (0, 1)


def test_multisteps_skip_function_errors():
    params = _params(jnp.float64)
    with pytest.raises(TypeError, match="should_skip_update_fn must be a function"):
        O.MultiSteps(O.sgd(0.1), 2, should_skip_update_fn=True)
    bad = O.MultiSteps(O.sgd(0.1), 2, should_skip_update_fn=lambda u, n, p: (1.0, ()))
    with pytest.raises(ValueError, match="must return a boolean scalar first"):
        bad.init(params)


def test_pieces_mix_inside_one_chain_either_way():
    params, grads = _params(jnp.float64), _grads(jnp.float64)
    ref = _run(optax.chain(optax.clip_by_global_norm(3.0), optax.scale_by_adam(),
                           optax.scale(-1e-2)), params, grads)
    ours_outside = O.chain(optax.clip_by_global_norm(3.0), O.scale_by_adam(), optax.scale(-1e-2))
    optax_outside = optax.chain(O.clip_by_global_norm(3.0), optax.scale_by_adam(), O.scale(-1e-2))
    nested = O.chain(optax.chain(O.clip_by_global_norm(3.0), optax.scale_by_adam()),
                     O.scale(-1e-2))
    runs = run_all({"mixed": (ours_outside, optax_outside, nested)}, jnp.float64)
    for trajectory in runs["mixed"]:
        assert_same(trajectory, ref, jnp.float64)
    # funcnn's names still reach the funcnn links of a mixed chain
    s = ours_outside.init(params)
    assert set(O.hyperparams(s)) == {"b1", "b2", "eps", "eps_root"}


@pytest.mark.parametrize("cell", list(NOTEBOOK))
def test_optax_getting_started_cells_give_optax_numbers(cell):
    ours, s = _getting_started(O, NOTEBOOK[cell](O))
    theirs, t = _getting_started(optax, NOTEBOOK[cell](optax))
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    np.testing.assert_allclose(ours, [0.5, 0.5], atol=1e-2)  # the notebook's own check
    if cell == "inject_adamw":  # optax's schedule runs in float32 at its int32 count (_f64)
        assert float(s.hyperparams["learning_rate"]) == pytest.approx(
            float(t.hyperparams["learning_rate"]), rel=1e-6)
