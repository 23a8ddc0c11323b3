"""Losses against plain numpy, numerical stability, and bad labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import losses, metrics

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

rng = np.random.default_rng(0)
Z = rng.standard_normal((5, 4))
Y = np.array([0, 3, 1, 2, 3])
T = rng.standard_normal((5, 4))


def _np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_softmax_cross_entropy_matches_numpy():
    want = -np.mean(np.log(_np_softmax(Z)[np.arange(5), Y]))
    np.testing.assert_allclose(losses.softmax_cross_entropy(jnp.asarray(Z), jnp.asarray(Y)),
                               want, rtol=1e-13)


def test_softmax_cross_entropy_extreme_logits_float32():
    z = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], jnp.float32)
    right = losses.softmax_cross_entropy(z, jnp.array([0, 1]))
    wrong = losses.softmax_cross_entropy(z, jnp.array([1, 0]))
    assert np.isfinite(right) and float(right) == 0.0
    assert np.isfinite(wrong) and abs(float(wrong) - 2e4) < 1.0


def test_categorical_cross_entropy_clips_as_nnfs():
    p = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    loss = losses.categorical_cross_entropy(p, jnp.array([1, 1]))
    np.testing.assert_allclose(loss, (-np.log(1e-7) - np.log(1 - 1e-7)) / 2, rtol=1e-12)
    probs = _np_softmax(Z)
    np.testing.assert_allclose(losses.categorical_cross_entropy(jnp.asarray(probs), Y),
                               -np.mean(np.log(probs[np.arange(5), Y])), rtol=1e-13)


def test_binary_losses_match_numpy():
    t = (rng.random((5, 4)) > 0.5).astype(np.float64)
    p = 1 / (1 + np.exp(-Z))
    want = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(losses.binary_cross_entropy(jnp.asarray(p), t), want, rtol=1e-12)
    np.testing.assert_allclose(losses.binary_cross_entropy_with_logits(jnp.asarray(Z), t),
                               want, rtol=1e-12)
    big = jnp.array([[100.0, -100.0]], jnp.float32)
    assert np.isfinite(losses.binary_cross_entropy_with_logits(big, jnp.array([[0.0, 1.0]])))


def test_regression_losses_and_penalties():
    np.testing.assert_allclose(losses.mse(jnp.asarray(Z), T), np.mean((Z - T) ** 2))
    np.testing.assert_allclose(losses.mae(jnp.asarray(Z), T), np.mean(np.abs(Z - T)))
    tree = {"a": jnp.asarray(Z), "b": (jnp.asarray(T),)}
    np.testing.assert_allclose(losses.l1(tree), np.abs(Z).sum() + np.abs(T).sum())
    np.testing.assert_allclose(losses.l2(tree), (Z ** 2).sum() + (T ** 2).sum())


def test_accuracy():
    z = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert float(metrics.accuracy(z, jnp.array([1, 0, 0]))) == pytest.approx(2 / 3)
    assert float(metrics.accuracy(z, jax.nn.one_hot(jnp.array([1, 0, 1]), 2))) == 1.0
    assert float(metrics.accuracy(jnp.array([[0.7], [0.2]]), jnp.array([[1.0], [1.0]]))) == 0.5


# ----------------------------------------------------------------------------- bad input

def test_labels_out_of_range_raise():
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\); got \[7\]"):
        losses.softmax_cross_entropy(jnp.asarray(Z), jnp.array([0, 1, 2, 3, 7]))
    with pytest.raises(ValueError, match=r"got \[-1\]"):
        losses.categorical_cross_entropy(jnp.asarray(Z), np.array([0, 1, 2, 3, -1]))


def test_labels_out_of_range_inside_jit_give_nan_not_a_clamped_loss():
    f = jax.jit(losses.softmax_cross_entropy)
    assert np.isfinite(f(jnp.asarray(Z), jnp.asarray(Y)))
    assert np.isnan(f(jnp.asarray(Z), jnp.array([0, 1, 2, 3, 4])))


def test_labels_as_floats_or_a_column_name_the_fix():
    z = jnp.asarray(Z)
    with pytest.raises(ValueError, match=r"got \(5,\) \(float\d+\)\. Float labels of shape "
                                         r"\(5,\) look like class indices stored as floats: "
                                         r"pass integers, y\.astype\(int\)$"):
        losses.softmax_cross_entropy(z, jnp.asarray(Y, z.dtype))
    with pytest.raises(ValueError, match=r"y\.astype\(int\)\.ravel\(\)$"):
        losses.softmax_cross_entropy(z, jnp.asarray(Y, z.dtype)[:, None])
    with pytest.raises(ValueError, match=r"got \(5, 1\): a column of labels; pass y\.ravel\(\)"):
        losses.softmax_cross_entropy(z, jnp.asarray(Y)[:, None])
    # not whole numbers: not class indices, and astype(int) would truncate them silently
    with pytest.raises(ValueError, match=r"These labels are not whole numbers \(\[0\.5, "
                                         r".*regression loss \(losses\.mse.*a row of 4 "
                                         r"probabilities$") as info:
        losses.softmax_cross_entropy(z, jnp.asarray(Y, z.dtype) + 0.5)
    assert "astype(int)" not in str(info.value)


def test_labels_not_integers_or_wrong_shape():
    with pytest.raises(ValueError, match=r"one-hot or soft labels must have the predictions' "
                                         r"shape \(5, 4\); got \(5,\)"):
        losses.softmax_cross_entropy(jnp.asarray(Z), jnp.asarray(Y, jnp.float64))
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        losses.softmax_cross_entropy(jnp.asarray(Z), jnp.ones(5, bool))


def test_batch_size_mismatch():
    with pytest.raises(ValueError, match=r"shape \(batch,\) = \(5,\).*got \(4,\)"):
        losses.softmax_cross_entropy(jnp.asarray(Z), jnp.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"same batch-first shape; got \(5, 4\) and \(3, 4\)"):
        losses.mse(jnp.asarray(Z), jnp.asarray(T[:3]))
    with pytest.raises(ValueError, match=r"shape \(batch, classes\)"):
        losses.softmax_cross_entropy(jnp.ones((5,)), jnp.asarray(Y))
