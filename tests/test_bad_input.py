"""Wrong state and bad arguments at the training boundary: each a clear error that names
the problem, raised before anything trains (issue "Nothing silent")."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from funcnn import losses, nn, optim, sweep, train
from funcnn.data import spiral_data

X, Y = spiral_data(10, 3)
SCE = losses.softmax_cross_entropy
MODEL = nn.serial(nn.dense(8), nn.relu(), nn.dense(3))
OPT = optim.sgd(0.1)


@pytest.fixture(scope="module")
def state():
    return train.init_state(MODEL, OPT, jax.random.key(0), (2,))


def test_params_of_another_architecture_are_refused(state):
    four = nn.serial(nn.dense(8), nn.relu(), nn.dense(4))
    p4 = four.init(jax.random.key(0), (2,))
    with pytest.raises(ValueError, match=r"do not belong to this model.*\[2\]\.w has shape "
                                         r"\(8, 4\), expected \(8, 3\)"):
        MODEL.apply(p4, jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="do not belong to this model"):
        train.fit(MODEL, SCE, OPT, train.TrainState(p4, OPT.init(p4), state.step, state.key),
                  X, Y, epochs=1)
    with pytest.raises(ValueError, match="do not belong to this model"):
        train.evaluate(MODEL, SCE, p4, X, Y)
    with pytest.raises(ValueError, match="init_state.*do not belong"):
        train.init_state(MODEL, OPT, jax.random.key(0), (2,), params=p4)
    with pytest.raises(ValueError, match=r"expected a tuple of 3 parameter sets"):
        MODEL.apply(p4[:2], jnp.ones((3, 2)))
    # Under jit the check is on shapes, at trace time.
    with pytest.raises(ValueError, match="do not belong to this model"):
        jax.jit(MODEL.apply)(p4, jnp.ones((3, 2)))


def test_wrong_input_size_blames_the_data(state):
    with pytest.raises(ValueError, match="expected inputs with 2 features"):
        train.fit(MODEL, SCE, OPT, state, np.zeros((6, 5)), np.zeros(6, int), epochs=1)


def test_raw_uint8_pixels_warn_at_the_callers_line():
    # uint8 pixels 0-255 (the loaders' default) train to chance without any error
    model = nn.serial(nn.flatten(), nn.dense(3))
    opt = optim.sgd(0.1)
    s = train.init_state(model, opt, jax.random.key(0), (4, 4))
    x = np.random.default_rng(0).integers(0, 256, (12, 4, 4), dtype=np.uint8)
    y = np.arange(12) % 3
    with pytest.warns(UserWarning, match=r"inputs x are uint8 with values up to \d+: raw "
                                         r"pixels\? .*x / 255") as caught:
        train.fit(model, losses.softmax_cross_entropy, opt, s, x, y, epochs=1, progress=False)
    assert [w.filename for w in caught] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scaled, or 0/1 masks: no warning
        train.fit(model, losses.softmax_cross_entropy, opt, s, x / 255, y, epochs=1,
                  progress=False)
        train.device_data((x > 127).astype(np.uint8), y)


def test_state_of_another_optimizer_is_refused(state):
    with pytest.raises(ValueError, match=r"opt_state was not made by this optimizer.*"
                                         r"init_state"):
        train.fit(MODEL, SCE, optim.adam(0.01), state, X, Y, epochs=1)


def test_params_already_nonfinite_are_refused(state):
    bad = jax.tree.map(lambda a: a.at[0].set(jnp.nan) if a.ndim == 2 else a, state.params)
    with pytest.raises(ValueError, match=r"already hold NaN or inf \(at \[0\]\.w, \[2\]\.w\)"):
        train.fit(MODEL, SCE, OPT, train.TrainState(bad, state.opt_state, state.step,
                                                    state.key), X, Y, epochs=1)


def test_diverged_error_names_the_cause_not_the_learning_rate():
    opt = optim.adam(0.01)
    st16 = train.init_state(MODEL, opt, jax.random.key(0), (2,), dtype=jnp.float16)
    with pytest.raises(train.DivergedError, match=r"eps is 0 in its float16 state") as e:
        train.fit(MODEL, SCE, opt, st16, X, Y, epochs=30, batch_size=30, progress=False)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(e.value.state.params))
    assert "smaller learning rate" not in str(e.value)
    st = train.init_state(MODEL, OPT, jax.random.key(0), (2,))
    with pytest.raises(train.DivergedError, match=r"l2 coefficient 1e\+20 times the "
                                                  r"learning rate 0.1 exceeds 1"):
        train.fit(MODEL, SCE, OPT, st, X, Y, epochs=3, penalty=train.Penalty(l2=1e20),
                  progress=False)
    # A plain blow-up still suggests the learning rate.
    big = optim.sgd(1e30)
    st = train.init_state(MODEL, big, jax.random.key(0), (2,))
    with pytest.raises(train.DivergedError, match="smaller learning rate"):
        train.fit(MODEL, SCE, big, st, X * 1e20, Y, epochs=3, progress=False)


@pytest.mark.parametrize("kwargs,match", [
    ({"penalty": train.Penalty(l2=-1.0)}, r"penalty\.l2 must be finite and >= 0"),
    ({"penalty": train.Penalty(l1=float("nan"))}, r"penalty\.l1 must be finite"),
    ({"penalty": train.Penalty(l2=1e39)}, r"penalty\.l2 must be .*within the range"),
    ({"log_every": -1}, "log_every must be a positive int"),
    ({"epochs_per_call": 0}, "epochs_per_call must be a positive int"),
    ({"validation_data": X}, r"validation_data must be a pair \(x_val, y_val\)"),
    ({"epochs": True}, "epochs must be a positive int"),
])
def test_bad_fit_arguments(state, kwargs, match):
    kwargs = {"epochs": 1, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        train.fit(MODEL, SCE, OPT, state, X, Y, **kwargs)


def test_bad_data_values(state):
    with pytest.raises(ValueError, match="x is complex"):
        train.fit(MODEL, SCE, OPT, state, X.astype(complex), Y, epochs=1)
    st32 = train.init_state(MODEL, OPT, jax.random.key(0), (2,), dtype=jnp.float32)
    with pytest.raises(ValueError, match="beyond the float32 range"):
        train.fit(MODEL, SCE, OPT, st32, X.astype(np.float64) * 1e39, Y, epochs=1)


def test_missing_labels_are_named(state):
    for call, where in (
            (lambda: train.fit(MODEL, SCE, OPT, state, X, epochs=1), "fit"),
            (lambda: train.evaluate(MODEL, SCE, state.params, X), "evaluate"),
            (lambda: train.fit(MODEL, SCE, OPT, state, X, Y, epochs=1,
                               validation_data=(X, None)), r"fit \(validation_data\)"),
            (lambda: sweep.run(MODEL, SCE, OPT, X, None, sweep.grid(learning_rate=[0.1]),
                               epochs=1), "sweep.run")):
        with pytest.raises(ValueError, match=rf"^{where}: y is missing \(None\): pass the "
                                             "labels or targets beside x"):
            call()


def test_input_shape_with_the_batch_axis_says_to_drop_it():
    with pytest.raises(ValueError, match=r"got \(1000, 2\)\..*If 1000 is a batch axis, drop "
                                         r"it: input_shape is one example's shape, \(2,\)"):
        train.init_state(MODEL, OPT, jax.random.key(0), (1000, 2))


def test_input_shape_must_be_whole_numbers():
    with pytest.raises(TypeError, match="input_shape must be a tuple of ints"):
        MODEL.init(jax.random.key(0), (2.5,))
    assert MODEL.init(jax.random.key(0), (2.0,))[0].w.shape == (2, 8)


def test_sweep_values_that_overflow_and_final_called():
    with pytest.raises(ValueError, match=r"learning_rate=1e\+300 cannot be held in the "
                                         r"parameters' float32"):
        sweep.run(MODEL, SCE, OPT, X, Y, sweep.grid(learning_rate=[0.1, 1e300]), epochs=1,
                  dtype=jnp.float32)
    res = sweep.run(MODEL, SCE, OPT, X, Y, sweep.grid(learning_rate=[0.1, 0.2]), epochs=1)
    with pytest.raises(TypeError, match=r"final is a property.*final\['loss'\]"):
        res.final()
    assert res.final["loss"].shape == (2,)


# A property-based sweep over fit's arguments: every outcome is a trained state or an
# exception of a standard type whose message names the argument.
BAD = {
    "epochs": st.one_of(st.integers(-3, 0), st.floats(allow_nan=True), st.just("3")),
    "batch_size": st.one_of(st.integers(-3, 0), st.integers(31, 99), st.floats(0.5, 2.5)),
    "log_every": st.one_of(st.integers(-3, 0), st.floats(0.5, 2.5)),
    "epochs_per_call": st.one_of(st.integers(-3, 0), st.floats(0.5, 2.5)),
    "penalty": st.floats(allow_nan=True, allow_infinity=True).map(
        lambda v: train.Penalty(l2=v)),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(BAD)), data=st.data())
def test_fit_arguments_fail_loudly(state, name, data):
    value = data.draw(BAD[name])
    kwargs = {"epochs": 1, "batch_size": 30, "progress": False, name: value}
    try:
        new, history = train.fit(MODEL, SCE, OPT, state, X, Y, **kwargs)
    except (ValueError, TypeError) as e:
        assert name.split("_")[0] in str(e), (name, value, str(e))
    except train.DivergedError as e:   # a huge but finite penalty: named as the cause
        assert name == "penalty" and "penalty" in str(e), (name, value, str(e))
    else:
        assert np.all(np.isfinite(history["loss"])), (name, value)


@pytest.mark.parametrize("make,error,match", [
    (lambda: nn.dense(3, init=5), TypeError, "dense: init must be one of"),
    (lambda: nn.dense(3, bias_init="x"), TypeError, "dense: bias_init must be"),
    (lambda: nn.conv2d(3, 3, init=7), TypeError, "conv2d: init must be one of"),
    (lambda: nn.layer_norm("a"), TypeError, "layer_norm: eps must be a number"),
    (lambda: optim.sgd("0.1"), TypeError, "learning_rate must be a number"),
    (lambda: nn.leaky_relu(float("nan")), ValueError, "negative_slope"),
])
def test_constructor_arguments_fail_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 9), st.floats(allow_nan=True),
                st.text(max_size=3), st.tuples(st.integers(-2, 5), st.integers(-2, 5)),
                st.lists(st.integers(0, 3), max_size=3))
CONSTRUCTORS = {
    "dense": lambda a, b: nn.dense(a),
    "conv2d": lambda a, b: nn.conv2d(2, a, b),
    "conv2d padding": lambda a, b: nn.conv2d(2, 3, 1, a),
    "max_pool": lambda a, b: nn.max_pool(a, b),
    "avg_pool": lambda a, b: nn.avg_pool(2, 2, a),
    "dropout": lambda a, b: nn.dropout(a),
    "leaky_relu": lambda a, b: nn.leaky_relu(a),
    "elu": lambda a, b: nn.elu(a),
    "gelu": lambda a, b: nn.gelu(a),
    "layer_norm": lambda a, b: nn.layer_norm(a),
}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(CONSTRUCTORS)), a=ANY, b=ANY)
@example(name="dropout", a="a", b=None)
@example(name="dropout", a=None, b=None)
@example(name="dense", a=True, b=None)
@example(name="max_pool", a=None, b=None)   # no stride and no window: the window's error
@example(name="max_pool", a=2, b=None)
@example(name="max_pool", a="a", b=None)
def test_layer_constructors_fail_loudly(name, a, b):
    """Random arguments: a working layer (it inits and applies to an image or vector),
    or a ValueError/TypeError naming the layer."""
    layer_name = name.split()[0]
    try:
        layer = CONSTRUCTORS[name](a, b)
        shape = (4,) if layer_name in ("dense", "dropout", "leaky_relu", "elu", "gelu",
                                       "layer_norm") \
            else (6, 6, 1)
        params = layer.init(jax.random.key(0), shape)
        y = layer.apply(params, jnp.ones((2, *shape)))
    except (ValueError, TypeError) as e:
        assert layer_name in str(e), (name, a, b, str(e))
    else:
        assert np.all(np.isfinite(y)), (name, a, b)
