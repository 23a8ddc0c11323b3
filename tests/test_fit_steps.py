"""fit(steps=..., eval_every=...), keeping the smaller last batch, and the history clock.

60 spiral points in batches of 16: three full batches and a last one of 12, so
``B = 3`` batches per epoch with ``drop_remainder=True`` (the default) and ``B = 4``
with ``False``. Compiling dominates the time, so the tests share a few fit
configurations, each compiled once per module.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import data, losses, nn, optim, train

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

SCE = losses.softmax_cross_entropy
MODEL = nn.serial(nn.dense(6), nn.tanh(), nn.dense(3))
OPT = optim.adam(0.02)
BS = 16


def _state(model=MODEL, opt=OPT):
    return train.init_state(model, opt, jax.random.key(0), (2,), dtype=jnp.float64)


def _bitwise(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        if jax.dtypes.issubdtype(u.dtype, jax.dtypes.prng_key):
            u, v = jax.random.key_data(u), jax.random.key_data(v)
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.fixture(scope="module")
def spiral():
    x, y = data.spiral_data(20, 3, seed=1)
    return x.astype(np.float64), y


@pytest.fixture(scope="module")
def runs(spiral):
    """The same training by epochs and by steps.

    Keeping the remainder (B = 4): ``epochs=2`` and ``steps=8, eval_every=4``.
    Dropping it (B = 3): ``epochs=3``, and 9 steps in two calls of 5 and 4 with a row
    every 2 steps, so that rows and calls start and end mid-epoch, and with
    diagnostics, which must not change the training.
    """
    x, y = spiral
    kw = dict(batch_size=BS, validation_data=(x, y), progress=False)
    keep = dict(drop_remainder=False, **kw)
    resumed = dict(eval_every=2, diagnostics=["grad_norm", "update_ratio"], **kw)
    first = train.fit(MODEL, SCE, OPT, _state(), x, y, steps=5, **resumed)
    return {
        "keep": dict(by_epochs=train.fit(MODEL, SCE, OPT, _state(), x, y, epochs=2, **keep),
                     by_steps=train.fit(MODEL, SCE, OPT, _state(), x, y, steps=8, eval_every=4,
                                        **keep)),
        "drop": dict(by_epochs=train.fit(MODEL, SCE, OPT, _state(), x, y, epochs=3, **kw),
                     first=first,
                     by_steps=train.fit(MODEL, SCE, OPT, first[0], x, y, steps=4, **resumed)),
        "resumed": resumed,
    }


def test_batches_per_epoch():
    assert data.batches_per_epoch(60, 16, drop_remainder=True) == 3
    assert data.batches_per_epoch(60, 16, drop_remainder=False) == 4
    assert data.batches_per_epoch(64, 16, drop_remainder=False) == 4
    assert data.batches_per_epoch(5, 5, drop_remainder=False) == 1
    for n, bs, match in ((0, 1, "n must be a positive int"), (4, 0, "batch_size must"),
                         (4, 5, r"batch_size must be in \[1, 4\]"), (4, True, "batch_size")):
        with pytest.raises(ValueError, match=match):
            data.batches_per_epoch(n, bs, drop_remainder=True)
    with pytest.raises(TypeError, match="drop_remainder must be True or False"):
        data.batches_per_epoch(4, 2, drop_remainder="yes")


def test_steps_k_times_b_equal_epochs_k_bitwise(runs):
    """steps = k * B trains exactly as epochs = k: the state and, with eval_every = B,
    every history row (training means over the epoch, validation), bit for bit."""
    (s1, h1), (s2, h2) = runs["keep"]["by_epochs"], runs["keep"]["by_steps"]
    assert int(s1.step) == int(s2.step) == 8
    _bitwise(s1, s2)
    assert set(h1.metrics) == set(h2.metrics) and len(h1) == 2
    for k in h1.metrics:
        np.testing.assert_array_equal(h1[k], h2[k], err_msg=k)
    for h in (h1, h2):
        np.testing.assert_array_equal(h["step"], [4, 8])
        np.testing.assert_array_equal(h["epoch"], [1, 2])


def test_steps_end_mid_epoch_and_resume_carries_on(runs):
    """5 steps (an epoch and two thirds), then 4 more from the returned state: the
    3-epoch run, bit for bit, its final validation too; a row every 2 steps and one at
    the end of each call, placed by the run's step count."""
    (a, ha), (b, hb) = runs["drop"]["first"], runs["drop"]["by_steps"]
    state, hist = runs["drop"]["by_epochs"]
    _bitwise(b, state)
    np.testing.assert_array_equal(hb["val_loss"][-1], hist["val_loss"][-1])
    assert int(a.step) == 5 and len(ha) == 3
    np.testing.assert_array_equal(ha["step"], [2, 4, 5])
    np.testing.assert_allclose(ha["epoch"], [2 / 3, 4 / 3, 5 / 3])
    np.testing.assert_array_equal(hb["step"], [7, 9])  # counted from the run's start
    np.testing.assert_allclose(hb["epoch"], [7 / 3, 3.0])
    for h in (ha, hb):
        assert "grad_norm[0].w" in h.metrics and "update_ratio[0].w" in h.metrics
        assert all(np.all(np.isfinite(v)) for v in h.metrics.values())


@pytest.mark.parametrize("kw", [dict(), dict(batch_size=BS, shuffle=False, drop_remainder=False)],
                         ids=["full_batch_dropout", "in_order_keep_remainder"])
def test_steps_equal_epochs_without_shuffling(spiral, kw):
    """The same with the data in its own order: one full batch (no order at all; the
    NNFS setting) through dropout, so that each step's key (from the step count) must
    match too, and batches of 16 in order with the 12 left over. A regression."""
    x, _ = spiral
    model = nn.serial(nn.dense(1)) if kw else nn.serial(nn.dropout(0.3), nn.dense(1))
    opt, t = optim.sgd(0.1), x[:, :1] * 0.5 - 0.25
    b = data.batches_per_epoch(len(x), kw.get("batch_size", len(x)),
                               drop_remainder=kw.get("drop_remainder", True))
    s1, h1 = train.fit(model, losses.mse, opt, _state(model, opt), x, t, epochs=2,
                       progress=False, **kw)
    s2, h2 = train.fit(model, losses.mse, opt, _state(model, opt), x, t, steps=2 * b,
                       eval_every=b, progress=False, **kw)
    _bitwise(s1, s2)
    np.testing.assert_array_equal(h1["loss"], h2["loss"])
    assert int(s2.step) == 2 * b and len(h2) == 2


@pytest.mark.parametrize("engine,rtol", [("backprop", 1e-12), ("jax", 1e-10)])
def test_keeping_the_last_batch_equals_a_hand_written_loop(spiral, runs, engine, rtol):
    """drop_remainder=False trains on 16, 16, 16 and then the 12 left over, each step's
    gradient the mean over its own batch: the loop a reader would write with
    data.batches and train_step, with the epoch's documented shuffle key. With
    jax.grad in the loop (engine="jax") too: both engines take the same steps, the
    short batch included."""
    x, y = spiral
    state, hist = runs["keep"]["by_epochs"]  # fit with the hand rules
    step = jax.jit(train.train_step, static_argnames=("model", "loss", "update", "engine"))
    s = _state()
    for epoch in range(2):
        key = jax.random.fold_in(jax.random.fold_in(s.key, 1), epoch)
        sizes, losses_, correct = [], [], []
        for xb, yb in data.batches(x, y, BS, key=key):  # keeps the remainder by default
            s, m = step(s, jnp.asarray(xb), jnp.asarray(yb), model=MODEL, loss=SCE,
                        update=OPT.update, engine=engine)
            sizes.append(len(xb))
            losses_.append(float(m["loss"]))
            correct.append(float(m["accuracy"]) * len(xb))
        assert sizes == [16, 16, 16, 12]
        # the row's loss and accuracy: means over the epoch's 60 examples
        np.testing.assert_allclose(hist["loss"][epoch], np.dot(sizes, losses_) / 60, rtol=rtol)
        np.testing.assert_allclose(hist["accuracy"][epoch], sum(correct) / 60, rtol=rtol)
    assert int(state.step) == int(s.step) == 8
    for u, v in zip(jax.tree.leaves((state.params, state.opt_state)),
                    jax.tree.leaves((s.params, s.opt_state))):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=rtol * 1e-3)


def test_time_is_recorded_per_row_and_kept_apart_from_the_metrics(runs):
    for _, h in (runs["keep"]["by_epochs"], runs["keep"]["by_steps"], runs["drop"]["first"]):
        t = h["time_s"]
        assert t.shape == (len(h),) and np.all(np.isfinite(t)) and np.all(t > 0)
        assert set(h.clock) == {"step", "epoch", "time_s"}
        assert not set(h.clock) & set(h.metrics)  # reproducibility checks compare metrics
    with pytest.raises(KeyError, match="no column 'nope'.*clock"):
        runs["keep"]["by_steps"][1]["nope"]


def test_log_lines_name_the_step(spiral, runs, capsys):
    """With steps=, log_every counts rows and the lines say which step."""
    x, y = spiral
    state, _ = train.fit(MODEL, SCE, OPT, _state(), x, y, steps=4, log_every=2,
                         **runs["resumed"])  # compiled already
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["step: 4"]  # rows at steps 2 and 4
    assert "val_acc" in lines[-1] and int(state.step) == 4


def test_divergence_in_steps_mode_after_resume(spiral):
    """A resumed run (step 30) that diverges keeps only the finite rows, each at its
    step, and names the epoch and step of the run where it went wrong."""
    x, _ = spiral
    model, opt = nn.serial(nn.dense(1)), optim.sgd(1e30)  # each step: w *= ~-1e30
    state = dataclasses.replace(_state(model, opt), step=jnp.array(30, jnp.int32))
    with pytest.raises(train.DivergedError, match=r"epoch \d+, step \d+") as err:
        train.fit(model, losses.mse, opt, state, x, x[:, :1], steps=40, eval_every=2,
                  batch_size=20, progress=False)
    e = err.value
    good = int(e.state.step)
    assert 30 < good < 70 and (e.epoch - 1) * 3 + e.step - 1 == good and e.epoch >= 11
    assert len(e.history) == (good - 30) // 2 > 0
    np.testing.assert_array_equal(e.history["step"], 30 + 2 * np.arange(1, len(e.history) + 1))
    assert all(np.all(np.isfinite(v)) for v in e.history.metrics.values())


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kw,match", [
    (dict(), r"epochs=.*or steps=.*got neither"),
    (dict(epochs=2, steps=6), r"either epochs= or steps=, not both"),
    (dict(steps=0), "steps must be a positive int"),
    (dict(steps=-5), "steps must be a positive int.*-5"),
    (dict(steps=2.5), "steps must be a positive int.*2.5"),
    (dict(steps=True), "steps must be a positive int.*True"),
    (dict(steps="3"), "steps must be a positive int"),
    (dict(epochs=2, eval_every=3), "eval_every=3 counts steps, so it needs steps="),
    (dict(steps=6, eval_every=0), "eval_every must be a positive int"),
    (dict(steps=6, eval_every=1.5), "eval_every must be a positive int"),
    (dict(steps=6, eval_every=7), "eval_every=7 is beyond steps=6"),
    (dict(steps=6, epochs_per_call=2), "epochs_per_call applies to epochs="),
    (dict(epochs=0), "epochs must be a positive int"),
])
def test_bad_length_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        train.fit(MODEL, SCE, OPT, _state(), np.zeros((6, 2)), np.zeros(6, int), **kw)


@pytest.mark.parametrize("value", ["no", None, 1])
def test_bad_drop_remainder(value):
    with pytest.raises(TypeError, match="drop_remainder must be True or False"):
        train.fit(MODEL, SCE, OPT, _state(), np.zeros((6, 2)), np.zeros(6, int), steps=2,
                  drop_remainder=value)
