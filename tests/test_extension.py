"""A user's own layers and losses: hand rules that train under fit and pass check;
the mixed engine; the bridge to jax.grad; metrics apart from the loss; and the clear
errors for rules and metrics that return the wrong thing."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import backprop, data, gradcheck, losses, metrics, nn, optim, sweep, train
from tests.gradcheck import assert_tree_close

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

F64 = jnp.float64
X, Y = data.spiral_data(20, 3)  # 60 points
X64 = X.astype(np.float64)
SCE = losses.softmax_cross_entropy


@dataclasses.dataclass(frozen=True)
class Gain:
    g: jax.Array


jax.tree_util.register_dataclass(Gain, data_fields=["g"], meta_fields=[])


def rms_norm(eps=1e-6):
    """The README's RMS norm (y = g * x / r, r = sqrt(mean(x^2) + eps))."""
    def init_fn(key, shape, dtype):
        return shape, Gain(1.0 + 0.1 * jax.random.normal(key, shape, dtype))

    def forward_fn(params, x, key, train):
        r = jnp.sqrt(jnp.mean(x * x, axis=1, keepdims=True) + eps)
        xhat = x / r
        return params.g[None, :] * xhat, (xhat, r)

    def backward_fn(params, tape, dy, key, train):
        xhat, r = tape
        u = dy * params.g[None, :]
        return Gain(jnp.sum(dy * xhat, axis=0)), \
            (u - xhat * jnp.mean(u * xhat, axis=1, keepdims=True)) / r

    return nn.Layer("rms_norm", init_fn, lambda p, x, k, t: forward_fn(p, x, k, t)[0],
                    backward_fn, forward_fn)


def user_residual(block):
    """A user's own residual combinator, y = x + block(x), written with run."""
    def forward_fn(params, x, key, train, run):
        y, tape = run.forward(block, params, x, key, train)
        return x + y, tape

    def backward_fn(params, tape, dy, key, train, run):
        dp, dx = run.backward(block, params, tape, dy, key, train)
        return dp, dy + dx

    return nn.Layer("user_residual", block.init_fn,
                    lambda p, x, k, t: x + block.apply_fn(p, x, k, t),
                    backward_fn, forward_fn, children=(block,))


def _fit(model, loss, engine, y=Y, epochs=5, **kw):
    opt = optim.adam(0.01)
    state = train.init_state(model, opt, jax.random.key(0), (2,), dtype=F64)
    return train.fit(model, loss, opt, state, X64, y, epochs=epochs, batch_size=20,
                     engine=engine, progress=False, **kw)


def _close(a, b, rtol=1e-10):
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(a))
    assert_tree_close(a, b, rtol=rtol, atol=rtol * scale)


# --------------------------------------------------------------------------------------
# User layers with hand rules
# --------------------------------------------------------------------------------------

def test_user_rms_norm_and_residual_pass_check():
    backprop.check(rms_norm(), input_shape=(6,))
    block = user_residual(nn.serial(rms_norm(), nn.dense(6), nn.tanh(), nn.dropout(0.3)))
    result = backprop.check(block, input_shape=(6,))
    assert result.kinks_skipped == 0 and result.fd_points > 100


def test_user_layers_train_under_fit_with_hand_rules():
    """The hand engine (strict) trains the user's layers along jax.grad's trajectory."""
    model = nn.serial(nn.dense(8), user_residual(nn.serial(rms_norm(), nn.dense(8), nn.relu())),
                      nn.residual(nn.serial(nn.dense(8), nn.tanh())), nn.dense(3))
    (s1, h1), (s2, h2) = _fit(model, SCE, "backprop"), _fit(model, SCE, "jax")
    _close(s1.params, s2.params, rtol=1e-9)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-10)
    assert h1["loss"][-1] < h1["loss"][0]


def test_combinator_rule_does_not_rerun_the_forward_pass():
    """The block's apply runs once per step under the hand engine (its tape is kept)."""
    calls = []
    inner = nn.dense(4)
    counting = dataclasses.replace(
        inner, apply_fn=lambda p, x, k, t: (calls.append(1), inner.apply_fn(p, x, k, t))[1])
    model = nn.residual(counting)
    params = model.init(jax.random.key(0), (4,), F64)
    x = jnp.ones((3, 4), F64)
    backprop.grad(model, losses.mse)(params, x, jnp.zeros((3, 4), F64))
    assert len(calls) == 1


# --------------------------------------------------------------------------------------
# Engines: strict, mixed; the rule checks
# --------------------------------------------------------------------------------------

SWISH = nn.elementwise("swish", jax.nn.swish, derivative=None)


def test_strict_engine_names_the_layer_and_both_ways_out():
    model = nn.serial(nn.dense(4), SWISH, nn.dense(3))
    with pytest.raises(backprop.MissingRuleError) as e:
        _fit(model, SCE, "backprop")
    msg = str(e.value)
    assert "swish" in msg and "engine='mixed'" in msg and "engine='jax'" in msg
    assert "Your own layer or loss" in msg


def test_mixed_engine_uses_vjp_only_where_a_rule_is_missing():
    model = nn.serial(nn.dense(4), SWISH, nn.residual(nn.serial(nn.dense(4), SWISH)),
                      nn.dense(3))
    params = model.init(jax.random.key(0), (2,), F64)
    mixed = backprop.grad(model, SCE, engine="mixed")
    g_mixed, g_jax = jax.jit(lambda p: (  # one program, not one per op
        mixed(p, X64, Y), jax.grad(lambda q: SCE(model.apply(q, X64), Y))(p)))(params)
    _close(g_mixed, g_jax)
    (s1, _), (s2, _) = _fit(model, SCE, "mixed"), _fit(model, SCE, "jax")
    _close(s1.params, s2.params, rtol=1e-9)


def test_rule_with_wrong_structure_or_shape_is_a_clear_error_at_trace_time():
    base = nn.dense(3)
    wrong_tree = dataclasses.replace(base, backward_fn=lambda p, t, dy, k, tr: (
        (t[0].T @ dy, jnp.sum(dy, 0)), dy @ p.w.T))
    wrong_shape = dataclasses.replace(base, backward_fn=lambda p, t, dy, k, tr: (
        nn.Dense(t[0].T @ dy, jnp.sum(dy, 0)), dy))
    wrong_dtype = dataclasses.replace(base, backward_fn=lambda p, t, dy, k, tr: (
        nn.Dense(t[0].T @ dy, jnp.sum(dy, 0).astype(jnp.float32)), dy @ p.w.T))
    model_of = lambda layer: nn.serial(nn.dense(4), layer)  # noqa: E731
    cases = [(wrong_tree, r"dparams with structure .* parameters have structure"),
             (wrong_shape, r"returned dx of shape \(\d+, 3\); it must have the shape of "
                           r"the input, \(\d+, 4\)")]
    for layer, match in cases:
        params = model_of(layer).init(jax.random.key(0), (2,), F64)
        f = jax.jit(backprop.grad(model_of(layer), SCE))
        with pytest.raises(backprop.RuleError, match="dense.*" + match):
            jax.eval_shape(f, params, X64, Y)  # tracing is enough: no XLA error
        with pytest.raises(gradcheck.GradientCheckError, match=match):
            backprop.check(layer, input_shape=(4,))
    # A rule computing in float32 is cast back to float64 as JAX casts cotangents, and
    # the checker sees the precision it lost.
    with pytest.raises(gradcheck.GradientCheckError, match=r"params\.b disagrees with jax\.vjp"):
        backprop.check(wrong_dtype, input_shape=(4,))


def test_combinator_without_forward_rule_is_refused():
    with pytest.raises(TypeError, match="forward_fn that keeps its children's tapes"):
        nn.Layer("bad", nn.dense(2).init_fn, nn.dense(2).apply_fn,
                 backward_fn=lambda *a: None, children=(nn.dense(2),))


# --------------------------------------------------------------------------------------
# Losses as plain functions; label checks at the boundary
# --------------------------------------------------------------------------------------

def _quadratic(a, t):
    return 0.5 * jnp.sum((a - t) ** 2) / a.shape[0]


PLAIN_MODEL = nn.serial(nn.dense(8), nn.relu(), nn.dense(3))


@pytest.mark.parametrize("loss,compare_engines", [
    (lambda z, y: SCE(z, y), True),
    (functools.partial(SCE.value), False),
], ids=["lambda", "partial"])
def test_plain_function_loss(loss, compare_engines):
    """Works under mixed and jax (same numbers), a clear error under backprop; the
    history has no accuracy column unless asked for, never NaN. A lambda and a partial
    (no __name__) both; the engine and metric comparisons, which do not depend on the
    function's form, once (each is a compilation of fit)."""
    model = PLAIN_MODEL
    with pytest.raises(backprop.MissingRuleError, match="engine='mixed'"):
        _fit(model, loss, "backprop")
    s1, h1 = _fit(model, loss, "mixed")
    assert set(h1.metrics) == {"loss", "data_loss", "learning_rate"}
    assert all(np.all(np.isfinite(v)) for v in h1.metrics.values())
    _, h4 = _fit(model, SCE, "backprop")
    np.testing.assert_allclose(h1["loss"], h4["loss"], rtol=1e-10)  # the same function
    if not compare_engines:
        return
    s2, h2 = _fit(model, loss, "jax")
    _close(s1.params, s2.params, rtol=1e-9)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-10)
    _, h3 = _fit(model, loss, "mixed", metrics=[metrics.accuracy])
    np.testing.assert_allclose(h3["accuracy"], h4["accuracy"], rtol=1e-12)


def test_plain_function_loss_labels_checked_at_the_boundary():
    model = nn.serial(nn.dense(3))
    bad = Y.copy()
    bad[5] = 3
    with pytest.raises(ValueError, match=r"labels? .*\[0, 3\)"):
        _fit(model, lambda z, y: SCE(z, y), "mixed", y=bad)


# --------------------------------------------------------------------------------------
# The bridge to jax.grad
# --------------------------------------------------------------------------------------

def test_as_custom_vjp_runs_the_hand_rule():
    layer = nn.serial(rms_norm(), nn.dense(3), nn.dropout(0.2))
    params = layer.init(jax.random.key(0), (4,), F64)
    x = jax.random.normal(jax.random.key(1), (5, 4), F64)
    key = jax.random.key(2)
    f = backprop.as_custom_vjp(layer, train=True)
    g_bridge = jax.jit(jax.grad(lambda p, xx: jnp.sum(f(p, xx, key) ** 2), argnums=(0, 1)))(
        params, x)
    @jax.jit  # one program, not one per op
    def hand_and_autodiff(params, x):
        y, tape = backprop.forward(layer, params, x, key, True)
        return backprop.backward(layer, params, tape, 2 * y, key, True), jax.grad(
            lambda p, xx: jnp.sum(layer.apply(p, xx, key=key, train=True) ** 2),
            argnums=(0, 1))(params, x)

    g_hand, g_auto = hand_and_autodiff(params, x)
    _close(g_bridge, g_hand, rtol=1e-13)
    _close(g_bridge, g_auto)
    # A deliberately wrong rule shows through: jax.grad really calls the hand rule.
    doubled = dataclasses.replace(nn.identity(), backward_fn=lambda p, t, dy, k, tr: (
        nn.NoParams(), 2 * dy))
    g = jax.grad(lambda xx: jnp.sum(backprop.as_custom_vjp(doubled)(nn.NoParams(), xx)))(x)
    np.testing.assert_array_equal(g, 2 * jnp.ones_like(x))


def test_as_custom_vjp_of_a_loss():
    z = jax.random.normal(jax.random.key(0), (6, 3), F64)
    y = jnp.array([0, 1, 2, 2, 1, 0])
    f = backprop.as_custom_vjp(SCE)
    np.testing.assert_allclose(f(z, y), SCE(z, y), rtol=1e-15)
    np.testing.assert_allclose(jax.grad(f)(z, y), SCE.grad(z, y), rtol=1e-15)
    np.testing.assert_allclose(jax.grad(lambda z: 3.0 * f(z, y))(z), 3 * SCE.grad(z, y),
                               rtol=1e-15)


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------

def test_regression_reports_mae_not_nan():
    model = nn.serial(nn.dense(8), nn.tanh(), nn.dense(1))
    xs, ys = data.sine_data(64)
    opt = optim.adam(0.01)
    state = train.init_state(model, opt, jax.random.key(0), (1,), dtype=F64)
    precision = float(np.std(ys) / 250)
    state, h = train.fit(model, losses.mse, opt, state, xs, ys, epochs=3, progress=False,
                         validation_data=(xs, ys))
    assert set(h.metrics) == {"loss", "data_loss", "mae", "learning_rate", "val_loss",
                              "val_mae"}
    pred = np.asarray(model.apply(state.params, jnp.asarray(xs, F64)))
    np.testing.assert_allclose(h["val_mae"][-1], np.mean(np.abs(pred - ys)), rtol=1e-12)
    out = train.evaluate(model, losses.mse, state.params, xs, ys,
                         metrics={"acc": metrics.regression_accuracy(precision),
                                  "mae": metrics.mae})
    assert out["acc"] == pytest.approx(np.mean(np.abs(pred - ys) < precision))


def test_binary_losses_report_binary_accuracy():
    z = jnp.array([[2.0, -1.0], [-0.5, 0.3]], F64)
    t = jnp.array([[1.0, 0.0], [1.0, 1.0]], F64)
    assert float(losses.binary_cross_entropy_with_logits.metric(z, t)) == 0.75
    assert float(losses.binary_cross_entropy.metric(jax.nn.sigmoid(z), t)) == 0.75


def test_sweep_reports_the_same_metrics_as_fit():
    model = nn.serial(nn.dense(8), nn.relu(), nn.dense(3))
    chosen = [metrics.accuracy, metrics.Metric("top_prob", lambda z, y: jnp.mean(
        jnp.max(nn.softmax_fn(z), axis=1)))]
    res = sweep.run(model, SCE, optim.adam(1e-3), X64, Y, sweep.grid(learning_rate=[0.01]),
                    epochs=3, batch_size=20, dtype=F64, metrics=chosen, strategy="loop")
    opt = optim.adam(1e-3)
    state = train.init_state(model, opt, jax.random.key(0), (2,), dtype=F64)
    state = dataclasses.replace(state, opt_state=optim.set_hyperparams(
        state.opt_state, learning_rate=jnp.asarray(0.01, F64)))
    _, h = train.fit(model, SCE, opt, state, X64, Y, epochs=3, batch_size=20,
                     metrics=chosen, progress=False)
    for m in ("accuracy", "top_prob", "loss"):
        np.testing.assert_allclose(res.history[m][0], h[m], rtol=1e-12)


def test_bad_metrics_are_clear_errors():
    model = nn.serial(nn.dense(3))
    with pytest.raises(ValueError, match="metric 'rowwise' must return a scalar"):
        _fit(model, SCE, "backprop", metrics={"rowwise": lambda z, y: jnp.max(z, axis=1)})
    with pytest.raises(ValueError, match="pass a dict"):
        _fit(model, SCE, "backprop", metrics=[lambda z, y: jnp.mean(z)])
    with pytest.raises(ValueError, match="distinct"):
        _fit(model, SCE, "backprop", metrics=[metrics.accuracy, metrics.binary_accuracy])
    with pytest.raises(TypeError, match="a metric must be"):
        _fit(model, SCE, "backprop", metrics=["accuracy"])
    with pytest.raises(ValueError, match="precision must be a positive number"):
        metrics.regression_accuracy(0.0)


# --------------------------------------------------------------------------------------
# Edges found in review
# --------------------------------------------------------------------------------------

def test_as_custom_vjp_of_a_loss_differentiates_float_targets():
    p = jnp.array([[0.5, 1.0], [2.0, -1.0]], F64)
    t = jnp.array([[1.0, 2.0], [0.0, 3.0]], F64)
    f = backprop.as_custom_vjp(losses.mse)
    g_p, g_t = jax.grad(f, argnums=(0, 1))(p, t)
    a_p, a_t = jax.grad(losses.mse.value, argnums=(0, 1))(p, t)
    np.testing.assert_allclose(g_p, a_p, rtol=1e-15)
    np.testing.assert_allclose(g_t, a_t, rtol=1e-15)


def test_wrong_target_shape_is_blamed_on_the_targets_not_the_rule():
    with pytest.raises(ValueError, match="predictions and targets must have the same"):
        backprop.loss_value_and_grad(losses.mse)(jnp.ones((4, 1)), jnp.ones((4,)))


def test_mixed_input_and_weight_dtypes_follow_jax():
    """float64 inputs into float32 weights: gradients in the weights' dtype, as jax.grad."""
    model = nn.serial(nn.dense(3), nn.relu(), nn.dense(3))
    params = model.init(jax.random.key(0), (2,), jnp.float32)
    hand = backprop.grad(model, SCE)
    g, a = jax.jit(lambda p: (  # one program, not one per op
        hand(p, X64, Y), jax.grad(lambda q: SCE(model.apply(q, X64), Y))(p)))(params)
    assert all(u.dtype == v.dtype == jnp.float32 for u, v in
               zip(jax.tree.leaves(g), jax.tree.leaves(a)))
    _close(g, a, rtol=1e-6)


def test_probability_losses_agree_with_jax_grad_on_the_clip_boundary():
    """sigmoid(16) is exactly 1 - 1e-7 in float32: both engines take the same slope."""
    p = jax.nn.sigmoid(jnp.array([[16.0, -3.0], [0.5, 16.0]], jnp.float32))
    t = jnp.array([[1.0, 0.0], [1.0, 0.0]], jnp.float32)
    np.testing.assert_allclose(losses.binary_cross_entropy.grad(p, t),
                               jax.grad(losses.binary_cross_entropy.value)(p, t), rtol=1e-6)
    probs = jnp.array([[1e-7, 1 - 1e-7], [0.3, 0.7]], F64)
    backprop.check(losses.categorical_cross_entropy, probs, jnp.array([0, 1]))


def test_losses_serve_as_metrics_and_penalties_are_checked():
    opt = optim.adam(0.01)
    xs, ys = data.sine_data(32)
    model = nn.serial(nn.dense(4), nn.tanh(), nn.dense(1))
    state = train.init_state(model, opt, jax.random.key(0), (1,), dtype=F64)
    _, h = train.fit(model, losses.mse, opt, state, xs, ys, epochs=2, progress=False,
                     metrics=[losses.mae, metrics.mae.fn])
    assert {"mae", "_mae"} <= set(h.metrics)
    # check takes a penalty (l1 and l2 themselves pass it in test_backprop's
    # test_penalty_rule, on this tree) and catches a wrong rule
    tree = nn.serial(nn.dense(3), nn.dense(2)).init(jax.random.key(0), (4,), F64)
    tree = jax.tree.map(lambda w: w + 0.1, tree)
    bad = losses.Regularizer("l2", losses.l2.value, lambda tr: jax.tree.map(lambda w: w, tr))
    with pytest.raises(gradcheck.GradientCheckError, match=r"params\[0\]\.w"):
        backprop.check(bad, tree)


def test_sweep_summary_shows_the_metrics_it_has():
    model = nn.serial(nn.dense(4), nn.tanh(), nn.dense(1))
    xs, ys = data.sine_data(32)
    res = sweep.run(model, losses.mse, optim.adam(1e-3), xs, ys, sweep.grid(learning_rate=[0.01]),
                    epochs=2, strategy="loop")
    assert "mae" in res.summary().splitlines()[0]
