"""The benchmark's reference for issue 9 (``benchmarks/_conv_reference.py``, the plain
canonical-layout rules the issue's targets came from) computes the true gradient:
a wrong reference would make ``bench_conv.py``'s ratios meaningless."""

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "_conv_reference.py"


def _reference(monkeypatch):
    spec = importlib.util.spec_from_file_location("_bench_conv_reference", _PATH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_reference_rules_equal_jax_grad_in_float64(monkeypatch):
    ref = _reference(monkeypatch)
    params = ref.init(jax.random.key(0), jnp.float64)
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1), jnp.float64)
    y = jnp.array([0, 7, 9])
    hand, auto = ref.grad_fn(params, x, y), jax.grad(ref.loss)(params, x, y)
    assert hand.keys() == auto.keys()
    for name in auto:
        np.testing.assert_allclose(hand[name], auto[name], rtol=1e-10,
                                   atol=1e-12 * float(jnp.max(jnp.abs(auto[name]))),
                                   err_msg=name)


def test_reference_scan_fit_takes_sgd_steps(monkeypatch):
    """Two scanned SGD steps equal two steps taken one at a time."""
    ref = _reference(monkeypatch)
    params = ref.init(jax.random.key(0), jnp.float64)
    xb = jax.random.uniform(jax.random.key(2), (2, 2, 28, 28, 1), jnp.float64)
    yb = jnp.array([[1, 2], [3, 4]])
    out = ref.scan_fit(ref.grad_fn, 0.5)(params, xb, yb)
    p = params
    for i in range(2):
        p = jax.tree.map(lambda w, g: w - 0.5 * g, p, jax.grad(ref.loss)(p, xb[i], yb[i]))
    for name in p:
        np.testing.assert_allclose(out[name], p[name], rtol=1e-9, atol=1e-12, err_msg=name)
