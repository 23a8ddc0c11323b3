"""Tests of funcnn.sweep: every configuration equals the same one trained alone with fit.

Small and fast: a 2-8-3 network on 60 spiral points, 3 epochs of 3 minibatch steps,
float64 so that "equal to fit" can be checked to ~1e-10.
"""

import dataclasses
import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from funcnn import losses, nn, optim, sweep, train  # noqa: E402
from funcnn.data import spiral_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
X, Y = spiral_data(20, 3)            # 60 examples
MODEL = nn.serial(nn.dense(8), nn.relu(), nn.dense(3))
LOSS = losses.softmax_cross_entropy
OPT = optim.adam(optim.inverse_time_decay(0.01, 0.0))  # "decay" is sweepable
EPOCHS, BATCH = 3, 20                # 3 shuffled minibatch steps per epoch
F64 = jnp.float64
RTOL, ATOL = 1e-9, 1e-12


@functools.cache
def _adam(lr, decay):
    """A configuration's own optimizer, built once: optimizers hash by identity, so the
    fits of one (lr, decay) (other seeds, penalties) share fit's compiled programs."""
    return optim.adam(optim.inverse_time_decay(lr, decay))


def _fit(lr=0.01, decay=0.0, seed=0, model=MODEL, penalty=None, opt=None, epochs=EPOCHS,
         batch_size=BATCH, **kw):
    """One configuration trained alone, as a user would: its own optimizer and fit."""
    opt = opt or _adam(lr, decay)
    state = train.init_state(model, opt, jax.random.key(seed), (2,), dtype=F64)
    return train.fit(model, LOSS, opt, state, X, Y, epochs=epochs, batch_size=batch_size,
                     penalty=penalty, progress=False, **kw)


def _sweep(space, **kw):
    kw = {"epochs": EPOCHS, "batch_size": BATCH, "dtype": F64, **kw}
    return sweep.run(kw.pop("model", MODEL), LOSS, kw.pop("opt", OPT), X, Y, space, **kw)


def _assert_equals_fit(res, i, state, history, metrics=("loss", "data_loss", "accuracy")):
    got = res.params_of(i)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    for m in metrics:
        np.testing.assert_allclose(res.history[m][i], history[m], rtol=RTOL, atol=ATOL,
                                   err_msg=f"config {i}, metric {m}")


SPACE = sweep.grid(learning_rate=[0.01, 0.05], decay=[0.0, 0.1]) * sweep.grid(seed=[0, 3])
STRATEGIES = [("vmap", None), ("chunked", 3), ("chunked", 1), ("loop", None)]


@pytest.fixture(scope="module")
def reference():
    """fit's result for each of SPACE's 8 configurations."""
    return [_fit(lr=c["learning_rate"], decay=c["decay"], seed=c["seed"])
            for c in SPACE.rows()]


@pytest.mark.parametrize("strategy,chunk", STRATEGIES)
def test_every_configuration_equals_fit(reference, strategy, chunk):
    res = _sweep(SPACE, strategy=strategy, chunk_size=chunk)
    assert res.strategy == strategy and len(res) == 8 and not res.diverged.any()
    for i, (state, history) in enumerate(reference):
        _assert_equals_fit(res, i, state, history)


def test_sharded_equals_fit_in_process(reference):
    if jax.device_count() < 2:
        pytest.skip("one device: sharding runs in the subprocess test below "
                    "(XLA_FLAGS=--xla_force_host_platform_device_count=2)")
    res = _sweep(SPACE, strategy="sharded", chunk_size=1)
    assert res.devices == jax.device_count()
    for i, (state, history) in enumerate(reference):
        _assert_equals_fit(res, i, state, history)


_SHARDED_SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import numpy as np
    from tests import test_sweep as t
    assert jax.device_count() == 2, jax.devices()
    space = t.sweep.grid(learning_rate=[0.01, 0.05, 0.02], seed=[0, 3])  # 6: 3 per device
    space = space + t.sweep.zipped(learning_rate=[1e300], seed=[1])     # 7: padded to 8
    fits = [t._fit(lr=c["learning_rate"], seed=c["seed"]) for c in space.rows()[:6]]
    for chunk in (1, None):
        res = t._sweep(space, strategy="sharded", chunk_size=chunk)
        assert res.devices == 2 and len(res) == 7
        assert res.diverged.tolist() == [False] * 6 + [True], res.diverged
        for i, fit in enumerate(fits):
            t._assert_equals_fit(res, i, *fit)
    auto = t._sweep(space)
    assert (auto.strategy, auto.chunk_size, auto.devices) == ("sharded", 1, 2), auto
    print("OK")
""")


def test_sharded_over_two_cpu_devices_equals_fit():
    """Real sharding: a fresh process whose CPU is split into two devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                          + " --xla_force_host_platform_device_count=2").strip(),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


def test_chunked_and_unchunked_agree():
    # SPACE's shapes and names: the programs compiled above are reused (no compile here)
    whole = _sweep(SPACE, strategy="vmap")
    chunks = _sweep(SPACE, strategy="chunked", chunk_size=3)  # 3 + 3 + a remainder of 2
    for m in ("loss", "accuracy"):
        np.testing.assert_allclose(chunks.history[m], whole.history[m], rtol=RTOL, atol=ATOL)
    for a, b in zip(jax.tree.leaves(chunks.params), jax.tree.leaves(whole.params)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def test_one_configuration_equals_fit_with_validation():
    res = _sweep(sweep.grid(learning_rate=[0.02]), seed=5, validation_data=(X[::2], Y[::2]))
    state, history = _fit(lr=0.02, seed=5, validation_data=(X[::2], Y[::2]))
    assert res.config(0) == {"learning_rate": 0.02, "seed": 5}
    _assert_equals_fit(res, 0, state, history,
                       ("loss", "accuracy", "learning_rate", "val_loss", "val_accuracy"))


def test_smaller_last_batch_equals_fit_with_drop_remainder_false():
    """60 examples in batches of 25: two full steps and one of 10 per epoch, as fit's."""
    res = _sweep(sweep.grid(learning_rate=[0.02, 0.05]), batch_size=25,
                 drop_remainder=False, strategy="vmap")
    for i, c in enumerate(res.rows()):
        _assert_equals_fit(res, i, *_fit(lr=c["learning_rate"], batch_size=25,
                                          drop_remainder=False))
    dropped = _sweep(sweep.grid(learning_rate=[0.02]), batch_size=25, strategy="vmap")
    assert not np.allclose(dropped.history["loss"][0], res.history["loss"][0])
    with pytest.raises(TypeError, match="drop_remainder must be True or False"):
        _sweep(sweep.grid(learning_rate=[0.02]), drop_remainder="no")


def test_same_program_for_new_values_and_dropout_rate_swept_through_a_factory():
    traces = []

    def make_model(dropout_rate):
        if not isinstance(dropout_rate, float):
            traces.append(1)  # a traced array: compiling (values are checked as floats)
        return nn.serial(nn.dense(8), nn.relu(), nn.dropout(dropout_rate), nn.dense(3))

    a = _sweep(sweep.grid(dropout_rate=[0.0, 0.3], learning_rate=[0.01, 0.05]),
               model=make_model, strategy="vmap")
    n = len(traces)
    assert n >= 1
    b = _sweep(sweep.grid(dropout_rate=[0.1, 0.5], learning_rate=[0.02, 0.2]),
               model=make_model, strategy="vmap")
    assert len(traces) == n, "a sweep with new values only must reuse the compiled program"
    for res, i in ((a, 2), (b, 3)):  # one fit per model: each compiles anew
        c = res.rows()[i]
        _assert_equals_fit(res, i, *_fit(lr=c["learning_rate"],
                                          model=make_model(c["dropout_rate"])))
    assert b.config(3) == {"dropout_rate": 0.5, "learning_rate": 0.2, "seed": 0}
    assert not np.allclose(a.history["loss"][0], a.history["loss"][2])  # rates matter


def test_penalty_strengths_by_name_equal_fit():
    res = _sweep(sweep.grid(l2=[0.0, 1e-2], l1=[1e-3]), strategy="loop")
    for i, c in enumerate(res.rows()):
        pen = train.Penalty(l1=c["l1"], l2=c["l2"])
        _assert_equals_fit(res, i, *_fit(penalty=pen))
    assert res.history["loss"][1, -1] > res.history["data_loss"][1, -1]
    dense = _sweep(sweep.zipped(weight_l2=[5e-4, 1e-2], bias_l2=[5e-4, 0.0]),
                   strategy="loop")
    params = train.init_state(MODEL, OPT, jax.random.key(0), (2,), dtype=F64).params
    for i, c in enumerate(dense.rows()):
        pen = train.dense_penalty(params, weight_l2=c["weight_l2"], bias_l2=c["bias_l2"])
        _assert_equals_fit(dense, i, *_fit(penalty=pen))


def test_penalty_factory_and_fixed_penalty():
    named = _sweep(sweep.grid(l2=[0.0, 1e-2], l1=[1e-3]), strategy="loop")  # compiled above
    factory = _sweep(sweep.grid(strength=[0.0, 1e-2]), strategy="loop",
                     penalty=lambda strength: train.Penalty(l1=1e-3, l2=strength))
    for m in ("loss", "data_loss", "accuracy"):
        np.testing.assert_allclose(factory.history[m], named.history[m], rtol=RTOL, atol=ATOL)
    fixed = _sweep(sweep.grid(learning_rate=[0.01, 0.05]), strategy="loop",
                   penalty=train.Penalty(l2=1e-2))
    _assert_equals_fit(fixed, 1, *_fit(lr=0.05, penalty=train.Penalty(l2=1e-2)))


def test_chain_hyperparameters_and_momentum_without_keeping_params():
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(0.1, momentum=0.5))
    res = _sweep(sweep.zipped(momentum=[0.0, 0.9], max_norm=[0.1, 5.0]), opt=opt,
                 keep_params=False)
    assert res.params is None
    with pytest.raises(ValueError, match="keep_params=False"):
        res.params_of(0)
    for i, c in enumerate(res.rows()):
        ref = optim.chain(optim.clip_by_global_norm(c["max_norm"]),
                          optim.sgd(0.1, momentum=c["momentum"]))
        history = _fit(opt=ref)[1]
        for m in ("loss", "accuracy"):
            np.testing.assert_allclose(res.history[m][i], history[m], rtol=RTOL, atol=ATOL)


# Eight configurations named as SPACE, so that the programs compiled for SPACE serve.
DIVERGING = sweep.zipped(learning_rate=[0.01, 1e300, 0.05, 0.01, 0.02, 1e300, 0.03, 0.04],
                         decay=[0.0] * 8, seed=[0, 0, 0, 1, 2, 3, 4, 5])


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_a_diverging_configuration_is_marked_and_the_others_finish(strategy):
    res = _sweep(DIVERGING, strategy=strategy)
    assert res.diverged.tolist() == [False, True, False, False, False, True, False, False]
    with pytest.raises(train.DivergedError) as err:
        _fit(lr=1e300)
    assert res.diverged_epoch.tolist() == [0, err.value.epoch, 0, 0, 0, err.value.epoch, 0, 0]
    assert np.isnan(res.final["loss"][1])
    for i in (0, 2, 7):
        c = DIVERGING.rows()[i]
        _assert_equals_fit(res, i, *_fit(lr=c["learning_rate"], seed=c["seed"]))
    assert not res.diverged[res.best("accuracy")["index"]]
    assert set(res.ranking("loss")[-2:].tolist()) == {1, 5}


@pytest.mark.parametrize("make,match", [
    (lambda: sweep.grid(), "empty grid"),
    (lambda: sweep.grid(learning_rate=[]), "no values"),
    (lambda: sweep.grid(learning_rate=0.1), r"learning_rate=\[0.1\]"),
    (lambda: sweep.configs([{"learning_rate": 0.1}, {"decay": 0.1}]), "needs the names"),
    (lambda: sweep.grid(seed=[0]) * sweep.grid(seed=[1]), "both sweep"),
    (lambda: _sweep(sweep.grid(lr=[0.1])), r"unknown name 'lr'.*'learning_rate'"),
    (lambda: _sweep(sweep.grid(momentum=[0.9])), r"unknown name 'momentum'.*\['b1'"),
    (lambda: _sweep(sweep.grid(learning_rate=[[0.1, 0.2]])), r"shape \(\).*\(1, 2\)"),
    (lambda: _sweep(sweep.grid(learning_rate=[-1.0])),
     "learning_rate=-1.0 is not a valid value.*>= 0"),
    (lambda: _sweep(sweep.grid(seed=[-1])), "seed values must be integers"),
    (lambda: _sweep(sweep.grid(learning_rate=[0.1]), chunk_size=0), "chunk_size must be"),
    (lambda: _sweep(sweep.grid(learning_rate=[0.1]), strategy="chunked", chunk_size=1.5),
     "chunk_size must be"),
    (lambda: _sweep(sweep.grid(learning_rate=[0.1]), strategy="pmap"), "strategy must be"),
    (lambda: _sweep(sweep.grid(learning_rate=[0.1]), strategy="vmap", chunk_size=2),
     "chunk_size applies"),
    (lambda: _sweep(sweep.grid(l1=[0.1], weight_l2=[0.1])), "not both"),
    (lambda: _sweep(sweep.grid(l2=[0.1]), penalty=train.Penalty(l2=1.0)), "unknown name 'l2'"),
    (lambda: _sweep(sweep.grid(dropout_rate=[1.5]),
                    model=lambda dropout_rate: nn.serial(nn.dropout(dropout_rate), MODEL)),
     "factory rejected"),
    (lambda: _sweep(sweep.grid(learning_rate=[0.1]),
                    model=lambda dropout_rate: MODEL), r"needs \['dropout_rate'\]"),
    (lambda: _sweep(sweep.grid(learning_rate=[0.1]), epochs=0), "epochs must be"),
    (lambda: _sweep(sweep.grid(learning_rate=[0.1]),
                    opt=optim.adam(optim.cosine_decay_schedule(0.1, 100))),
     r"The learning rate is a schedule here: sweep its numbers, \['init_value'\]"),
    (lambda: _sweep(sweep.grid(learning_rate=[0.1]), opt=optim.adamw(
        optim.cosine_decay_schedule(0.1, 100), weight_decay=optim.linear_schedule(1e-4, 0, 9))),
     r"\['1/init_value', '2/init_value', 'end_value'\]\. \(A name 'i/x' is x of the i-th "
     r"link of the optimizer's chain, counted from 0; optim\.hyperparams"),
    (lambda: _sweep(sweep.grid(epochs=[1, 2])), r"epochs is sweep.run's own argument"),
    (lambda: _sweep(sweep.grid(weight_decay=[1e-4])),
     r"no weight decay: use optim\.adamw\(learning_rate, weight_decay=\.\.\.\)"),
    # a swept value that changes the architecture: a layer's size, or which layer
    (lambda: _sweep(sweep.grid(width=[4, 8]),
                    model=lambda width: nn.serial(nn.dense(width), nn.relu(), nn.dense(3))),
     r"builds a different network for \{'width': 8\} than for \{'width': 4\}.*"
     r"call sweep.run once per architecture"),
    (lambda: _sweep(sweep.grid(width=[4]),
                    model=lambda width: nn.serial(nn.dense(width), nn.relu(), nn.dense(3))),
     r"failed when called with its swept values as traced arrays \(width\).*dense: "
     r"features must be a positive int.*call sweep.run once per architecture"),
    (lambda: _sweep(sweep.grid(act=[0, 1]), model=lambda act: nn.serial(
        nn.dense(8), nn.relu() if act == 0 else nn.tanh(), nn.dense(3))),
     r"traced arrays \(act\).*TracerBoolConversionError.*not choose its structure"),
])
def test_bad_input_raises_a_clear_error(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def _picky(rate):
    """A factory that refuses traced values with a message-less TypeError."""
    if not isinstance(rate, float):
        raise TypeError
    return MODEL


@pytest.mark.parametrize("make,match", [
    (lambda: _sweep(sweep.grid(rate=[0.1, 0.2]), model=_picky),
     r"traced arrays \(rate\), as a sweep calls it inside vmap and jit: TypeError:  A swept"),
])
def test_factory_errors_without_a_message(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_spaces_grid_order_products_sums_and_random_draws():
    g = sweep.grid(a=[1, 2], b=[10, 20, 30])
    assert [tuple(r.values()) for r in g.rows()] == [(1, 10), (1, 20), (1, 30),
                                                      (2, 10), (2, 20), (2, 30)]
    assert [k for k, _ in (g * sweep.grid(c=[0])).grid_axes] == ["a", "b", "c"]
    assert len(g + g) == 12 and (g + g).grid_axes is None
    key = jax.random.key(7)
    r1 = sweep.random(key, 50, lr=sweep.log_uniform(1e-4, 1e-1), s=sweep.randint(0, 5),
                      c=[0.1, 0.2])
    r2 = sweep.random(key, 50, lr=sweep.log_uniform(1e-4, 1e-1), s=sweep.randint(0, 5),
                      c=[0.1, 0.2])
    for k in ("lr", "s", "c"):
        np.testing.assert_array_equal(r1.columns[k], r2.columns[k])
    assert 1e-4 <= r1.columns["lr"].min() and r1.columns["lr"].max() < 1e-1
    assert set(r1.columns["s"]) <= set(range(5)) and set(r1.columns["c"]) == {0.1, 0.2}
    with pytest.raises(ValueError, match="0 < low < high"):
        sweep.log_uniform(0.0, 1.0)


def test_default_strategy_per_backend():
    assert sweep.default_strategy("cpu", 1) == ("chunked", 1)
    assert sweep.default_strategy("cpu", 2) == ("sharded", 1)
    assert sweep.default_strategy("gpu", 1) == ("vmap", None)
    assert sweep.default_strategy("tpu", 4) == ("sharded", None)


def test_use_cpu_devices_after_start_says_how_to_fix():
    jax.devices()  # JAX has started in this process
    with pytest.raises(RuntimeError, match="xla_force_host_platform_device_count"):
        sweep.use_cpu_devices(2)


def test_results_best_and_json_csv_export(tmp_path):
    res = _sweep(SPACE, strategy="loop")
    best = res.best("accuracy")
    assert best["accuracy"] == res.final["accuracy"].max()
    assert best["index"] == int(np.argmax(res.final["accuracy"]))
    assert res.best("loss")["loss"] == res.final["loss"].min()
    # history's "learning_rate" (the decayed rate in effect) must not hide the swept one
    assert {"learning_rate", "final_learning_rate"} <= set(best)
    res.to_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["strategy"] == "loop" and len(data["rows"]) == 8
    assert data["rows"][3]["decay"] == 0.1 and data["rows"][3]["seed"] == 3
    assert len(data["rows"][3]["history"]["loss"]) == EPOCHS
    assert data["grid"] == {"learning_rate": [0.01, 0.05], "decay": [0.0, 0.1], "seed": [0, 3]}
    res.to_csv(tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("index,learning_rate,decay,seed,") and len(lines) == 9
    res.to_csv(tmp_path / "h.csv", history=True)
    assert len((tmp_path / "h.csv").read_text().splitlines()) == 1 + 8 * EPOCHS
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.strategy = "vmap"


def test_plots(tmp_path):
    pytest.importorskip("matplotlib")
    space = sweep.grid(learning_rate=[0.003, 0.01, 0.05, 1e300], decay=[0.0, 0.1]) * \
        sweep.grid(seed=[0])
    res = _sweep(space, strategy="vmap")
    assert res.diverged.sum() == 2
    res.plot_heatmap("accuracy").savefig(tmp_path / "heat.png")
    res.plot_curves("loss", by="decay").savefig(tmp_path / "curves.png")
    assert (tmp_path / "heat.png").stat().st_size > 0
    assert (tmp_path / "curves.png").stat().st_size > 0
    with pytest.raises(ValueError, match="two-dimensional grid"):
        dataclasses.replace(res, grid_axes=res.grid_axes[:1]).plot_heatmap()
