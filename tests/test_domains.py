"""Nothing silent: losses and metrics refuse inputs outside their domain.

With concrete values (outside ``jit``) logits given where probabilities belong, soft
labels that are not distributions, binary targets outside [0, 1], labels a one-column
accuracy cannot mean, NaN or inf all raise a ValueError naming the argument (pred or
target) and the fix. An empty batch raises even under ``jit`` (its shape is static).
The last test draws random bad inputs: every outcome is a finite, correct value or an
error naming the argument.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funcnn import losses, metrics, nn

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

F64 = jnp.float64
Z = jnp.array([[3.0, -1.0, 0.5], [0.1, 2.0, -3.0]], F64)  # logits
P = jax.nn.softmax(Z)                                       # probabilities
Y = jnp.array([1, 0])
CCE, SCE = losses.categorical_cross_entropy, losses.softmax_cross_entropy
BCE, BCEL = losses.binary_cross_entropy, losses.binary_cross_entropy_with_logits


# --------------------------------------------------------------------- 1. logits as probs

def test_categorical_cross_entropy_refuses_logits():
    # Today's silent answer: a confidently wrong logit row clipped to 1 - 1e-7 costs ~1e-7.
    z = jnp.array([[5.0, -5.0]], F64)
    with pytest.raises(ValueError, match=r"categorical_cross_entropy: pred must be "
                       r"probabilities.*look like logits; use losses.softmax_cross_entropy"):
        CCE(z, jnp.array([1]))
    # In [0, 1] but rows not summing to 1: not a softmax's output either.
    with pytest.raises(ValueError, match=r"pred must be probabilities.*row 1 sums to 0.6, "
                       r"not 1.*softmax_cross_entropy"):
        CCE(jnp.array([[0.5, 0.2, 0.3], [0.1, 0.2, 0.3]], F64), Y)


def test_binary_cross_entropy_refuses_logits():
    with pytest.raises(ValueError, match=r"binary_cross_entropy: pred must lie in \[0, 1\].*"
                       r"use losses.binary_cross_entropy_with_logits"):
        BCE(Z, jnp.ones_like(Z))


def test_probabilities_still_give_the_same_values():
    want = -np.mean(np.log(np.asarray(P)[np.arange(2), np.asarray(Y)]))
    np.testing.assert_allclose(CCE(P, Y), want, rtol=1e-14)
    # float32 probabilities cast to float64 keep float32's rounding: still accepted.
    p32 = jax.nn.softmax(Z.astype(jnp.float32)).astype(F64)
    assert np.isfinite(CCE(p32, Y))
    s = jax.nn.sigmoid(Z)
    t = jnp.array([[1.0, 0.0, 0.3], [0.0, 1.0, 1.0]], F64)
    np.testing.assert_allclose(BCE(s, t), BCEL(Z, t), rtol=1e-12)


def test_values_are_not_checked_inside_jit():
    """Inside jit the values are tracers: only shapes are checked (fit checks labels at
    its boundary instead)."""
    assert np.isfinite(jax.jit(CCE)(Z, Y))
    assert np.isfinite(jax.jit(BCE)(Z, jnp.full_like(Z, 2.0)))


# ------------------------------------------------------------------------ 2. soft labels

@pytest.mark.parametrize("loss", [SCE, CCE], ids=lambda f: f.name)
def test_soft_labels_must_be_distributions(loss):
    pred = Z if loss is SCE else P
    doubled = 2 * jax.nn.one_hot(Y, 3, dtype=F64)
    with pytest.raises(ValueError, match=rf"{loss.name}: target must be one-hot or soft "
                       r"labels.*row 0 sums to 2, not 1.*normalise"):
        loss(pred, doubled)
    negative = jnp.array([[1.5, -0.5, 0.0], [0.0, 1.0, 0.0]], F64)
    with pytest.raises(ValueError, match=r"target must be one-hot or soft labels.*"
                       r"got negative values"):
        loss(pred, negative)
    with pytest.raises(ValueError, match=r"target must be one-hot"):
        metrics.accuracy(pred, doubled)


@pytest.mark.parametrize("loss", [SCE, CCE], ids=lambda f: f.name)
def test_valid_soft_labels_keep_their_value(loss):
    pred = Z if loss is SCE else P
    smooth = 0.9 * jax.nn.one_hot(Y, 3, dtype=F64) + 0.1 / 3  # label smoothing
    logp = np.log(np.asarray(P))
    np.testing.assert_allclose(loss(pred, smooth), -np.mean(np.sum(smooth * logp, axis=1)),
                               rtol=1e-12)
    # float32 soft labels against float64 predictions: float32's tolerance applies.
    assert np.isfinite(loss(pred, jax.nn.softmax(Z.astype(jnp.float32) * 0.3)))


# --------------------------------------------------------------------- 3. binary targets

@pytest.mark.parametrize("fn, pred", [
    (BCE, jax.nn.sigmoid(Z)), (BCEL, Z), (metrics.binary_accuracy, jax.nn.sigmoid(Z)),
    (metrics.binary_accuracy_logits, Z)])
@pytest.mark.parametrize("bad", [2.0, -1.0])
def test_binary_targets_outside_unit_interval_raise(fn, pred, bad):
    t = jnp.zeros_like(pred).at[0, 1].set(bad)
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\].*Binary targets"):
        fn(pred, t)


def test_binary_accuracy_on_probabilities_refuses_logits():
    with pytest.raises(ValueError, match=r"binary_accuracy: pred must lie in \[0, 1\].*"
                       r"binary_accuracy_logits"):
        metrics.binary_accuracy(Z, jnp.ones_like(Z))


# ---------------------------------------------------------------- 4. accuracy's labels

def test_one_column_accuracy_wants_binary_labels():
    p = jnp.array([[0.7], [0.2]], F64)
    assert float(metrics.accuracy(p, jnp.array([1, 0]))) == 1.0
    assert float(metrics.accuracy(p, jnp.array([[1.0], [1.0]]))) == 0.5
    with pytest.raises(ValueError, match=r"accuracy: with one output column the target "
                       r"labels must be 0 or 1.*got \[5\].*C outputs"):
        metrics.accuracy(p, jnp.array([5, 0]))
    assert np.isnan(jax.jit(metrics.accuracy)(p, jnp.array([5, 0])))  # traced: NaN
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\]"):
        metrics.accuracy(p, jnp.array([2.0, 0.0]))
    with pytest.raises(ValueError, match=r"pred must lie in \[0, 1\].*binary_accuracy_logits"):
        metrics.accuracy(jnp.array([[2.5], [-1.0]], F64), jnp.array([1, 0]))
    with pytest.raises(ValueError, match=r"same batch-first shape; got \(2, 1\) and \(3,\)"):
        metrics.accuracy(p, jnp.array([1, 0, 1]))


def test_accuracy_labels_beyond_the_columns_raise():
    with pytest.raises(ValueError, match=r"accuracy: labels must be class indices in "
                       r"\[0, 3\); got \[3\]"):
        metrics.accuracy(Z, jnp.array([3, 0]))
    assert np.isnan(jax.jit(metrics.accuracy)(Z, jnp.array([3, 0])))  # traced: NaN


# ------------------------------------------------------------------------ 5. empty batch

def _empty_cases():
    classes = jnp.zeros((0,), jnp.int32)
    same = jnp.zeros((0, 3), F64)
    cases = [pytest.param(name, loss, classes if loss.targets == "classes" else same,
                          id=f"losses.{name}") for name, loss in losses.LOSSES.items()]
    cases += [pytest.param(name, fn, target, id=f"metrics.{name}") for name, fn, target in [
        ("accuracy", metrics.accuracy, classes),
        ("binary_accuracy", metrics.binary_accuracy, same),
        ("binary_accuracy_logits", metrics.binary_accuracy_logits, same),
        ("mae", metrics.mae, same),
        ("regression_accuracy", metrics.regression_accuracy(0.1), same)]]
    return cases


@pytest.mark.parametrize("name, fn, target", _empty_cases())
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_empty_batch_raises_even_under_jit(name, fn, target, jit):
    f = jax.jit(fn) if jit else fn
    with pytest.raises(ValueError, match=rf"^{name}: pred is an empty batch \(shape "
                       r"\(0, 3\)\).*at least one example"):
        f(jnp.zeros((0, 3), F64), target)


def test_no_outputs_per_example_raise():
    with pytest.raises(ValueError, match=r"mse: pred has no outputs per example"):
        losses.mse(jnp.zeros((4, 0), F64), jnp.zeros((4, 0), F64))


# ------------------------------------------------------------------ NaN and inf values

@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_name_the_argument(bad):
    with pytest.raises(ValueError, match=r"mse: pred holds NaN or inf \(1 of 6 values\)"):
        losses.mse(Z.at[0, 0].set(bad), Z)
    with pytest.raises(ValueError, match=r"mae: target holds NaN or inf"):
        metrics.mae(Z, Z.at[1, 2].set(bad))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: target holds NaN"):
        SCE(Z, P.at[0, 0].set(bad))


# -------------------------------------------------------------------------- 6. leaky_relu

@pytest.mark.parametrize("slope", [float("nan"), float("inf"), -np.inf, jnp.nan])
def test_leaky_relu_slope_must_be_finite(slope):
    with pytest.raises(ValueError, match=r"leaky_relu: negative_slope must be finite"):
        nn.leaky_relu(slope)


@pytest.mark.parametrize("slope", ["0.1", None, [0.1, 0.2], True])
def test_leaky_relu_slope_must_be_a_number(slope):
    with pytest.raises(TypeError, match=r"leaky_relu: negative_slope must be a real number"):
        nn.leaky_relu(slope)


def test_leaky_relu_accepts_numbers():
    for slope in (0.0, 0.2, 1, np.float32(0.3), jnp.asarray(0.1)):
        y = nn.leaky_relu(slope).apply(nn.NoParams(), jnp.array([[-2.0, 3.0]], F64))
        np.testing.assert_allclose(y, [[-2.0 * float(slope), 3.0]], rtol=1e-7)


# ------------------------------------------------------- random bad inputs (hypothesis)

# The name each function's messages start with (before any "/") -> the function.
FUNCS = {
    "softmax_cross_entropy": SCE,
    "categorical_cross_entropy": CCE,
    "binary_cross_entropy": BCE,
    "binary_cross_entropy_with_logits": BCEL,
    "mse": losses.mse,
    "mae": losses.mae,
    "mae/metric": metrics.mae,
    "accuracy": metrics.accuracy,
    "binary_accuracy": metrics.binary_accuracy,
    "binary_accuracy_logits": metrics.binary_accuracy_logits,
    "regression_accuracy": metrics.regression_accuracy(0.5),
}
PRED_KINDS = ["logits", "softmax", "half_rows", "sigmoid", "one_hot", "nan", "inf"]
TARGET_KINDS = ["classes", "classes_out", "one_hot", "soft", "doubled", "negative",
                "binary", "binary_int", "two", "bool", "nan"]


def _draw_pred(kind, n, c, rng, dtype):
    """Predictions of shape (n, c): valid for some functions, grossly invalid for others
    (never near a boundary, so the oracle below needs no tolerance of its own)."""
    rows = np.eye(c)[rng.integers(0, c, n)]
    if kind == "logits":  # a +-5 in each row: never probabilities
        p = rng.standard_normal((n, c)) * 3
        p[:, 0] = np.where(rng.random(n) < 0.5, 5.0, -5.0)
    elif kind == "softmax":
        e = np.exp(rng.standard_normal((n, c)))
        p = e / e.sum(axis=1, keepdims=True)
    elif kind == "half_rows":  # in [0, 1], but each row sums to 0.5
        p = 0.5 * rows
    elif kind == "one_hot":
        p = rows
    else:  # "sigmoid", "nan", "inf": independent probabilities, maybe one NaN or -inf
        p = rng.uniform(0.05, 0.95, (n, c))
        if kind != "sigmoid" and n:
            p[rng.integers(0, n), rng.integers(0, c)] = np.nan if kind == "nan" else -np.inf
    return jnp.asarray(p, dtype)


def _draw_target(kind, n, c, rng, dtype):
    """Targets: class indices (in range or not), float rows (one-hot, soft, doubled,
    with negative entries), binary arrays (float, int, bool, holding 2), or a NaN."""
    labels = rng.integers(0, c, n)
    one_hot = np.eye(c)[labels]
    soft = rng.random((n, c)) + 0.1
    soft = soft / soft.sum(axis=1, keepdims=True)
    if kind == "classes":
        return jnp.asarray(labels)
    if kind == "classes_out":
        return jnp.asarray(np.where(rng.random(n) < 0.5, -1, c + 3))
    if kind == "binary_int":
        return jnp.asarray(rng.integers(0, 2, (n, c)))
    if kind == "bool":
        return jnp.asarray(rng.random((n, c)) < 0.5)
    if kind == "negative":  # rows still sum to 1 when c > 1
        t = one_hot * 1.5 - 0.5 / c if c > 1 else -one_hot
    elif kind == "binary":
        t = (rng.random((n, c)) < 0.5).astype(float)
    elif kind == "two":
        t = np.where(rng.random((n, c)) < 0.5, 2.0, 0.0)
        t[:1, :1] = 2.0
    elif kind == "nan":
        t = soft.copy()
        t[:1, :1] = np.nan
    else:
        t = {"one_hot": one_hot, "soft": soft, "doubled": 2 * one_hot}[kind]
    return jnp.asarray(t, dtype)


def _expect(name, p, t):
    """The oracle: ("ok", value) or ("raise", fragments one of which the message names).

    Computed in numpy, in float64 from the arrays cast as the losses cast them."""
    n, c = p.shape
    pf = p.astype(np.float64)
    if n == 0:
        return "raise", ["empty batch"]
    if not np.isfinite(pf).all():
        return "raise", ["pred"]
    integer, is_bool = np.issubdtype(t.dtype, np.integer), t.dtype == bool
    tf = t.astype(p.dtype).astype(np.float64)
    if np.issubdtype(t.dtype, np.floating) and not np.isfinite(t).all():
        return "raise", ["target"]
    in_unit = lambda a: a.min() >= 0 and a.max() <= 1
    rows = lambda a: in_unit(a) and np.all(np.abs(a.sum(axis=1) - 1) < 1e-3)
    categorical = name in ("softmax_cross_entropy", "categorical_cross_entropy") or (
        name == "accuracy" and c > 1)
    if categorical:
        if is_bool:
            return "raise", ["label"]
        if integer:
            if t.shape != (n,):
                return "raise", ["shape"]
            if t.min() < 0 or t.max() >= c:
                return "raise", ["label"]
            tf = np.eye(c)[t]
        elif t.shape != p.shape:
            return "raise", ["shape"]
        elif not rows(tf):
            return "raise", ["target"]
        if name == "categorical_cross_entropy" and not rows(pf):
            return "raise", ["pred"]
        if name == "softmax_cross_entropy":
            logp = pf - pf.max(axis=1, keepdims=True)
            logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
            return "ok", -np.mean(np.sum(tf * logp, axis=1))
        if name == "categorical_cross_entropy":
            pc = np.clip(p, p.dtype.type(1e-7), p.dtype.type(1 - 1e-7)).astype(np.float64)
            return "ok", -np.mean(np.sum(tf * np.log(pc), axis=1))
        return "ok", np.mean(np.argmax(pf, axis=1) == np.argmax(tf, axis=1))
    if name == "accuracy":  # one column
        if t.shape == (n,):
            t, tf = t.reshape(n, 1), tf.reshape(n, 1)
        if t.shape != p.shape:
            return "raise", ["shape"]
        if integer and not np.isin(t, (0, 1)).all():
            return "raise", ["target"]
        if not in_unit(tf):
            return "raise", ["target"]
        if not in_unit(pf):
            return "raise", ["pred"]
        return "ok", np.mean((pf > 0.5) == (tf > 0.5))
    if t.shape != p.shape:
        return "raise", ["shape"]
    binary = name in ("binary_cross_entropy", "binary_cross_entropy_with_logits",
                      "binary_accuracy", "binary_accuracy_logits")
    if binary and not in_unit(tf):
        return "raise", ["target"]
    if name in ("binary_cross_entropy", "binary_accuracy") and not in_unit(pf):
        return "raise", ["pred"]
    if name == "binary_cross_entropy":
        pc = np.clip(p, p.dtype.type(1e-7), p.dtype.type(1 - 1e-7)).astype(np.float64)
        return "ok", -np.mean(tf * np.log(pc) + (1 - tf) * np.log(1 - pc))
    if name == "binary_cross_entropy_with_logits":
        return "ok", np.mean(np.logaddexp(0.0, pf) - pf * tf)
    if name in ("binary_accuracy", "binary_accuracy_logits"):
        return "ok", np.mean((pf > (0.5 if name == "binary_accuracy" else 0.0)) == (tf > 0.5))
    if name == "mse":
        return "ok", np.mean((pf - tf) ** 2)
    if name == "mae":
        return "ok", np.mean(np.abs(pf - tf))
    return "ok", np.mean(np.abs(pf - tf) < 0.5)  # regression_accuracy(0.5)


ARG_WORDS = {"pred": r"pred", "target": r"target|label", "label": r"label",
             "shape": r"shape", "empty batch": r"empty batch"}


# Batch sizes 0 (empty), 1 and 3; 1 to 3 columns (one column is accuracy's binary case):
# few distinct shapes, so the eagerly run functions compile few times for all examples.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(FUNCS)), pred_kind=st.sampled_from(PRED_KINDS),
       target_kind=st.sampled_from(TARGET_KINDS), n=st.sampled_from([0, 1, 3]),
       c=st.integers(1, 3),
       dtype=st.sampled_from([jnp.float32, jnp.float64]), seed=st.integers(0, 2**16))
def test_random_inputs_give_a_correct_value_or_name_the_argument(
        name, pred_kind, target_kind, n, c, dtype, seed):
    rng = np.random.default_rng(seed)
    pred = _draw_pred(pred_kind, n, c, rng, dtype)
    target = _draw_target(target_kind, n, c, rng, dtype)
    fn, name = FUNCS[name], name.split("/")[0]
    outcome, want = _expect(name, np.asarray(pred), np.asarray(target))
    try:
        got = fn(pred, target)
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert outcome == "raise", f"{name} raised on valid input: {msg}"
        assert msg.startswith(f"{name}: "), msg
        assert any(re.search(ARG_WORDS[w], msg) for w in want), (want, msg)
        return
    assert outcome == "ok", f"{name} returned {got} silently; expected an error naming {want}"
    assert np.isfinite(got)
    np.testing.assert_allclose(float(got), want, rtol=1e-5 if dtype == jnp.float32 else 1e-12,
                               atol=1e-6 if dtype == jnp.float32 else 1e-12)
