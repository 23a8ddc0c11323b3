"""Smoke tests: the main job and the experiment scripts run end to end on tiny settings.

Each runs in a subprocess, as a user would start it, so a script cannot rot unseen.
(The Fashion-MNIST and MNIST scripts need data files; their machinery is tested in
test_experiment.py.)
"""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(args, cwd):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_main_job(tmp_path):
    out = _run(["-m", "funcnn", "--epochs", "300", "--log-every", "100",
                "--out", str(tmp_path / "spiral")], cwd=tmp_path)
    assert "backprop.grad:" in out and "jax.grad:" in out
    assert "epoch: 300, acc:" in out and "final accuracy" in out
    pytest.importorskip("matplotlib")
    assert (tmp_path / "spiral" / "loss_curve.png").stat().st_size > 0
    assert (tmp_path / "spiral" / "decision_boundary.png").stat().st_size > 0


def test_nnfs_optimizers_experiment(tmp_path):
    out = _run([str(ROOT / "experiments" / "nnfs_optimizers.py"), "--epochs", "50",
                "--out", str(tmp_path)], cwd=tmp_path)
    for name in ("sgd", "sgd_momentum", "adagrad", "rmsprop", "adam"):
        assert f"| {name} |" in out


def test_lr_sweep_experiment(tmp_path):
    out = _run([str(ROOT / "experiments" / "lr_sweep.py"), "--epochs", "20", "--seeds", "2",
                "--out", str(tmp_path / "sweep")], cwd=tmp_path)
    assert "best" in out.lower()
    assert any((tmp_path / "sweep").iterdir())
