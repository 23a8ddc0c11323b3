"""The training loop: engines agree, reproducibility, penalties, NNFS bands, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import book, data, losses, nn, optim, train

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

F64 = jnp.float64
SCE = losses.softmax_cross_entropy


@pytest.fixture(scope="module")
def spiral():
    x, y = data.spiral_data(20, 3, seed=1)
    return x.astype(np.float64), y


def _state(model, opt, shape=(2,), seed=0, dtype=F64):
    return train.init_state(model, opt, jax.random.key(seed), shape, dtype=dtype)


def _assert_trees(a, b, rtol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=rtol * 1e-3)


def test_engines_follow_the_same_trajectory(spiral):
    """fit with jax.grad and with hand backprop give the same parameters (float64)."""
    x, y = spiral
    model = nn.serial(nn.dense(8), nn.tanh(), nn.dropout(0.2), nn.dense(3))
    opt = optim.adam(0.01)
    pen = train.Penalty(l1=1e-4, l2=(nn.Dense(w=5e-4, b=5e-4), nn.NoParams(),
                                     nn.NoParams(), nn.Dense(w=0.0, b=0.0)))
    out = {}
    for engine in train.ENGINES:
        out[engine] = train.fit(model, SCE, opt, _state(model, opt), x, y, epochs=6,
                                batch_size=16, engine=engine, penalty=pen)
    (s1, h1), (s2, h2) = out["backprop"], out["jax"]
    _assert_trees(s1.params, s2.params, rtol=1e-9)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-10)
    assert int(s1.step) == 6 * (60 // 16)
    assert np.all(h1["loss"] > h1["data_loss"])  # the penalty is in the loss


def test_same_seed_bitwise_identical_float32(spiral):
    x, y = spiral
    model = nn.serial(nn.dense(16), nn.relu(), nn.dropout(0.1), nn.dense(3))
    opt = optim.sgd(0.1, momentum=0.9)
    runs = [train.fit(model, SCE, opt, _state(model, opt, dtype=jnp.float32),
                      x.astype(np.float32), y, epochs=5, batch_size=10)[0] for _ in range(2)]
    for a, b in zip(jax.tree.leaves(runs[0].params), jax.tree.leaves(runs[1].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = train.fit(model, SCE, opt, _state(model, opt, seed=1, dtype=jnp.float32),
                      x.astype(np.float32), y, epochs=5, batch_size=10)[0]
    assert not np.array_equal(np.asarray(other.params[0].w), np.asarray(runs[0].params[0].w))


def test_fit_in_chunks_equals_fit_in_one_call(spiral):
    """Epochs grouped per call or one at a time: the same result (resume relies on it)."""
    x, y = spiral
    model = nn.serial(nn.dense(8), nn.relu(), nn.dense(3))
    opt = optim.adam(0.01)
    a, ha = train.fit(model, SCE, opt, _state(model, opt), x, y, epochs=6, batch_size=16)
    b, hb = train.fit(model, SCE, opt, _state(model, opt), x, y, epochs=6, batch_size=16,
                      epochs_per_call=4)
    c, _ = train.fit(model, SCE, opt, _state(model, opt), x, y, epochs=2, batch_size=16)
    c, _ = train.fit(model, SCE, opt, c, x, y, epochs=4, batch_size=16)
    for s in (b, c):
        assert int(s.step) == int(a.step)
        for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(s.params)):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    np.testing.assert_array_equal(ha["loss"], hb["loss"])


def test_history_and_validation(spiral):
    x, y = spiral
    model = nn.serial(nn.dense(16), nn.relu(), nn.dense(3))
    opt = optim.adam(optim.inverse_time_decay(0.02, 1e-3))
    state, hist = train.fit(model, SCE, opt, _state(model, opt), x, y, epochs=30,
                            validation_data=(x, y))
    assert len(hist) == 30
    assert set(hist.metrics) == {"loss", "data_loss", "accuracy", "learning_rate", "val_loss",
                                 "val_accuracy"}
    assert hist["loss"][-1] < hist["loss"][0]
    np.testing.assert_allclose(hist["learning_rate"][-1], 0.02 / (1 + 1e-3 * 30), rtol=1e-12)
    final = train.evaluate(model, SCE, state.params, x, y)
    assert set(final) == {"loss", "accuracy"} and 0 <= final["accuracy"] <= 1


def test_optax_optimizer_history_has_no_learning_rate_column(spiral, capsys):
    # optax's states do not expose the learning rate: no column of NaN, no "lr: nan"
    optax = pytest.importorskip("optax")
    x, y = spiral
    model = nn.serial(nn.dense(8), nn.relu(), nn.dense(3))
    opt = optax.sgd(0.1, momentum=0.9)
    state = train.init_state(model, opt, jax.random.key(0), (2,), dtype=F64)
    _, hist = train.fit(model, SCE, opt, state, x, y, epochs=2, log_every=1, progress=False)
    assert "learning_rate" not in hist.metrics and len(hist["loss"]) == 2
    out = capsys.readouterr().out
    assert "epoch: 2" in out and "lr:" not in out
    _, mine = train.fit(model, SCE, optim.sgd(0.1, 0.9),
                        _state(model, optim.sgd(0.1, 0.9)), x, y, epochs=1, progress=False)
    assert mine["learning_rate"][0] == 0.1
    # A NaN learning rate hidden inside optax: the divergence message does not claim the
    # hyperparameters are finite, it says they cannot be read and to check them.
    bad = optax.adam(float("nan"))
    with pytest.raises(train.DivergedError, match=r"hyperparameters cannot be read .*"
                       r"check that its learning rate and other numbers are finite"):
        train.fit(model, SCE, bad, train.init_state(model, bad, jax.random.key(0), (2,),
                                                     dtype=F64), x, y, epochs=1,
                  progress=False)


def test_no_recompile_for_new_hyperparameter_values(spiral):
    x, y = spiral
    model = nn.serial(nn.dense(4), nn.relu(), nn.dense(3))
    before = None
    for lr in (0.01, 0.02, 0.03):
        opt = optim.adam(lr, b1=0.8)
        train.fit(model, SCE, opt, _state(model, opt), x, y, epochs=2, batch_size=20)
        size = train._run_epochs._cache_size()
        assert before is None or size == before, "a new learning rate recompiled fit"
        before = size


def test_nnfs_chapter10_bands():
    """The book's Adam and SGD+momentum runs from its own initialization (float64)."""
    results = {}
    for name in ("adam", "sgd_momentum"):
        model, params, x, y = book.spiral_setup()
        params = jax.tree.map(lambda a: a.astype(F64), params)
        opt = book.CHAPTER10_OPTIMIZERS[name]()
        state = train.init_state(model, opt, jax.random.key(0), (2,), params=params)
        _, hist = train.fit(model, SCE, opt, state, x.astype(np.float64), y, epochs=10001)
        results[name] = hist.last()
    assert results["adam"]["accuracy"] >= 0.93 and results["adam"]["loss"] <= 0.10
    assert results["sgd_momentum"]["accuracy"] >= 0.90


def test_dense_penalty_matches_nnfs_formula():
    params = nn.serial(nn.dense(3), nn.relu(), nn.dense(2)).init(jax.random.key(0), (4,), F64)
    pen = train.dense_penalty(params, weight_l1=1e-3, weight_l2=5e-4, bias_l2=2e-4)
    want = sum(1e-3 * np.abs(p.w).sum() + 5e-4 * (p.w ** 2).sum() + 2e-4 * (p.b ** 2).sum()
               for p in (params[0], params[2]))
    np.testing.assert_allclose(pen.value(params), want, rtol=1e-12)
    g = pen.grad(params)
    auto = jax.grad(pen.value)(params)
    _assert_trees(g, auto, rtol=1e-12)
    # NNFS ch. 14: only the first layer regularized
    first = train.dense_penalty(params, weight_l2=5e-4, bias_l2=5e-4, layers=[0])
    np.testing.assert_allclose(first.value(params), 5e-4 * ((params[0].w ** 2).sum()
                                                            + (params[0].b ** 2).sum()),
                               rtol=1e-12)
    assert float(first.l2[2].w) == 0.0 and float(first.l2[0].w) == 5e-4
    _assert_trees(first.grad(params), jax.grad(first.value)(params), rtol=1e-12)
    last = train.dense_penalty(params, weight_l2=1.0, layers=[-1])
    np.testing.assert_allclose(last.value(params), (params[2].w ** 2).sum(), rtol=1e-12)
    for layers, error, match in (([1], ValueError, r"layer 1 has no weights.*count the "
                                  "activations"),
                                 ([3], ValueError, r"index 3 is not one of the 3 layers"),
                                 (["0"], ValueError, r"index '0' is not one of")):
        with pytest.raises(error, match=match):
            train.dense_penalty(params, weight_l2=1.0, layers=layers)
    with pytest.raises(TypeError, match="layers= picks entries of a serial model's params"):
        train.dense_penalty(params[0], weight_l2=1.0, layers=[0])


# ----------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def small():
    model = nn.serial(nn.dense(4), nn.relu(), nn.dense(3))
    opt = optim.sgd(0.1)
    return model, opt, _state(model, opt)


@pytest.mark.parametrize("batch_size,match", [(0, r"batch_size must be an int in \[1, 6\]"),
                                              (7, r"in \[1, 6\].*got 7"),
                                              (-3, r"got -3")])
def test_bad_batch_size(small, batch_size, match):
    model, opt, state = small
    with pytest.raises(ValueError, match=match):
        train.fit(model, SCE, opt, state, np.zeros((6, 2)), np.zeros(6, int), epochs=1,
                  batch_size=batch_size)


def test_bad_data(small):
    model, opt, state = small
    with pytest.raises(ValueError, match="same number of examples"):
        train.fit(model, SCE, opt, state, np.zeros((6, 2)), np.zeros(5, int), epochs=1)
    with pytest.raises(ValueError, match=r"labels|\[0, 3\)"):
        train.fit(model, SCE, opt, state, np.zeros((6, 2)), np.array([0, 1, 2, 3, 0, 1]),
                  epochs=1)
    bad = np.zeros((6, 2))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train.fit(model, SCE, opt, state, bad, np.zeros(6, int), epochs=1)
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="inf"):
        train.fit(model, SCE, opt, state, bad, np.zeros(6, int), epochs=1)
    with pytest.raises(ValueError, match="expected inputs with 2 features"):
        train.fit(model, SCE, opt, state, np.zeros((6, 5)), np.zeros(6, int), epochs=1)
    with pytest.raises(ValueError, match="engine must be one of"):
        train.fit(model, SCE, opt, state, np.zeros((6, 2)), np.zeros(6, int), epochs=1,
                  engine="autograd")
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        train.fit(model, SCE, opt, state, np.zeros((6, 2)), np.zeros(6, int), epochs=0)


@pytest.mark.parametrize("lr", [-0.1, float("nan")])
def test_bad_learning_rate(lr):
    with pytest.raises(ValueError, match="learning_rate must be finite and >= 0"):
        optim.adam(lr)


def test_loss_turning_nan_stops_and_names_the_step(spiral):
    x, y = spiral
    model = nn.serial(nn.dense(16), nn.relu(), nn.dense(3))
    opt = optim.sgd(1e6)
    state = _state(model, opt)
    with pytest.raises(train.DivergedError, match=r"epoch \d+, step \d+") as err:
        train.fit(model, SCE, opt, state, x * 1e3, y, epochs=50, batch_size=20)
    e = err.value
    assert e.epoch >= 1 and 1 <= e.step <= 3
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(e.state.params))
    assert int(e.state.step) == (e.epoch - 1) * 3 + e.step - 1
    assert len(e.history) == e.epoch - 1


def test_device_data_is_checked_once_and_equals_numpy_input(spiral):
    x, y = spiral
    model = nn.serial(nn.dense(8), nn.relu(), nn.dense(3))
    opt = optim.adam(0.01)
    dd = train.device_data(jnp.asarray(x), jnp.asarray(y), num_classes=3, dtype=F64)
    a, _ = train.fit(model, SCE, opt, _state(model, opt), x, y, epochs=3, batch_size=16)
    b, _ = train.fit(model, SCE, opt, _state(model, opt), dd, epochs=3, batch_size=16)
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert train.evaluate(model, SCE, b.params, dd) == train.evaluate(model, SCE, b.params, x, y)
    with pytest.raises(ValueError, match="num_classes=4"):
        train.fit(model, SCE, opt, _state(model, opt),
                  train.device_data(x, y, num_classes=4), epochs=1)


def test_device_data_bad_values_on_device():
    x = jnp.zeros((4, 2)).at[1, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="NaN"):
        train.device_data(x, jnp.zeros(4, jnp.int32), num_classes=3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        train.device_data(jnp.zeros((4, 2)), jnp.array([0, 1, 5, 2]), num_classes=3)
