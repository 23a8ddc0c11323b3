"""Every hand-derived backward rule against jax.grad (float64) and finite differences."""

import ast
import inspect
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funcnn import backprop, losses, nn
from tests.gradcheck import assert_tree_close, fd_directional, fd_grad

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

F64 = jnp.float64
RTOL = 1e-10


def _close(a, b, rtol=RTOL):
    """Leafwise close, with an absolute floor scaled to the gradient's size."""
    scale = max([float(np.max(np.abs(x))) for x in jax.tree.leaves(a)] + [1e-300])
    assert_tree_close(a, b, rtol=rtol, atol=rtol * scale)


# One small instance of each layer and the (batch-first) input it takes.
LAYER_CASES = {
    "dense": (nn.dense(3), (4, 5)),
    "relu": (nn.relu(), (4, 5)),
    "leaky_relu": (nn.leaky_relu(0.1), (4, 5)),
    "sigmoid": (nn.sigmoid(), (4, 5)),
    "tanh": (nn.tanh(), (4, 5)),
    "softmax": (nn.softmax(), (4, 5)),
    "identity": (nn.identity(), (4, 5)),
    "dropout": (nn.dropout(0.3), (4, 5)),
    "flatten": (nn.flatten(), (3, 2, 4)),
    "serial": (nn.serial(nn.dense(4), nn.tanh(), nn.serial(nn.dense(3), nn.sigmoid())),
               (4, 5)),
}


def _layer_setup(kind, seed=0):
    layer, shape = LAYER_CASES[kind]
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    params = layer.init(k1, shape[1:], dtype=F64)
    x = jax.random.normal(k2, shape, F64)
    y_shape = jax.eval_shape(lambda: layer.apply(params, x)).shape
    dy = jax.random.normal(k3, y_shape, F64)
    return layer, params, x, dy, k4


def _hand_vjp(layer, params, x, dy, key, train):
    _, tape = backprop.forward(layer, params, x, key, train)
    return backprop.backward(layer, params, tape, dy, key, train)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kind", sorted(LAYER_CASES))
def test_layer_rule_equals_jax_vjp(kind, train, jit):
    """dL/dparams and dL/dx of each rule equal JAX's autodiff (float64, rtol 1e-10)."""
    layer, params, x, dy, key = _layer_setup(kind)
    hand = _hand_vjp
    if jit:
        hand = jax.jit(hand, static_argnums=(0, 5))
    dparams, dx = hand(layer, params, x, dy, key, train)
    y, vjp = jax.vjp(lambda p, xx: layer.apply(p, xx, key=key, train=train), params, x)
    auto_dparams, auto_dx = vjp(dy)
    _close(dparams, auto_dparams)
    _close(dx, auto_dx)


@pytest.mark.parametrize("kind", sorted(LAYER_CASES))
def test_layer_rule_equals_finite_differences(kind):
    """Every element of dparams and dx against central differences of <dy, f(p, x)>."""
    layer, params, x, dy, key = _layer_setup(kind, seed=1)
    train = kind == "dropout"
    dparams, dx = _hand_vjp(layer, params, x, dy, key, train)
    s = lambda px: jnp.sum(dy * layer.apply(px[0], px[1], key=key, train=train))
    fd = fd_grad(s, (params, x))
    _close((dparams, dx), fd, rtol=1e-6)


def _loss_inputs(name, seed=0, n=4, c=3):
    k1, k2 = jax.random.split(jax.random.key(seed))
    z = jax.random.normal(k1, (n, c), F64)
    if name == "softmax_cross_entropy":
        return z, jax.random.randint(k2, (n,), 0, c)
    if name == "categorical_cross_entropy":
        return jax.nn.softmax(z), jax.random.randint(k2, (n,), 0, c)
    if name == "binary_cross_entropy":
        return jax.nn.sigmoid(z), jax.random.bernoulli(k2, 0.5, (n, c)).astype(F64)
    if name == "binary_cross_entropy_with_logits":
        return z, jax.random.bernoulli(k2, 0.5, (n, c)).astype(F64)
    return z, jax.random.normal(k2, (n, c), F64)  # mse, mae


LOSS_CASES = sorted(losses.LOSSES)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", LOSS_CASES)
def test_loss_rule_equals_jax_grad_and_fd(name, jit):
    loss = losses.LOSSES[name]
    pred, target = _loss_inputs(name)
    rule = backprop.LOSS_RULES[loss]
    if jit:
        rule = jax.jit(rule)
    g = rule(pred, target)
    _close(g, jax.grad(loss)(pred, target))
    _close(g, fd_grad(lambda p: loss(p, target), pred), rtol=1e-6)


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "categorical_cross_entropy"])
def test_loss_rule_soft_labels(name):
    """One-hot / soft float labels take the same rules."""
    loss = losses.LOSSES[name]
    pred, labels = _loss_inputs(name, seed=3)
    soft = jax.nn.softmax(jax.random.normal(jax.random.key(9), pred.shape, F64))
    _close(backprop.LOSS_RULES[loss](pred, soft), jax.grad(loss)(pred, soft))
    onehot = jax.nn.one_hot(labels, pred.shape[1], dtype=F64)
    np.testing.assert_allclose(loss(pred, onehot), loss(pred, labels), rtol=1e-14)


@pytest.mark.parametrize("name", sorted(losses.PENALTIES))
def test_penalty_rule(name):
    pen = losses.PENALTIES[name]
    tree = nn.serial(nn.dense(3), nn.dense(2)).init(jax.random.key(0), (4,), dtype=F64)
    tree = jax.tree.map(lambda w: w + 0.1, tree)  # nonzero biases: |w| is smooth there
    g = backprop.PENALTY_RULES[pen](tree)
    _close(g, jax.grad(pen)(tree))
    _close(g, fd_grad(pen, tree), rtol=1e-6)


# --------------------------------------------------------------------------------------
# Whole networks
# --------------------------------------------------------------------------------------

def _net_case(loss_name, widths, acts, seed, n=6, d=3):
    """A network ending to suit the loss, its data, and its labels."""
    layers = []
    for w, a in zip(widths, acts):
        layers += [nn.dense(w), a]
    k = jax.random.split(jax.random.key(seed), 4)
    c = 4
    if loss_name in ("softmax_cross_entropy", "categorical_cross_entropy"):
        layers.append(nn.dense(c))
        y = jax.random.randint(k[0], (n,), 0, c)
        if loss_name == "categorical_cross_entropy":
            layers.append(nn.softmax())
    elif loss_name == "binary_cross_entropy":
        layers += [nn.dense(c), nn.sigmoid()]
        y = jax.random.bernoulli(k[0], 0.5, (n, c)).astype(F64)
    elif loss_name == "binary_cross_entropy_with_logits":
        layers.append(nn.dense(c))
        y = jax.random.bernoulli(k[0], 0.5, (n, c)).astype(F64)
    else:
        layers.append(nn.dense(c))
        y = jax.random.normal(k[0], (n, c), F64)
    model = nn.serial(*layers)
    params = model.init(k[1], (d,), dtype=F64)
    x = jax.random.normal(k[2], (n, d), F64)
    return model, params, x, y, k[3]


ACTS = [nn.relu, lambda: nn.leaky_relu(0.2), nn.sigmoid, nn.tanh, nn.identity,
        lambda: nn.dropout(0.25), nn.softmax]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loss_name=st.sampled_from(LOSS_CASES),
       widths=st.lists(st.integers(1, 6), min_size=0, max_size=4),
       act_ids=st.lists(st.integers(0, len(ACTS) - 1), min_size=4, max_size=4),
       seed=st.integers(0, 2**16), train=st.booleans())
def test_random_networks_equal_jax_grad(loss_name, widths, act_ids, seed, train):
    """Random compositions (depth 1 to 5, random widths, each loss): hand == jax.grad."""
    acts = [ACTS[i]() for i in act_ids[:len(widths)]]
    model, params, x, y, key = _net_case(loss_name, widths, acts, seed)
    loss = losses.LOSSES[loss_name]
    value, hand = backprop.value_and_grad(model, loss)(params, x, y, key=key, train=train)
    f = lambda p: loss(model.apply(p, x, key=key, train=train), y)
    auto_value, auto = jax.value_and_grad(f)(params)
    np.testing.assert_allclose(value, auto_value, rtol=1e-14)
    _close(hand, auto)


def test_large_network_directional_finite_differences():
    """784-32-10 on a batch of 16: random-direction checks where elementwise is too slow."""
    model = nn.serial(nn.dense(32), nn.relu(), nn.dense(10))
    params = model.init(jax.random.key(0), (784,), dtype=F64)
    x = jax.random.normal(jax.random.key(1), (16, 784), F64)
    y = jax.random.randint(jax.random.key(2), (16,), 0, 10)
    g = jax.jit(backprop.grad(model, losses.softmax_cross_entropy))(params, x, y)
    f = jax.jit(lambda p: losses.softmax_cross_entropy(model.apply(p, x), y))
    for slope, dot in fd_directional(f, params, g, n=4):
        np.testing.assert_allclose(slope, dot, rtol=1e-6)
    _close(g, jax.grad(f)(params))


def test_jit_and_eager_agree_and_structure_matches():
    model = nn.serial(nn.flatten(), nn.dense(5), nn.relu(), nn.dense(3))
    params = model.init(jax.random.key(0), (2, 3), dtype=F64)
    x = jax.random.normal(jax.random.key(1), (7, 2, 3), F64)
    y = jnp.array([0, 1, 2, 0, 1, 2, 0])
    g_eager = backprop.grad(model, losses.softmax_cross_entropy)(params, x, y)
    g_jit = jax.jit(backprop.grad(model, losses.softmax_cross_entropy))(params, x, y)
    _close(g_eager, g_jit, rtol=1e-13)
    assert jax.tree.structure(g_eager) == jax.tree.structure(params)


# --------------------------------------------------------------------------------------
# No autodiff, and nothing unchecked
# --------------------------------------------------------------------------------------

def test_backprop_uses_no_autodiff(monkeypatch):
    """With JAX's autodiff entry points disabled, backprop still traces and runs."""
    def forbidden(*a, **k):
        raise AssertionError("backprop called JAX autodiff")

    for name in ("grad", "value_and_grad", "vjp", "jvp", "linearize", "jacfwd", "jacrev"):
        monkeypatch.setattr(jax, name, forbidden)
    model = nn.serial(nn.dense(4), nn.relu(), nn.dropout(0.5), nn.dense(3), nn.softmax())
    params = model.init(jax.random.key(0), (2,), dtype=F64)
    x = jnp.ones((3, 2), F64)
    y = jnp.array([0, 1, 2])
    f = jax.jit(backprop.value_and_grad(model, losses.categorical_cross_entropy),
                static_argnames="train")
    value, g = f(params, x, y, key=jax.random.key(1), train=True)
    assert np.isfinite(value)
    # And the source imports nothing of autodiff.
    src = pathlib.Path(backprop.__file__).read_text()
    names = {n.attr for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Attribute)}
    assert not names & {"grad", "value_and_grad", "vjp", "jvp", "linearize", "custom_vjp"}


def _public_constructors(module, returns):
    out = set()
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj):
            ann = inspect.signature(obj).return_annotation
            if ann == returns or getattr(ann, "__name__", None) == returns:
                out.add(name)
    return out


def test_registry_every_layer_has_rule_and_test():
    """Fails when a public layer or loss lacks a backward rule or a gradient test."""
    constructors = _public_constructors(nn, "Layer")
    assert constructors == set(nn.LAYERS), "a public layer is missing from nn.LAYERS"
    kinds = {nn.LAYERS[name]().kind for name in nn.LAYERS}
    assert kinds == set(nn.LAYERS)
    assert kinds == set(backprop.LAYER_RULES), "a layer has no backward rule"
    assert kinds == set(LAYER_CASES), "a layer has no gradient test"


def test_registry_every_loss_has_rule_and_test():
    metrics_and_helpers = {"accuracy", "log_softmax", "one_hot_targets", "batch_mean"}
    public = {n for n in losses.__all__ if inspect.isfunction(getattr(losses, n))}
    assert public - metrics_and_helpers == set(losses.LOSSES) | set(losses.PENALTIES)
    assert set(losses.LOSSES.values()) == set(backprop.LOSS_RULES)
    assert set(losses.PENALTIES.values()) == set(backprop.PENALTY_RULES)
    assert set(LOSS_CASES) == set(losses.LOSSES)


def test_custom_loss_without_rule_is_a_clear_error():
    model = nn.serial(nn.dense(2))
    with pytest.raises(backprop.MissingRuleError, match="no hand-derived rule for loss"):
        backprop.grad(model, lambda p, y: jnp.sum(p))
