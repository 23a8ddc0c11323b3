"""Gradient-flow diagnostics (Nielsen ch. 5): the recorded numbers are the true ones,
both engines agree, recording changes nothing, sweeps record what fit records, and
bad requests are clear errors."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import data, diagnostics, experiment, losses, nn, optim, sweep, train

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

F64 = jnp.float64
X, Y = data.spiral_data(20, 3)  # 60 points
X64 = X.astype(np.float64)
SCE = losses.softmax_cross_entropy
SIGMOID_NET = nn.serial(nn.dense(6), nn.sigmoid(), nn.dense(5), nn.tanh(), nn.dense(3))
RELU_NET = nn.serial(nn.dense(6), nn.relu(), nn.dense(5), nn.relu(), nn.dense(3))


# One optimizer per learning rate: optimizers (like layers) are static arguments of fit's
# compiled program, so the same model, optimizer and settings compile once per module.
_sgd = functools.cache(optim.sgd)


def _fit(model, *, engine="backprop", epochs=1, batch_size=None, lr=2.0, **kw):
    opt = _sgd(lr)
    state = train.init_state(model, opt, jax.random.key(0), (2,), dtype=F64)
    return state, *train.fit(model, SCE, opt, state, X64, Y, epochs=epochs,
                             batch_size=batch_size, progress=False, shuffle=False, **kw)


def test_grad_norms_equal_jax_grad_per_layer():
    """One full-batch step: the recorded norms are those of jax.grad at the start."""
    state0, _, h = _fit(SIGMOID_NET, diagnostics=["grad_norm", "update_ratio"])
    g = jax.jit(jax.grad(lambda p: SCE(SIGMOID_NET.apply(p, jnp.asarray(X64)), Y)))(
        state0.params)
    for i in (0, 2, 4):
        for leaf in ("w", "b"):
            want = float(jnp.linalg.norm(getattr(g[i], leaf)))
            np.testing.assert_allclose(h[f"grad_norm[{i}].{leaf}"][0], want, rtol=1e-10)
    w0 = state0.params[0].w
    np.testing.assert_allclose(h["update_ratio[0].w"][0],
                               2.0 * float(jnp.linalg.norm(g[0].w)) / float(jnp.linalg.norm(w0)),
                               rtol=1e-10)
    # zero-initialised biases: the ratio to the new bias, i.e. 1, never inf
    np.testing.assert_allclose(h["update_ratio[0].b"][0], 1.0, rtol=1e-12)


def test_saturation_and_dead_units_equal_a_numpy_count():
    for model, name in ((SIGMOID_NET, "saturation"), (RELU_NET, "dead_units")):
        state0, _, h = _fit(model, diagnostics=[name])
        p = jax.tree.map(np.asarray, state0.params)
        a1 = X64 @ p[0].w + p[0].b
        if name == "saturation":
            s1 = 1 / (1 + np.exp(-a1))
            a3 = np.tanh(s1 @ p[2].w + p[2].b)
            want1 = np.mean(4 * s1 * (1 - s1) < 0.05)
            want3 = np.mean(1 - a3 ** 2 < 0.05)
        else:
            r1 = np.maximum(a1, 0)
            r3 = np.maximum(r1 @ p[2].w + p[2].b, 0)
            want1, want3 = np.mean(np.all(r1 <= 0, 0)), np.mean(np.all(r3 <= 0, 0))
        assert h[f"{name}[1]"][0] == pytest.approx(want1, abs=1e-15)
        assert h[f"{name}[3]"][0] == pytest.approx(want3, abs=1e-15)
    # a saturated net does show it
    big = nn.serial(nn.dense(6, init="nielsen_large"), nn.sigmoid(), nn.dense(3))
    opt = optim.sgd(0.1)
    st = train.init_state(big, opt, jax.random.key(0), (2,), dtype=F64)
    _, h = train.fit(big, SCE, opt, st, 50 * X64, Y, epochs=1, diagnostics=["saturation"],
                     progress=False)
    assert h["saturation[1]"][0] > 0.5


@pytest.mark.parametrize("engine", ["backprop", "jax"])
def test_recording_changes_nothing_bitwise(engine):
    kw = dict(engine=engine, epochs=3, batch_size=20)
    _, plain, h_plain = _fit(SIGMOID_NET, **kw)
    _, rec, h_rec = _fit(SIGMOID_NET, diagnostics=True, **kw)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(rec.params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(h_plain["loss"], h_rec["loss"])


def test_both_engines_record_the_same_numbers():
    kw = dict(epochs=3, batch_size=20, diagnostics=True)
    _, _, h1 = _fit(SIGMOID_NET, engine="backprop", **kw)
    _, _, h2 = _fit(SIGMOID_NET, engine="jax", **kw)
    keys = [k for k in h1.metrics if diagnostics.is_column(k)]
    assert len(keys) == 6 + 6 + 2  # grad_norm and update_ratio x 6 arrays, 2 saturations
    assert keys == [k for k in h2.metrics if diagnostics.is_column(k)]
    for k in keys:
        np.testing.assert_allclose(h1[k], h2[k], rtol=1e-10, atol=1e-15, err_msg=k)


def test_every_k_steps_are_block_means_of_the_steps():
    _, _, h1 = _fit(RELU_NET, epochs=2, batch_size=20, diagnostics=["grad_norm", "dead_units"],
                    diagnostics_every=1)
    _, _, h4 = _fit(RELU_NET, epochs=2, batch_size=20, diagnostics=["grad_norm", "dead_units"],
                    diagnostics_every=4)
    np.testing.assert_array_equal(h1.steps["step"], np.arange(1, 7))
    np.testing.assert_array_equal(h4.steps["step"], [4])
    for k in ("grad_norm[2].b", "dead_units[1]"):
        np.testing.assert_allclose(h4.steps[k], [h1.steps[k][:4].mean()], rtol=1e-13)
    assert not any(diagnostics.is_column(k) for k in h4.metrics)


def test_sweep_records_the_same_numbers_as_fit():
    opt = _sgd(0.0)  # one optimizer, the learning rate set in the state: fit compiles once
    res = sweep.run(SIGMOID_NET, SCE, opt, X64, Y,
                    sweep.grid(learning_rate=[0.5, 2.0]), epochs=2, batch_size=20,
                    dtype=F64, diagnostics=True, shuffle=False, strategy="loop")
    for i, lr in enumerate((0.5, 2.0)):
        st = train.init_state(SIGMOID_NET, opt, jax.random.key(0), (2,), dtype=F64)
        st = dataclasses.replace(st, opt_state=optim.set_hyperparams(
            st.opt_state, learning_rate=jnp.asarray(lr, F64)))
        _, h = train.fit(SIGMOID_NET, SCE, opt, st, X64, Y, epochs=2, batch_size=20,
                         diagnostics=True, shuffle=False, progress=False)
        for k in (k for k in h.metrics if diagnostics.is_column(k)):
            np.testing.assert_allclose(res.history[k][i], h[k], rtol=1e-12, err_msg=k)
    assert "grad_norm" not in res.summary()  # the table stays readable
    blocks = sweep.run(SIGMOID_NET, SCE, opt, X64, Y,
                       sweep.grid(learning_rate=[0.5, 2.0]), epochs=2, batch_size=20,
                       dtype=F64, diagnostics=["grad_norm"], diagnostics_every=2,
                       shuffle=False, strategy="loop")
    np.testing.assert_array_equal(blocks.steps["step"], [2, 4, 6])
    assert blocks.steps["grad_norm[0].b"].shape == (2, 3)
    st = train.init_state(SIGMOID_NET, opt, jax.random.key(0), (2,), dtype=F64)
    st = dataclasses.replace(st, opt_state=optim.set_hyperparams(
        st.opt_state, learning_rate=jnp.asarray(2.0, F64)))
    _, h = train.fit(SIGMOID_NET, SCE, opt, st, X64, Y, epochs=2, batch_size=20,
                     diagnostics=["grad_norm"], diagnostics_every=2, shuffle=False,
                     progress=False)
    np.testing.assert_allclose(blocks.steps["grad_norm[0].b"][1], h.steps["grad_norm[0].b"],
                               rtol=1e-12)


def test_table_plot_and_run_folder(tmp_path):
    _, _, h = _fit(SIGMOID_NET, epochs=2, diagnostics=True)
    text = diagnostics.table(h)
    assert re.search(r"^\| \[0\]\.b +\|", text, re.M) and "saturation (last)" in text
    import matplotlib
    matplotlib.use("Agg")
    fig = diagnostics.plot_speed_of_learning(h)
    assert len(fig.axes[0].lines) == 3 and fig.axes[0].get_yscale() == "log"

    @dataclasses.dataclass(frozen=True)
    class Config:
        epochs: int = 2

    def run(r):
        opt = optim.sgd(1.0)
        state = train.init_state(RELU_NET, opt, r.key, (2,))
        r.fit(RELU_NET, SCE, opt, state, X, Y, epochs=r.config.epochs, batch_size=30,
              diagnostics=["grad_norm", "dead_units"])

    experiment.main("diag", Config, run, ["--runs-dir", str(tmp_path), "--no-plots"])
    (folder,) = (tmp_path / "diag").iterdir()
    table = (folder / "diagnostics.md").read_text()
    assert "dead_units" in table and re.search(r"^\| \[2\]\.w +\|", table, re.M)


def test_bad_requests_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown diagnostic\(s\) \['speed'\]; choose from"):
        _fit(SIGMOID_NET, diagnostics=["speed"])
    with pytest.raises(ValueError, match="diagnostics_every must be a positive"):
        _fit(SIGMOID_NET, diagnostics=True, diagnostics_every=0)
    with pytest.raises(ValueError, match="beyond the run's 3 steps"):
        _fit(SIGMOID_NET, diagnostics=True, diagnostics_every=4, epochs=3)
    with pytest.raises(ValueError, match="'saturation' needs sigmoid or tanh layers"):
        _fit(RELU_NET, diagnostics=["saturation"])
    with pytest.raises(ValueError, match="'dead_units' needs ReLU layers"):
        _fit(SIGMOID_NET, diagnostics=["dead_units"])
    with pytest.raises(ValueError, match="update_ratio is recorded once per epoch"):
        _fit(SIGMOID_NET, diagnostics=["update_ratio"], diagnostics_every=1)
    _, _, h = _fit(SIGMOID_NET, diagnostics=True, diagnostics_every=1)  # all that apply
    assert "grad_norm[0].b" in h.steps and not any("update_ratio" in k for k in h.steps)
    with pytest.raises(ValueError, match="needs diagnostics="):
        _fit(SIGMOID_NET, diagnostics_every=2)
    with pytest.raises(ValueError, match="'saturation' needs"):
        sweep.run(RELU_NET, SCE, optim.sgd(0.1), X64, Y, sweep.grid(learning_rate=[0.1]),
                  epochs=1, diagnostics=["saturation"])
    with pytest.raises(ValueError, match="no grad_norm columns"):
        diagnostics.plot_speed_of_learning(train.History())


def test_nielsen_vanishing_experiment_pieces():
    """The chapter-5 script's nets and its initial speed of learning, on MNIST-shaped
    random images (the real run needs the MNIST files): sigmoid with Nielsen's init
    vanishes towards the input, ReLU with He's init does not."""
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
    import nielsen_vanishing as nv

    rng = np.random.default_rng(0)
    x = (rng.random((1000, 784)) < 0.2).astype(np.float32) * rng.random((1000, 784))
    targets = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 1000)]
    ratios = {}
    for act, init in (("sigmoid", "nielsen"), ("relu", "he")):
        model = nv.build(nv.Config(hidden_layers=4, activation=act, init=init))
        params = model.init(jax.random.key(1), (784,))
        speeds = nv.initial_speeds(model, params, x, targets)
        assert len(speeds) == 4
        ratios[act] = speeds[-1] / speeds[0]
    assert ratios["sigmoid"] > 10 and ratios["relu"] < 4, ratios
    with pytest.raises(ValueError, match="hidden_layers must be 1 to 4"):
        nv.Config(hidden_layers=5)
