"""Issue 11 pieces: loss reductions, the Huber loss, Nielsen's costs and L2 term, the
PyTorch/Equinox/stax initializers, loader options, and hints for other libraries' habits.

Every new hand gradient is held to jax.grad (float64, ~1e-12) and to central finite
differences, on small shapes.
"""

import dataclasses
import gzip
import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import backprop, book, data, losses, nn
from funcnn.data import mnist as mnist_module
from funcnn.nn.dense import make_bias
from tests.gradcheck import fd_grad

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

F64 = jnp.float64
N, K = 4, 3


def _inputs(name, seed=0, shape=(N, K)):
    """Predictions in the loss's domain and matching targets (float64)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    z = jax.random.normal(k1, shape, F64)
    if name == "binary_cross_entropy":
        return jax.nn.sigmoid(z), jax.random.bernoulli(k2, 0.5, shape).astype(F64)
    if name == "binary_cross_entropy_with_logits":
        return z, jax.random.bernoulli(k2, 0.5, shape).astype(F64)
    return z, jax.random.normal(k2, shape, F64)


def _np_elementwise(name, p, t, delta=1.0):
    """Each loss's f(p, t), written in numpy from its textbook formula."""
    p, t = np.asarray(p), np.asarray(t)
    if name == "mse":
        return (p - t) ** 2
    if name == "mae":
        return np.abs(p - t)
    if name == "binary_cross_entropy":
        return -(t * np.log(p) + (1 - t) * np.log(1 - p))
    if name == "binary_cross_entropy_with_logits":
        s = 1 / (1 + np.exp(-p))
        return -(t * np.log(s) + (1 - t) * np.log(1 - s))
    # optax.huber_loss, as written there
    a = np.abs(p - t)
    q = np.minimum(a, delta)
    return 0.5 * q ** 2 + delta * (a - q)


PER_OUTPUT = {"mse": losses.mse, "mae": losses.mae,
              "binary_cross_entropy": losses.binary_cross_entropy,
              "binary_cross_entropy_with_logits": losses.binary_cross_entropy_with_logits,
              "huber_loss": losses.huber_loss()}


def _assert_hand_grad_is_right(loss, pred, target, rtol=1e-12):
    """Hand gradient == jax.grad (float64), and backprop.check: == jax.vjp and == central
    finite differences, element by element. Returns the check's result."""
    hand = loss.grad(pred, target)
    auto = jax.grad(loss)(pred, target)
    scale = float(jnp.max(jnp.abs(auto)))
    np.testing.assert_allclose(hand, auto, rtol=rtol, atol=rtol * scale)
    result = backprop.check(loss, pred, target)
    assert result.fd_points == pred.size and result.fd_error <= 1e-6
    return result


# --------------------------------------------------------------------------------------
# 1. Reductions
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PER_OUTPUT))
@pytest.mark.parametrize("shape", [(N, K), (N, 2, 3), (N,)], ids=["NK", "N23", "N"])
def test_reductions_match_their_definition(name, shape):
    loss = PER_OUTPUT[name]
    pred, target = _inputs(name, shape=shape)
    f = _np_elementwise(name, pred, target)
    total = f.sum()
    assert loss.reduction == "mean"
    np.testing.assert_allclose(loss(pred, target), f.mean(), rtol=1e-12)
    summed = loss.with_reduction("sum")
    assert summed.reduction == "sum" and summed.name == loss.name
    np.testing.assert_allclose(summed(pred, target), total / shape[0], rtol=1e-12)
    # The two differ by the number of outputs per example, K.
    k = int(np.prod(shape[1:]))
    np.testing.assert_allclose(summed(pred, target), k * loss(pred, target), rtol=1e-12)
    np.testing.assert_allclose(summed.grad(pred, target), k * loss.grad(pred, target),
                               rtol=1e-12)


@pytest.mark.parametrize("name", sorted(PER_OUTPUT))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduction_hand_gradients_against_jax_grad_and_finite_differences(name, reduction):
    loss = PER_OUTPUT[name].with_reduction(reduction)
    for seed in range(2):
        pred, target = _inputs(name, seed=seed)
        _assert_hand_grad_is_right(loss, pred, target)
    pred, target = _inputs(name, seed=5, shape=(N, 2, 3))   # more than one output axis
    _assert_hand_grad_is_right(loss, pred, target)


def test_sum_reduction_does_not_grow_with_the_batch():
    """Mean over the batch: a batch repeated twice has the same value, and each copy
    gets half the gradient, so the summed step is the same (PyTorch's reduction='sum'
    would double both)."""
    loss = losses.mse.with_reduction("sum")
    pred, target = _inputs("mse")
    twice_p, twice_t = jnp.concatenate([pred, pred]), jnp.concatenate([target, target])
    np.testing.assert_allclose(loss(twice_p, twice_t), loss(pred, target), rtol=1e-14)
    g2 = loss.grad(twice_p, twice_t)
    np.testing.assert_allclose(g2[:N] + g2[N:], loss.grad(pred, target), rtol=1e-14)
    # Nielsen's C_x = ||p - t||^2 per example: the sum reduction is its batch mean.
    per_example = np.sum((np.asarray(pred) - np.asarray(target)) ** 2, axis=1)
    np.testing.assert_allclose(loss(pred, target), per_example.mean(), rtol=1e-13)


def test_with_reduction_api():
    mse_sum = losses.mse.with_reduction("sum")
    assert losses.mse.with_reduction("sum") is mse_sum          # jit reuses its program
    assert mse_sum.with_reduction("mean") is losses.mse
    assert losses.mse.with_reduction("mean") is losses.mse
    assert repr(mse_sum) == "Loss('mse', reduction='sum')" and repr(losses.mse) == "Loss('mse')"
    assert mse_sum.metric is losses.mse.metric and mse_sum.targets == "same"
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum'\); "
                                         r"got 'none'"):
        losses.mse.with_reduction("none")
    for loss in (losses.softmax_cross_entropy, losses.categorical_cross_entropy):
        assert loss.reduction is None
        with pytest.raises(ValueError, match="already sums over the classes of each example"):
            loss.with_reduction("sum")
    mine = losses.Loss("mine", losses.mse.value, losses.mse.grad)
    with pytest.raises(ValueError, match="mine has no reduction to choose"):
        mine.with_reduction("sum")
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.Loss("bad", losses.mse.value, reduction="total")
    # The positional form of existing call sites still builds a Loss.
    assert losses.Loss("x", losses.mse.value, losses.mse.grad, losses.mse.metric,
                       "same").reduction is None


def test_a_per_output_loss_of_your_own():
    """Loss.elementwise: f and f' give both reductions, each with its checked rule."""
    log_cosh = losses.Loss.elementwise("log_cosh", lambda p, t: jnp.log(jnp.cosh(p - t)),
                                       lambda p, t: jnp.tanh(p - t), losses.mae.metric)
    pred, target = _inputs("mse")
    want = np.log(np.cosh(np.asarray(pred) - np.asarray(target)))
    np.testing.assert_allclose(log_cosh(pred, target), want.mean(), rtol=1e-13)
    summed = log_cosh.with_reduction("sum")
    np.testing.assert_allclose(summed(pred, target), want.sum() / N, rtol=1e-13)
    for loss in (log_cosh, summed):
        _assert_hand_grad_is_right(loss, pred, target)
    with pytest.raises(ValueError, match="log_cosh: predictions and targets must have"):
        log_cosh(pred, target[:2])                  # the default check: same shapes
    with pytest.raises(TypeError, match="derivative must be a function"):
        losses.Loss.elementwise("x", lambda p, t: p, None)
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.Loss.elementwise("x", lambda p, t: p, lambda p, t: p, reduction="max")


def test_sum_variants_check_their_inputs_and_work_under_jit():
    loss = losses.binary_cross_entropy.with_reduction("sum")
    with pytest.raises(ValueError, match="binary_cross_entropy: pred must lie in"):
        loss(jnp.array([[2.0, 0.5]]), jnp.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="mse: pred is an empty batch"):
        jax.jit(losses.mse.with_reduction("sum"))(jnp.zeros((0, 3)), jnp.zeros((0, 3)))
    pred, target = _inputs("mse")
    np.testing.assert_allclose(jax.jit(losses.mse.with_reduction("sum"))(pred, target),
                               losses.mse.with_reduction("sum")(pred, target), rtol=1e-14)


def test_training_with_a_sum_reduction_equals_mean_with_a_k_times_larger_rate():
    """backprop.grad through a model: the "sum" gradient is K times the "mean" one."""
    model = nn.serial(nn.dense(5), nn.tanh(), nn.dense(K))
    params = model.init(jax.random.key(0), (2,), dtype=F64)
    x = jax.random.normal(jax.random.key(1), (N, 2), F64)
    _, y = _inputs("mse")
    g_mean = backprop.grad(model, losses.mse)(params, x, y)
    g_sum = backprop.grad(model, losses.mse.with_reduction("sum"))(params, x, y)
    for a, b in zip(jax.tree.leaves(g_sum), jax.tree.leaves(g_mean)):
        np.testing.assert_allclose(a, K * b, rtol=1e-12)


# --------------------------------------------------------------------------------------
# 3. Huber
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("delta", [1.0, 0.5, 2.5])
def test_huber_values_match_optax_formula(delta):
    loss = losses.huber_loss(delta)
    pred, target = _inputs("huber_loss", seed=1)
    pred = pred * 3   # errors on both sides of delta
    want = _np_elementwise("huber", pred, target, delta)
    np.testing.assert_allclose(loss(pred, target), want.mean(), rtol=1e-13)
    np.testing.assert_allclose(loss.with_reduction("sum")(pred, target),
                               want.sum() / N, rtol=1e-13)
    _assert_hand_grad_is_right(loss, pred, target)
    _assert_hand_grad_is_right(loss.with_reduction("sum"), pred, target)
    # The gradient is the error clipped to [-delta, delta], over the elements.
    np.testing.assert_allclose(loss.grad(pred, target),
                               np.clip(pred - target, -delta, delta) / pred.size,
                               rtol=1e-14)


def test_huber_against_optax_if_installed():
    optax = pytest.importorskip("optax")
    pred, target = _inputs("huber_loss", seed=2)
    for delta in (1.0, 0.3):
        np.testing.assert_allclose(
            losses.huber_loss(delta)(3 * pred, target),
            jnp.mean(optax.huber_loss(3 * pred, target, delta=delta)), rtol=1e-13)


@pytest.mark.parametrize("delta", [1.0, 0.5])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_huber_gradient_at_the_kink_and_at_zero(delta, reduction):
    """Errors of exactly +-delta (where the pieces meet) and 0: the slope is continuous
    there, so hand, jax.grad and central differences all agree."""
    loss = losses.huber_loss(delta).with_reduction(reduction)
    target = jnp.array([[0.0, 1.0, -2.0], [0.5, 0.0, 3.0]], F64)
    err = jnp.array([[delta, -delta, 0.0], [delta, 0.3 * delta, -delta]], F64)
    pred = target + err
    assert np.all(np.abs(np.asarray(pred - target)) <= delta)   # exact in binary
    hand = loss.grad(pred, target)
    scale = 1.0 / (pred.size if reduction == "mean" else pred.shape[0])
    np.testing.assert_allclose(hand, np.asarray(err) * scale, rtol=1e-15)
    np.testing.assert_allclose(hand, jax.grad(loss)(pred, target), rtol=1e-15)
    # The one-sided slopes agree to O(h) at the kink: central differences to ~h.
    np.testing.assert_allclose(hand, fd_grad(lambda p: loss(p, target), pred, eps=1e-7),
                               rtol=1e-6, atol=1e-6 * scale)
    assert _assert_hand_grad_is_right(loss, pred, target, rtol=1e-15).kinks_skipped == 0


def test_huber_api():
    assert losses.huber_loss() is losses.huber_loss(1) is losses.LOSSES["huber_loss"]
    assert losses.huber_loss(2.0) is not losses.huber_loss()
    assert losses.huber_loss(2.0).with_reduction("sum").with_reduction("mean") \
        is losses.huber_loss(2.0)
    for bad in (0.0, -1.0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ValueError, match="huber_loss: delta must be a finite number > 0"):
            losses.huber_loss(bad)
    with pytest.raises(ValueError, match="huber_loss: predictions and targets must have"):
        losses.huber_loss()(jnp.ones((2, 3)), jnp.ones((2, 2)))


# --------------------------------------------------------------------------------------
# 1b. Nielsen's costs and L2 term (funcnn.book)
# --------------------------------------------------------------------------------------

def _nielsen_data(seed=0, m=5, k=10):
    k1, k2 = jax.random.split(jax.random.key(seed))
    a = jax.nn.sigmoid(2 * jax.random.normal(k1, (m, k), F64))
    y = jax.nn.one_hot(jax.random.randint(k2, (m,), 0, k), k, dtype=F64)
    return a, y


def test_nielsen_costs_are_his_formulas():
    a, y = _nielsen_data()
    an, yn = np.asarray(a), np.asarray(y)
    quadratic = np.mean([0.5 * np.linalg.norm(yx - ax) ** 2 for ax, yx in zip(an, yn)])
    cross = np.mean([-np.sum(yx * np.log(ax) + (1 - yx) * np.log(1 - ax))
                     for ax, yx in zip(an, yn)])
    np.testing.assert_allclose(book.nielsen_quadratic(a, y), quadratic, rtol=1e-13)
    np.testing.assert_allclose(book.nielsen_cross_entropy(a, y), cross, rtol=1e-13)
    # ... and the sum reductions of funcnn's own losses.
    np.testing.assert_allclose(book.nielsen_quadratic(a, y),
                               0.5 * losses.mse.with_reduction("sum")(a, y), rtol=1e-13)
    np.testing.assert_allclose(book.nielsen_cross_entropy(a, y),
                               losses.binary_cross_entropy.with_reduction("sum")(a, y),
                               rtol=1e-13)
    z = jnp.log(a / (1 - a))
    np.testing.assert_allclose(
        losses.binary_cross_entropy_with_logits.with_reduction("sum")(z, y), cross,
        rtol=1e-11)


@pytest.mark.parametrize("loss", [book.nielsen_quadratic, book.nielsen_cross_entropy],
                         ids=lambda loss: loss.name)
def test_nielsen_cost_gradients(loss):
    for seed in range(2):
        a, y = _nielsen_data(seed, m=3, k=4)
        _assert_hand_grad_is_right(loss, a, y)
    a, y = _nielsen_data(seed=1)
    if loss is book.nielsen_quadratic:
        np.testing.assert_allclose(loss.grad(a, y), (a - y) / a.shape[0], rtol=1e-15)
    else:   # through the sigmoid it is his delta, (a - y) / m
        np.testing.assert_allclose(loss.grad(a, y) * a * (1 - a), (a - y) / a.shape[0],
                                   rtol=1e-9, atol=1e-15)


def test_nielsen_cross_entropy_clips_saturated_outputs_and_checks_its_domain():
    a = jnp.array([[1.0, 0.0, 0.5]], jnp.float32)
    y = jnp.array([[1.0, 0.0, 1.0]], jnp.float32)
    assert np.isfinite(book.nielsen_cross_entropy(a, y))
    g = book.nielsen_cross_entropy.grad(a, y)
    assert np.all(np.isfinite(g)) and g[0, 0] == 0 and g[0, 1] == 0
    with pytest.raises(ValueError, match="nielsen_cross_entropy: pred must lie in"):
        book.nielsen_cross_entropy(jnp.array([[2.0, -3.0]]), jnp.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="nielsen_quadratic: predictions and targets"):
        book.nielsen_quadratic(jnp.ones((2, 3)), jnp.ones((2,)))


def test_nielsen_step_equals_the_old_rescaled_mean_losses():
    """Nielsen's eta on his costs == the old script's lr eta*K/2 (quadratic) or eta*K
    (cross-entropy) on funcnn's means, and his L2 lambda/(2n) == the old lambda/(2nK):
    the same step, in float64."""
    eta, lmbda, n, k = 3.0, 5.0, 50, 10
    model = nn.serial(nn.dense(6), nn.sigmoid(), nn.dense(k))
    params = model.init(jax.random.key(0), (7,), dtype=F64)
    x = jax.random.uniform(jax.random.key(1), (4, 7), F64)
    _, y = _nielsen_data(m=4, k=k)
    sig = nn.serial(model, nn.sigmoid())
    cases = [(sig, book.nielsen_quadratic, losses.mse, k / 2),
             (model, losses.binary_cross_entropy_with_logits.with_reduction("sum"),
              losses.binary_cross_entropy_with_logits, k)]
    for net, his, mean_loss, factor in cases:
        p = params if net is model else (params, nn.NoParams())
        g_his = jax.jit(backprop.grad(net, his))(p, x, y)
        g_old = jax.jit(backprop.grad(net, mean_loss))(p, x, y)
        for a, b in zip(jax.tree.leaves(g_his), jax.tree.leaves(g_old)):
            np.testing.assert_allclose(eta * a, eta * factor * b, rtol=1e-12, atol=1e-15)
    penalty = book.nielsen_l2(params, lmbda, n)
    old = lmbda / (2 * n * k)
    pen_grad = penalty.grad(params)
    for layer, g in zip(params, pen_grad):
        if isinstance(layer, nn.Dense):
            np.testing.assert_allclose(eta * g.w, eta * k * 2 * old * layer.w, rtol=1e-13)
            np.testing.assert_allclose(eta * g.w, eta * lmbda / n * layer.w, rtol=1e-13)
            np.testing.assert_array_equal(g.b, np.zeros_like(layer.b))   # no bias decay


def test_nielsen_l2_values_and_errors():
    params = nn.serial(nn.dense(3), nn.relu(), nn.dense(2)).init(jax.random.key(0), (4,))
    pen = book.nielsen_l2(params, 5.0, 50000)
    assert pen.l2[0].w == 5.0 / 100000 and pen.l2[0].b == 0.0 and pen.l2[2].w == 5e-5
    assert pen.l1[0].w == 0.0
    w2 = sum(float(jnp.sum(p.w ** 2)) for p in params if isinstance(p, nn.Dense))
    np.testing.assert_allclose(pen.value(params), 5e-5 * w2, rtol=1e-6)
    assert book.nielsen_l2(params, 0.0, 50000) is None
    for bad_n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="training-set size"):
            book.nielsen_l2(params, 5.0, bad_n)
    with pytest.raises(ValueError, match="lmbda must be finite and >= 0"):
        book.nielsen_l2(params, -1.0, 10)


# --------------------------------------------------------------------------------------
# 4. Initializers
# --------------------------------------------------------------------------------------

def test_every_initializer_name_resolves_for_dense_and_conv():
    for name in nn.initializers:
        w = nn.dense(5, init=name).init(jax.random.key(0), (8,)).w
        assert w.shape == (8, 5) and w.dtype == jnp.float32 and np.all(np.isfinite(w))
    for name in ("glorot_normal", "uniform_fan_in", "nnfs_0.1"):   # conv shares them
        k = nn.conv2d(4, 3, init=name).init(jax.random.key(0), (6, 6, 2)).w
        assert k.shape == (3, 3, 2, 4) and np.all(np.isfinite(k))
    for name in nn.bias_initializers:
        b = nn.dense(5, bias_init=name).init(jax.random.key(0), (8,)).b
        assert b.shape == (5,) and np.std(np.asarray(b)) > 0
        b = nn.conv2d(4, 3, bias_init=name).init(jax.random.key(0), (6, 6, 2)).b
        assert b.shape == (4,) and np.std(np.asarray(b)) > 0
    with pytest.raises(TypeError, match="bias_init must be a finite number, one of "
                                        r"\['normal', 'uniform_fan_in'\]"):
        nn.dense(3, bias_init="glorot")


def test_uniform_fan_in_bounds_and_variance():
    fan_in = 400
    p = nn.dense(300, init="uniform_fan_in", bias_init="uniform_fan_in").init(
        jax.random.key(0), (fan_in,), dtype=F64)
    bound = 1 / np.sqrt(fan_in)
    w, b = np.asarray(p.w), np.asarray(p.b)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.var() / (bound ** 2 / 3) - 1) < 0.02          # U(-a, a): variance a^2/3
    assert np.abs(b).max() <= bound and np.abs(b).max() > 0.9 * bound
    assert abs(b.mean()) < 0.2 * bound
    # conv: fan_in counts the kernel's taps, kh * kw * C_in
    c = nn.conv2d(64, (3, 2), init="uniform_fan_in", bias_init="uniform_fan_in").init(
        jax.random.key(1), (5, 5, 7), dtype=F64)
    bound = 1 / np.sqrt(3 * 2 * 7)
    assert np.abs(np.asarray(c.w)).max() <= bound and np.abs(np.asarray(c.b)).max() <= bound
    assert np.abs(np.asarray(c.w)).max() > 0.98 * bound


def test_uniform_fan_in_matches_equinox_bounds():
    """Equinox's eqx.nn.Linear and eqx.nn.Conv2d draw U(-lim, lim), lim = 1/sqrt(fan_in),
    for weights and biases: the same bounds and spread as funcnn's (other draws)."""
    eqx = pytest.importorskip("equinox")
    fan_in, out = 300, 400
    lin = eqx.nn.Linear(fan_in, out, key=jax.random.key(0))
    ours = nn.dense(out, init="uniform_fan_in", bias_init="uniform_fan_in").init(
        jax.random.key(0), (fan_in,))
    assert lin.weight.shape == ours.w.T.shape          # (out, in) there, (in, out) here
    for theirs, mine in ((lin.weight, ours.w), (lin.bias, ours.b)):
        theirs, mine = np.asarray(theirs), np.asarray(mine)
        assert np.abs(theirs).max() <= 1 / np.sqrt(fan_in) + 1e-7
        assert np.abs(mine).max() <= 1 / np.sqrt(fan_in) + 1e-7
        assert abs(np.abs(mine).max() / np.abs(theirs).max() - 1) < 0.02
        assert abs(mine.std() / theirs.std() - 1) < 0.1
    conv = eqx.nn.Conv2d(6, 200, (3, 3), key=jax.random.key(1))
    mine = nn.conv2d(200, 3, init="uniform_fan_in", bias_init="uniform_fan_in").init(
        jax.random.key(1), (8, 8, 6))
    lim = 1 / np.sqrt(6 * 3 * 3)
    for theirs, ours_ in ((conv.weight, mine.w), (conv.bias, mine.b)):
        theirs, ours_ = np.abs(np.asarray(theirs)), np.abs(np.asarray(ours_))
        assert theirs.max() <= lim + 1e-7 and ours_.max() <= lim + 1e-7
        assert abs(ours_.max() / theirs.max() - 1) < 0.05


def test_glorot_normal_is_jaxs_truncated_normal():
    shape = (300, 200)
    w = nn.dense(200, init="glorot_normal").init(jax.random.key(3), (300,), dtype=F64).w
    ref = jax.nn.initializers.glorot_normal()
    # same distribution as jax.nn.initializers.glorot_normal (stax's Dense default);
    # with the same key, the same numbers
    key_w = jax.random.split(jax.random.key(3))[0]
    np.testing.assert_allclose(w, ref(key_w, shape, F64), rtol=1e-12)
    std = np.sqrt(2 / (300 + 200))
    assert abs(np.std(np.asarray(w)) / std - 1) < 0.02
    assert np.abs(np.asarray(w)).max() <= 2 * std / 0.87962566103423978 + 1e-12


@pytest.mark.parametrize("make", [lambda: nn.dense(200, init="lecun_normal"),
                                  lambda: nn.conv2d(200, 3, init="lecun_normal")],
                         ids=["dense", "conv2d"])
def test_lecun_normal_is_flaxs_default(make):
    # Flax's nn.Dense / nn.Conv kernel_init: jax.nn.initializers.lecun_normal, the same
    # numbers for the same key (conv: fan_in counts the kernel's taps, 3 * 3 * 30)
    in_shape = (300,) if make().name == "dense" else (8, 8, 30)
    w = make().init(jax.random.key(3), in_shape, dtype=F64).w
    key_w = jax.random.split(jax.random.key(3))[0]
    ref = jax.nn.initializers.lecun_normal()(key_w, w.shape, F64)
    np.testing.assert_allclose(w, ref, rtol=1e-12)
    assert abs(np.std(np.asarray(w)) * np.sqrt(np.prod(w.shape[:-1])) - 1) < 0.03


def test_nnfs_scales():
    p = nn.dense(200, init="nnfs").init(jax.random.key(0), (300,), dtype=F64)
    q = nn.dense(200, init="nnfs_0.1").init(jax.random.key(0), (300,), dtype=F64)
    assert abs(np.std(np.asarray(p.w)) - 0.01) < 2e-4
    assert abs(np.std(np.asarray(q.w)) - 0.1) < 2e-3
    np.testing.assert_allclose(q.w, 10 * p.w, rtol=1e-12)     # same stream, 10x the scale
    np.testing.assert_array_equal(q.b, np.zeros(200))


def test_bias_function_may_see_the_fan_in():
    seen = []

    def bias(key, shape, dtype, *, fan_in):
        seen.append(fan_in)
        return jnp.full(shape, 1.0 / fan_in, dtype)

    p = nn.dense(3, bias_init=bias).init(jax.random.key(0), (8,))
    np.testing.assert_allclose(p.b, np.full(3, 1 / 8), rtol=1e-6)
    c = nn.conv2d(2, (3, 2), bias_init=bias).init(jax.random.key(0), (5, 5, 4))
    assert seen == [8, 3 * 2 * 4] and c.b.shape == (2,)
    # the plain (key, shape, dtype) form still works
    p = nn.dense(3, bias_init=lambda k, s, d: jnp.ones(s, d)).init(jax.random.key(0), (2,))
    np.testing.assert_array_equal(p.b, np.ones(3))
    with pytest.raises(ValueError, match="needs the layer's fan_in"):
        make_bias("uniform_fan_in", jax.random.key(0), 3, jnp.float32)


# --------------------------------------------------------------------------------------
# 5. Loader options (fake IDX files; nothing from /work/shared)
# --------------------------------------------------------------------------------------

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _fake_set(folder):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
              np.array([0, 1, 2, 0, 1, 2], np.uint8),
              rng.integers(0, 256, (3, 4, 4), dtype=np.uint8),
              np.array([2, 1, 0], np.uint8)]
    arrays[0][0, 0, 0], arrays[0][0, 0, 1] = 0, 255      # both ends of the range
    folder.mkdir()
    files = []
    for name, arr in zip(FILES, arrays):
        raw = data.encode_idx(arr)
        blob = gzip.compress(raw, mtime=0)
        (folder / (name + ".gz")).write_bytes(blob)
        files.append(mnist_module.IdxFile(
            name, arr.shape, gz_sha256=hashlib.sha256(blob).hexdigest(), gz_size=len(blob),
            raw_sha256=hashlib.sha256(raw).hexdigest()))
    return mnist_module.DatasetSpec("fake", ("file:///nowhere/",), *files), arrays


def test_loader_flatten_and_scale(tmp_path):
    spec, arrays = _fake_set(tmp_path / "f")
    (x, y), (xt, yt) = data.load_idx_dataset(spec, tmp_path / "f")
    assert x.dtype == np.uint8 and x.shape == (6, 4, 4)           # default: as stored
    np.testing.assert_array_equal(x, arrays[0])
    (x, y), (xt, yt) = data.load_idx_dataset(spec, tmp_path / "f", flatten=True, scale="unit")
    assert x.shape == (6, 16) and xt.shape == (3, 16) and x.dtype == np.float32
    np.testing.assert_array_equal(x, arrays[0].reshape(6, -1).astype(np.float32) / 255.0)
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(y, arrays[1])                   # labels untouched
    (x, _), _ = data.load_idx_dataset(spec, tmp_path / "f", scale="symmetric")
    assert x.shape == (6, 4, 4) and x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(x, (arrays[0].astype(np.float32) - 127.5) / 127.5)
    (x1, _), _ = data.load_idx_dataset(spec, tmp_path / "f", scale=True)
    (x2, _), _ = data.load_idx_dataset(spec, tmp_path / "f", scale="unit")
    np.testing.assert_array_equal(x1, x2)
    (x, _), _ = data.load_idx_dataset(spec, tmp_path / "f", flatten=True)
    assert x.dtype == np.uint8 and x.shape == (6, 16)


def test_load_mnist_and_fashion_pass_the_options_on(tmp_path, monkeypatch):
    spec, _ = _fake_set(tmp_path / "f")
    monkeypatch.setattr(mnist_module, "MNIST", spec)
    monkeypatch.setattr(mnist_module, "FASHION_MNIST", spec)
    for loader in (data.load_mnist, data.load_fashion_mnist):
        (x, _), (xt, _) = loader(tmp_path / "f", flatten=True, scale="unit")
        assert x.shape == (6, 16) and x.dtype == np.float32 and xt.shape == (3, 16)
        (x, _), _ = loader(tmp_path / "f")
        assert x.shape == (6, 4, 4) and x.dtype == np.uint8


def test_loader_options_are_checked_before_any_file_is_read(tmp_path):
    spec = mnist_module.DatasetSpec("fake", ("file:///nowhere/",),
                                    *[mnist_module.IdxFile(f, (1,)) for f in FILES])
    with pytest.raises(ValueError, match="scale must be None .*'unit'.*'symmetric'"):
        data.load_idx_dataset(spec, tmp_path, scale="0-1")
    with pytest.raises(TypeError, match="flatten must be True or False"):
        data.load_mnist(tmp_path, flatten="yes")
    with pytest.raises(ValueError, match="scale must be"):
        data.prepare_images(np.zeros((2, 2, 2), np.uint8), scale=255)


# --------------------------------------------------------------------------------------
# 6. Hints for other libraries' habits
# --------------------------------------------------------------------------------------

def test_batch_axis_in_input_shape_says_drop_it():
    model = nn.serial(nn.dense(64), nn.relu(), nn.dense(10))
    for shape in ((-1, 784), (None, 784)):
        with pytest.raises(ValueError, match=r"drop the batch axis: pass \(784,\)"):
            model.init(jax.random.key(0), shape)
    with pytest.raises(ValueError, match=r"drop the batch axis: pass \(28, 28, 1\)"):
        nn.conv2d(4, 3).init(jax.random.key(0), (-1, 28, 28, 1))
    with pytest.raises(TypeError, match=r"not an array of data.*Pass x.shape\[1:\] = "
                                        r"\(784,\)"):
        model.init(jax.random.key(0), jnp.ones((8, 784)))
    with pytest.raises(ValueError, match=r"If the leading 1 is a batch axis, drop it.*"
                                         r"\(784,\)"):
        model.init(jax.random.key(0), (1, 784))
    # the ordinary messages stay
    with pytest.raises(ValueError, match="positive sizes"):
        model.init(jax.random.key(0), (0,))
    assert model.init(jax.random.key(0), np.array([3]))[0].w.shape == (3, 64)


def test_capitalised_layer_names_point_to_the_constructors():
    with pytest.raises(TypeError, match=r"holds a layer's parameters.*nn\.dense\(64\)"):
        nn.Dense(64)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'features'.*"
                                        r"nn\.dense\("):
        nn.Dense(features=64)
    with pytest.raises(TypeError, match=r"nn\.conv2d\(32, kernel_size"):
        nn.Conv(32, (3, 3))
    with pytest.raises(TypeError, match=r"nn\.conv2d\("):
        nn.Conv(features=32, kernel_size=(3, 3))
    with pytest.raises(TypeError, match=r"nn\.layer_norm\(\)"):
        nn.LayerNorm()
    for name, spelling in [("Sequential", "nn.serial"), ("Linear", "nn.dense"),
                           ("Conv2d", "nn.conv2d"), ("ReLU", "nn.relu()"),
                           ("Relu", "nn.relu()"), ("Dropout", "probability of DROPPING"),
                           ("MaxPool2d", "nn.max_pool"), ("BatchNorm", "nn.layer_norm")]:
        with pytest.raises(AttributeError,
                           match=f"has no attribute '{name}'.*{re.escape(spelling)}"):
            getattr(nn, name)
    with pytest.raises(AttributeError, match="has no attribute 'nonsense'$"):
        nn.nonsense  # noqa: B018
    assert not hasattr(nn, "Sequential")


@pytest.mark.parametrize("make, match", [
    (lambda: nn.avg_pool(window_shape=(2, 2), strides=(2, 2)),
     r"^nn\.avg_pool\(\) got an unexpected keyword 'window_shape': use window\.$"),
    (lambda: nn.max_pool(2, strides=2), r"'strides': use stride"),
    (lambda: nn.max_pool(kernel_size=2, stride=2), r"'kernel_size': use window"),
    (lambda: nn.conv2d(32, 3, strides=2), r"^nn\.conv2d\(\) .*'strides': use stride"),
    (lambda: nn.conv2d(in_channels=1, features=3, kernel_size=4),
     r"'in_channels': leave it out: the input size comes from init's input_shape"),
    (lambda: nn.conv2d(3, 3, kernel_init="he"), r"'kernel_init': use init"),
    (lambda: nn.dense(10, use_bias=False), r"'use_bias': leave it out: every dense"),
    (lambda: nn.dense(out_features=10), r"'out_features': use features"),
    (lambda: nn.dense(10, param_dtype="float64"), r"init's dtype argument"),
    (lambda: nn.dense(10, bogus=1), r"'bogus': its keywords are \['features', 'init', "
                                    r"'bias_init'\]"),
])
def test_flax_equinox_and_pytorch_keywords_name_funcnns(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_parameters_and_stax_pairs_in_serial_are_named():
    params = nn.Dense(jnp.ones((2, 3)), jnp.zeros(3))
    with pytest.raises(TypeError, match=r"it is a layer's parameters.*not nn\.Dense"):
        nn.serial(params, nn.relu())
    stax_like = (lambda key, shape: None, lambda params, x: x)
    with pytest.raises(TypeError, match=r"stax layer, a pair \(init_fun, apply_fun\)"):
        nn.serial(nn.dense(3), stax_like)


def test_parameters_still_build_as_parameters():
    w, b = jnp.ones((2, 3)), jnp.zeros(3)
    d = nn.Dense(w, b)
    assert nn.Dense(w=5e-4, b=0.0).w == 5e-4 and nn.Dense(1, 2).b == 2
    assert dataclasses.replace(d, b=b + 1).b[0] == 1
    doubled = jax.tree.map(lambda a: 2 * a, d)
    assert isinstance(doubled, nn.Dense)
    out = jax.jit(lambda p: jax.tree.map(lambda a: a + 1, p))(
        (d, nn.Conv(jnp.ones((3, 3, 1, 2)), jnp.zeros(2)), nn.LayerNorm(jnp.ones(3), b)))
    assert isinstance(out[1], nn.Conv) and isinstance(out[2], nn.LayerNorm)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.w = w
