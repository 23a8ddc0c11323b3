"""Layers: shapes, initializers, immutability, dropout, summary, and bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import nn

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


def test_contract_init_apply_shapes():
    model = nn.serial(nn.dense(64), nn.relu(), nn.dense(3))
    params = model.init(jax.random.key(0), (2,))
    logits = model.apply(params, jnp.ones((5, 2), jnp.float32))
    assert logits.shape == (5, 3) and logits.dtype == jnp.float32
    assert params[0].w.shape == (2, 64) and params[0].b.shape == (64,)
    assert params[1] == nn.NoParams() and jax.tree.leaves(params[1]) == []
    assert model.output_shape((2,)) == (3,)
    # same signature for every layer, key and train included
    same = model.apply(params, jnp.ones((5, 2), jnp.float32), key=jax.random.key(1),
                       train=True)
    np.testing.assert_array_equal(logits, same)


def test_apply_is_pure_and_jittable():
    model = nn.serial(nn.flatten(), nn.dense(4), nn.tanh(), nn.dense(2), nn.softmax())
    params = model.init(jax.random.key(0), (3, 3), dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(1), (6, 3, 3), jnp.float64)
    a = model.apply(params, x)
    b = jax.jit(model.apply)(params, x)
    np.testing.assert_allclose(a, b, rtol=1e-14)
    np.testing.assert_allclose(jnp.sum(a, axis=1), np.ones(6), rtol=1e-14)


def test_parameters_are_immutable():
    params = nn.dense(3).init(jax.random.key(0), (2,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.w = jnp.zeros((2, 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        nn.NoParams().x = 1
    new = dataclasses.replace(params, b=params.b + 1)
    np.testing.assert_array_equal(new.b, params.b + 1)
    doubled = jax.tree.map(lambda a: 2 * a, params)
    assert isinstance(doubled, nn.Dense)


@pytest.mark.parametrize("name,check", [
    ("nnfs", lambda w: abs(np.std(w) - 0.01) < 0.002),
    ("nielsen_large", lambda w: abs(np.std(w) - 1.0) < 0.1),
    ("nielsen", lambda w: abs(np.std(w) - 1 / np.sqrt(400)) < 0.005),
    ("glorot", lambda w: np.max(np.abs(w)) <= np.sqrt(6 / 500)
     and abs(np.std(w) - np.sqrt(2 / 500)) < 0.005),
    ("he", lambda w: abs(np.std(w) - np.sqrt(2 / 400)) < 0.007),
])
def test_initializers(name, check):
    p = nn.dense(100, init=name).init(jax.random.key(0), (400,))
    assert check(np.asarray(p.w)), name
    np.testing.assert_array_equal(p.b, np.zeros(100))


def test_bias_init_and_custom_init():
    p = nn.dense(3, bias_init=0.5).init(jax.random.key(0), (2,))
    np.testing.assert_array_equal(p.b, np.full(3, 0.5, np.float32))
    p = nn.dense(3, init=lambda k, s, d: jnp.ones(s, d), bias_init="normal").init(
        jax.random.key(0), (2,))
    np.testing.assert_array_equal(p.w, np.ones((2, 3)))
    assert np.std(np.asarray(p.b)) > 0


def test_activations_values():
    x = jnp.array([[-2.0, -0.5, 0.0, 0.5, 2.0]])
    p = nn.NoParams()
    np.testing.assert_allclose(nn.relu().apply(p, x), [[0, 0, 0, 0.5, 2]])
    np.testing.assert_allclose(nn.leaky_relu(0.1).apply(p, x), [[-0.2, -0.05, 0, 0.5, 2]])
    np.testing.assert_allclose(nn.sigmoid().apply(p, x), 1 / (1 + np.exp(-np.asarray(x))),
                               rtol=1e-6)
    np.testing.assert_allclose(nn.tanh().apply(p, x), np.tanh(np.asarray(x)), rtol=1e-6)
    np.testing.assert_array_equal(nn.identity().apply(p, x), x)
    big = jnp.array([[1e4, 0.0, -1e4]], jnp.float32)
    s = nn.softmax().apply(p, big)
    assert np.all(np.isfinite(s)) and float(s[0, 0]) == 1.0


SMOOTH = [  # funcnn layer, the jax.nn function it equals
    (nn.elu(0.5), lambda v: jax.nn.elu(v, 0.5)),
    (nn.gelu(), jax.nn.gelu),
    (nn.gelu(approximate=False), lambda v: jax.nn.gelu(v, approximate=False)),
    (nn.silu(), jax.nn.silu),
    (nn.softplus(), jax.nn.softplus),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("layer,fn", SMOOTH, ids=[layer.name + str(layer.config)
                                                  for layer, _ in SMOOTH])
def test_smooth_activations_equal_jax_nn_and_their_slopes_jax_grad(layer, fn, dtype):
    """Values equal jax.nn's; the hand slopes equal jax.grad's at 0 (elu's side: alpha),
    in the tails and near 0, and stay finite where the inputs' powers overflow (jax.grad
    of the tanh-form gelu gives NaN at 1e20; the rule gives the exact slope, 1)."""
    x = jnp.array([[-1e20, -1e6, -30.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 3.0, 30.0, 1e6, 1e20]],
                  dtype)
    p = nn.NoParams()
    y = layer.apply(p, x)
    np.testing.assert_array_equal(y, fn(x))
    _, dx = layer.backward_fn(p, (x, y), jnp.ones_like(x), None, False)
    slope = jax.vmap(jax.grad(fn))(x[0])
    finite = np.isfinite(slope)
    assert np.all(np.isfinite(dx)) and finite[1:-1].all()
    # atol: jax.grad of elu before jax 0.12 gives 0 at x = -30 (float32), where the slope
    # 0.5 e^-30 is 5e-14; the rule gives that (checked below).
    np.testing.assert_allclose(dx[0][finite], slope[finite],
                               rtol=1e-6 if dtype == jnp.float32 else 1e-14, atol=1e-12)
    if layer.name == "elu":
        np.testing.assert_allclose(dx[0, 2], 0.5 * np.exp(-30.0), rtol=1e-6)
    if layer.name == "gelu":
        np.testing.assert_array_equal(np.asarray(dx[0])[[0, -1]], [0.0, 1.0])


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 2e-6), (jnp.float64, 1e-13)])
def test_exact_gelu_slope_in_the_left_tail(dtype, rtol):
    """Phi(x) + x phi(x) against math.erfc in float64: (1 + erf) / 2 would cancel to 0
    below x = -5.5 in float32 and lose the Phi term (2.8% off at x = -6)."""
    import math
    xs = [-10.0, -8.0, -6.0, -5.5, -3.0, -1.0, 0.0, 1.0, 3.0]
    want = [0.5 * math.erfc(-v / math.sqrt(2)) + v * math.exp(-v * v / 2) / math.sqrt(
        2 * math.pi) for v in xs]
    layer = nn.gelu(approximate=False)
    x = jnp.array([xs], dtype)
    _, dx = layer.backward_fn(nn.NoParams(), (x, layer.apply(nn.NoParams(), x)),
                              jnp.ones_like(x), None, False)
    np.testing.assert_allclose(np.asarray(dx[0], np.float64), want, rtol=rtol, atol=0)


@pytest.mark.parametrize("make,match", [
    (lambda: nn.elu(float("nan")), "elu: alpha must be finite"),
    (lambda: nn.elu("1"), "elu: alpha must be a real number"),
    (lambda: nn.gelu("tanh"), r"gelu: approximate must be True \(the tanh form"),
    (lambda: nn.gelu(None), "gelu: approximate must be True"),
])
def test_smooth_activation_arguments(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_other_frameworks_activation_names_point_to_funcnn():
    for name, spelling in (("GELU", "nn.gelu"), ("SiLU", "nn.silu"), ("swish", "nn.silu"),
                           ("ELU", "nn.elu"), ("Softplus", "nn.softplus")):
        with pytest.raises(AttributeError, match=f"funcnn's spelling is {spelling}"):
            getattr(nn, name)


def test_dropout_rate_is_drop_probability_and_inverted():
    layer = nn.dropout(0.25)
    x = jnp.ones((200, 100), jnp.float64)
    y = layer.apply(nn.NoParams(), x, key=jax.random.key(0), train=True)
    dropped = float(jnp.mean(y == 0))
    assert abs(dropped - 0.25) < 0.01
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / 0.75])
    assert abs(float(jnp.mean(y)) - 1.0) < 0.02
    np.testing.assert_array_equal(layer.apply(nn.NoParams(), x), x)  # eval: identity
    y2 = layer.apply(nn.NoParams(), x, key=jax.random.key(0), train=True)
    np.testing.assert_array_equal(y, y2)  # same key, same mask


def test_dropout_rate_can_be_traced():
    f = jax.vmap(lambda r: nn.dropout(r).apply(nn.NoParams(), jnp.ones((1000, 10)),
                                               key=jax.random.key(0), train=True))
    out = f(jnp.array([0.0, 0.5]))
    assert float(jnp.mean(out[0] == 0)) == 0.0
    assert abs(float(jnp.mean(out[1] == 0)) - 0.5) < 0.03


def test_summary():
    model = nn.serial(nn.dense(64), nn.relu(), nn.dense(3))
    text = nn.summary(model.init(jax.random.key(0), (2,)))
    lines = text.splitlines()
    assert lines[0].split() == ["path", "shape", "dtype", "count"]
    assert "[0].w" in text and "(2, 64)" in text and "float32" in text
    assert lines[-1].split() == ["total", str(2 * 64 + 64 + 64 * 3 + 3)]


# ----------------------------------------------------------------------------- bad input

def test_init_wrong_rank_is_clear():
    with pytest.raises(ValueError,
                       match=r"dense: expected a 1-D example shape.*\(28, 28\).*flatten"):
        nn.dense(3).init(jax.random.key(0), (28, 28))
    with pytest.raises(TypeError, match="input_shape must be a tuple of ints"):
        nn.dense(3).init(jax.random.key(0), 5)
    with pytest.raises(ValueError, match="positive"):
        nn.dense(3).init(jax.random.key(0), (0,))


def test_apply_wrong_shape_is_clear_even_under_jit():
    model = nn.serial(nn.dense(4), nn.relu(), nn.dense(2))
    params = model.init(jax.random.key(0), (3,))
    with pytest.raises(ValueError, match=r"expected inputs with 3 features.*got shape \(5, 4\)"):
        model.apply(params, jnp.ones((5, 4)))
    with pytest.raises(ValueError, match=r"expected inputs with 3 features"):
        jax.jit(model.apply)(params, jnp.ones((5, 4)))
    with pytest.raises(ValueError, match=r"batch-first input of rank 2.*got shape \(3,\)"):
        model.apply(params, jnp.ones((3,)))
    with pytest.raises(ValueError, match="tuple of 3 parameter sets"):
        model.apply(params[:2], jnp.ones((5, 3)))


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan")])
def test_dropout_bad_rate(rate):
    with pytest.raises(ValueError, match=r"rate is the probability of dropping.*\[0, 1\)"):
        nn.dropout(rate)


def test_dropout_train_without_key():
    with pytest.raises(ValueError, match="needs a PRNG key"):
        nn.dropout(0.5).apply(nn.NoParams(), jnp.ones((2, 2)), train=True)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="positive int"):
        nn.dense(0)
    with pytest.raises(ValueError, match="unknown init"):
        nn.dense(3, init="xavier_magic")
    with pytest.raises(TypeError, match="not a layer.*nn.relu\\(\\)"):
        nn.serial(nn.dense(3), nn.relu)
