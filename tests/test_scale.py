"""Data-parallel training over a device mesh equals training on one device.

The device count is fixed once JAX starts, so the cases (``scale_cases.py``) run in a
process of their own with 4 CPU devices, all in one, and report JSON: for each case the
largest relative difference between ``fit`` (or ``evaluate``, ``train_step``) on a mesh
and without one, over the final parameters, optimizer state and history. Both engines,
a dense model (dense, relu, dropout, layer_norm, tanh) and a conv model (conv2d on one
and on several channels, max and average pooling, flatten), Explicit and Auto meshes,
float32 and float64, ``epochs=`` and ``steps=`` with a smaller last batch. Then the
bad inputs: each a clear error before training.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOL = {"float32": 1e-6, "float64": 1e-12}


@pytest.fixture(scope="module")
def report():
    root = Path(__file__).resolve().parents[1]
    # 4 CPU devices; and less optimisation by the CPU backend, which halves the time
    # each program takes to compile (both sides of every comparison compile alike; the
    # sharding is decided in the HLO passes before it)
    flags = os.environ.get("XLA_FLAGS", "") + (
        " --xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
        " --xla_llvm_disable_expensive_passes=true")
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    # Compiling is most of the time and mostly one thread: two halves of the cases in
    # two processes at once use both cores.
    procs = [subprocess.Popen([sys.executable, "-m", "tests.scale_cases", str(part)],
                              cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for part in (0, 1)]
    merged = {"cases": {}, "times": {}}
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-4000:]
            part = json.loads(out)
            merged["cases"].update(part["cases"])
            merged["times"].update(part["times"])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return merged


def _fit_cases():
    names = []
    for mesh in ("Explicit", "Auto"):
        names += [f"dense/backprop/{mesh}/float32", f"dense/jax/{mesh}/float64",
                  f"conv/jax/{mesh}/float32"]
    return names + ["dense_placed/backprop/Explicit/float32",
                    "dense_steps/backprop/Explicit/float32", "conv/backprop/Explicit/float32",
                    "conv_by_conv/backprop/Explicit/float64"]


@pytest.mark.parametrize("name", _fit_cases())
def test_data_parallel_fit_equals_one_device(report, name):
    diff = report["cases"][name]
    assert not isinstance(diff, str), diff  # an exception's message
    assert diff <= TOL[name.rsplit("/", 1)[1]], (name, diff)


@pytest.mark.parametrize("name", ["evaluate/Explicit/float64", "evaluate/Auto/float32"])
def test_data_parallel_evaluate_equals_one_device(report, name):
    diff = report["cases"][name]
    assert not isinstance(diff, str), diff
    assert diff <= TOL[name.rsplit("/", 1)[1]], (name, diff)


def test_data_parallel_train_step_splits_the_batch_and_all_reduces(report):
    """Equal results alone would not show that anything ran in parallel: the compiled
    step works on 16 / 4 examples per device and all-reduces the gradients."""
    out = report["cases"]["train_step/Explicit/float64"]
    assert not isinstance(out, str), out
    assert out["diff"] <= TOL["float64"], out
    assert out["local_batch"] and out["all_reduces"] >= 1, out


def test_bad_input_is_a_clear_error_before_training(report):
    bad = report["cases"]["bad_input"]
    assert not isinstance(bad, str), bad
    assert "no axis 'data'" in bad["no_axis"] and "batch_axis=" in bad["no_axis"]
    assert "batch_size (10 examples) does not split evenly over the 4 devices" in \
        bad["not_divisible"]
    assert "multiple of 4 (e.g. 8 or 12)" in bad["not_divisible"]
    assert "training set as one batch (no batch_size given) (64 examples) does not split " \
        "evenly over the 3 devices" in bad["full_batch_not_divisible"]
    assert "smaller last batch of each epoch with drop_remainder=False (14 examples)" in \
        bad["rest_not_divisible"]
    assert "keep drop_remainder=True (62 examples in batches of 16 leave 14 over)" in \
        bad["rest_not_divisible"]
    assert bad["not_a_mesh"].startswith("TypeError") and "jax.make_mesh" in bad["not_a_mesh"]
    assert bad["batch_axis_type"].startswith("TypeError")
    assert "validation set (10 examples)" in bad["val_not_divisible"]
    assert "evaluation set (10 examples)" in bad["evaluate_not_divisible"]
