"""Central finite differences for checking gradients (float64).

``fd_grad`` checks every element (small shapes); ``fd_directional`` checks a few
random directions (large shapes), as ``jax.test_util.check_grads`` does.
"""

import jax
import jax.numpy as jnp
import numpy as np


def fd_grad(f, tree, eps=1e-6):
    """Elementwise central differences of scalar ``f`` at pytree ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for i, leaf in enumerate(leaves):
        base = np.asarray(leaf, dtype=np.float64)
        g = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            for sign in (1, -1):
                bumped = base.copy()
                bumped[idx] += sign * eps
                new = list(leaves)
                new[i] = jnp.asarray(bumped)
                g[idx] += sign * float(f(jax.tree.unflatten(treedef, new)))
            g[idx] /= 2 * eps
        out.append(g)
    return jax.tree.unflatten(treedef, out)


def fd_directional(f, tree, grad_tree, *, n=3, eps=1e-6, seed=0):
    """Pairs (finite-difference slope, <grad, v>) along ``n`` random unit directions."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        v = jax.tree.map(lambda x: rng.standard_normal(np.shape(x)), tree)
        norm = np.sqrt(sum(np.sum(a * a) for a in jax.tree.leaves(v)))
        v = jax.tree.map(lambda a: a / norm, v)
        plus = jax.tree.map(lambda x, d: x + eps * d, tree, v)
        minus = jax.tree.map(lambda x, d: x - eps * d, tree, v)
        slope = (float(f(plus)) - float(f(minus))) / (2 * eps)
        dot = sum(float(np.sum(np.asarray(g) * d))
                  for g, d in zip(jax.tree.leaves(grad_tree), jax.tree.leaves(v)))
        pairs.append((slope, dot))
    return pairs


def assert_tree_close(a, b, rtol, atol=0.0):
    """Same structure, and every leaf close."""
    assert jax.tree.structure(a) == jax.tree.structure(b), (
        f"structure differs:\n{jax.tree.structure(a)}\n{jax.tree.structure(b)}")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
