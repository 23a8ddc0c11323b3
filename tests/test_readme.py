"""The README's example runs as written (so the first screen never rots)."""

import importlib.util
import pathlib
import re

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(capsys, tmp_path, monkeypatch):
    """Every python block of the README, in order, in one namespace (as a reader would)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "README lost its python examples"
    monkeypatch.chdir(tmp_path)  # the examples write files
    scope: dict = {}
    ran_interop = False
    for block in blocks:
        if block.startswith("# requires:"):  # peers' packages: run where installed
            needed = [m.strip() for m in block.splitlines()[0].split(":")[1].split(",")]
            if not all(importlib.util.find_spec(m) for m in needed):
                continue
            ran_interop = True
        exec(compile(block, str(README), "exec"), scope)  # noqa: S102
    assert (tmp_path / "sweep.csv").exists() and (tmp_path / "heatmap.png").exists()
    assert len(scope["results"].rows()) == 12
    g_auto, g_hand = scope["g_auto"], scope["g_hand"]
    assert jax.tree.structure(g_auto) == jax.tree.structure(g_hand)
    for a, b in zip(jax.tree.leaves(g_auto), jax.tree.leaves(g_hand)):
        scale = float(np.max(np.abs(a)))
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5 * scale)
    assert scope["history"]["accuracy"][-1] > 0.8
    # "Your own layer or loss": the user's layers and loss checked and trained by hand
    assert scope["history2"]["accuracy"][-1] > 0.6
    assert {"accuracy", "mae"} <= set(scope["history3"].metrics)
    assert all(np.all(np.isfinite(v)) for v in scope["history3"].metrics.values())
    assert np.all(np.isfinite(scope["g_bridge"].gain))
    # "See the gradients flow": the speed of learning per layer, and its plot
    h5 = scope["history5"]
    assert h5["grad_norm[0].b"].shape == (20,) and "saturation[1]" in h5.metrics
    assert (tmp_path / "speed_of_learning.png").exists()
    # "Convolutional networks": a conv net learns the bars
    assert scope["history6"]["accuracy"][-1] > 0.9
    assert "total" in capsys.readouterr().out
    # "Scaling out": fit and evaluate on a mesh (of this process's one device)
    h8 = scope["history8"]
    assert h8["loss"][-1] < h8["loss"][0] and 0.0 <= h8["accuracy"][-1] <= 1.0
    # "Optimizers": funcnn's optimizers train Equinox and Flax NNX models; fit takes optax's
    if ran_interop:
        x, y = scope["x"], scope["y"]
        ce, jnp = scope["losses"].softmax_cross_entropy, scope["jnp"]
        assert float(ce(jax.vmap(scope["mlp"])(x), y)) < float(jnp.log(3.0)) - 0.1
        assert float(ce(scope["net"](x), y)) < float(jnp.log(3.0)) - 0.1
        assert scope["history7"]["loss"][-1] < scope["history7"]["loss"][0]


def test_readme_commands_match_ci():
    text = README.read_text()
    assert 'pip install -e ".[test]" && python -m pytest -q -n 2 --dist loadfile tests' in text
    assert "python -m funcnn" in text
