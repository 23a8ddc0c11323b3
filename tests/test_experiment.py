"""Tests for funcnn.experiment: flags, run folders, resume (bitwise, also after SIGKILL),
--check-repro, manifest, and the faults (unwritable folder, full disk, NaN data,
a diverging loss, two processes on one run)."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import dataclasses
import functools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path
from typing import Literal

import jax.numpy as jnp
import numpy as np
import pytest

import funcnn
from funcnn import checkpoint, data, experiment, losses, nn, optim, train

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Config:
    lr: float = 0.02
    epochs: int = 6
    hidden: int = 8
    batch_size: int = 30
    nan_at: int = -1  # put a NaN into the inputs at this row (-1: none)
    sizes: tuple[int, ...] = (2, 8, 3)
    act: Literal["relu", "tanh"] = "relu"
    shuffle: bool = True
    note: str | None = experiment.option(None, help="not hashed", hashed=False)


@functools.cache
def _spiral_model_and_optimizer(hidden: int, act: str, lr: float):
    """Built once per configuration: layers and optimizers hash by identity, so the runs
    of one configuration in this module share fit's compiled program (each epoch is one
    call of the same program). The SIGKILL test's processes compile their own."""
    model = nn.serial(nn.dense(hidden), nn.relu() if act == "relu" else nn.tanh(),
                      nn.dense(3))
    return model, optim.adam(lr)


def spiral_run(r: experiment.Run):
    """A tiny experiment on generated data; returns the final state."""
    cfg = r.config
    x, y = data.spiral_data(30, 3)
    if cfg.nan_at >= 0:
        x = x.copy()
        x[cfg.nan_at, 0] = np.nan
    model, opt = _spiral_model_and_optimizer(cfg.hidden, cfg.act, cfg.lr)
    state = train.init_state(model, opt, r.key, (2,))
    state, history = r.fit(model, losses.softmax_cross_entropy, opt, state, x, y,
                           epochs=cfg.epochs, batch_size=cfg.batch_size, shuffle=cfg.shuffle,
                           validation_data=(x[:30], y[:30]))
    r.log_result(final_accuracy=float(history["accuracy"][-1]))
    return state


def run_main(runs_dir, *flags, run_fn=spiral_run):
    return experiment.main("spiral", Config, run_fn,
                           ["--runs-dir", str(runs_dir), "--no-plots", *flags])


def only_folder(runs_dir) -> Path:
    (folder,) = [p for p in (Path(runs_dir) / "spiral").iterdir() if p.is_dir()]
    return folder


def leaves_equal(a, b) -> bool:
    """Bitwise equality of two pytrees (keys compared by their data)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return True


def metrics_without_timing(folder: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in experiment.TIMING_KEYS}
            for row in experiment.read_metrics(folder / "metrics.jsonl")]


# --------------------------------------------------------------------------- config & flags

def test_flags_follow_the_config_fields_and_types(tmp_path):
    seen = {}

    def capture(r):
        seen["config"], seen["dir"], seen["seed"] = r.config, r.dir, r.seed

    experiment.main("spiral", Config, capture,
                    ["--runs-dir", str(tmp_path), "--lr", "0.5", "--sizes", "4", "5",
                     "--act", "tanh", "--no-shuffle", "--note", "hello", "--seed", "3"])
    cfg = seen["config"]
    assert cfg == Config(lr=0.5, sizes=(4, 5), act="tanh", shuffle=False, note="hello")
    assert seen["seed"] == 3
    assert seen["dir"] == tmp_path / "spiral" / experiment.config_hash("spiral", cfg, 3)
    recorded = json.loads((seen["dir"] / "config.json").read_text())
    assert recorded["config"]["sizes"] == [4, 5] and recorded["seed"] == 3
    assert experiment.config_from_json(Config, recorded["config"]) == cfg
    # an unhashed field does not change the folder; the seed and hashed fields do
    h = experiment.config_hash("spiral", cfg, 3)
    assert experiment.config_hash("spiral", dataclasses.replace(cfg, note=None), 3) == h
    assert experiment.config_hash("spiral", cfg, 4) != h
    assert experiment.config_hash("spiral", dataclasses.replace(cfg, lr=0.25), 3) != h
    with pytest.raises(SystemExit):  # argparse: "invalid float value"
        experiment.main("spiral", Config, capture, ["--runs-dir", str(tmp_path), "--lr", "x"])
    with pytest.raises(SystemExit):
        experiment.main("spiral", Config, capture, ["--runs-dir", str(tmp_path), "--act", "gelu"])


def test_config_classes_are_checked():
    @dataclasses.dataclass
    class HasSeed:
        seed: int = 0

    with pytest.raises(ValueError, match="clashes with a flag"):
        experiment.build_parser("x", HasSeed)
    with pytest.raises(TypeError, match="dataclass"):
        experiment.build_parser("x", dict)
    with pytest.raises(ValueError, match="folder name"):
        experiment.execute("bad/name", Config(), spiral_run)


# --------------------------------------------------------------------------- a normal run

def test_run_folder_manifest_metrics_and_results(tmp_path):
    pytest.importorskip("matplotlib")
    experiment.main("spiral", Config, spiral_run, ["--runs-dir", str(tmp_path), "--epochs", "3"])
    folder = only_folder(tmp_path)
    for name in ("config.json", "manifest.json", "metrics.jsonl", "results.json",
                 "metrics.png"):
        assert (folder / name).is_file(), name
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == [
        "ckpt_00000001.npz", "ckpt_00000002.npz", "ckpt_00000003.npz"]

    m = json.loads((folder / "manifest.json").read_text())
    assert m["versions"]["funcnn"] == funcnn.__version__
    assert m["versions"]["jax"] == jax.__version__
    assert m["versions"]["numpy"] == np.__version__
    assert m["versions"]["python"].split(".")[:2] == [str(v) for v in sys.version_info[:2]]
    assert m["versions"]["jaxlib"]
    assert m["backend"] == jax.default_backend() == "cpu"
    assert m["device"].startswith("cpu")
    assert m["x64"] is True
    assert m["command"] == ["spiral", "--runs-dir", str(tmp_path), "--epochs", "3"]
    assert m["status"] == "completed" and m["error"] is None and m["epochs_done"] == 3
    assert m["started"] <= m["ended"]  # ISO 8601 UTC strings sort by time
    assert m["git"] is None or len(m["git"]["commit"]) == 40
    assert m["config_hash"] == folder.name

    rows = experiment.read_metrics(folder / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["step"] for r in rows] == [3, 6, 9]  # 90 examples, batch 30
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_s"} <= set(rows[0])
    results = json.loads((folder / "results.json").read_text())
    assert results["final_accuracy"] == rows[-1]["accuracy"]
    # a finished run asked again trains nothing more and records a second attempt
    state = run_main(tmp_path, "--epochs", "3")
    m2 = json.loads((folder / "manifest.json").read_text())
    assert m2["resumed_from_epoch"] == 3 and len(m2["attempts"]) == 1
    assert len(experiment.read_metrics(folder / "metrics.jsonl")) == 3
    final = checkpoint.load(folder / "checkpoints" / "ckpt_00000003.npz", state)
    assert leaves_equal(final, state)


def test_a_failed_attempt_leaves_a_completed_run_completed(tmp_path):
    """Asked again with an unhashed field changed (here a note; in practice a moved data
    folder), a completed run whose new attempt fails keeps its status, its config.json
    (the values its results came from) and its results; the failed attempt, with its
    values, is in the manifest's attempts. A later attempt that completes records its
    values as usual."""
    run_main(tmp_path, "--epochs", "2", "--note", "first")
    folder = only_folder(tmp_path)
    results = (folder / "results.json").read_text()

    def missing_data(r):
        raise FileNotFoundError("no MNIST files in /moved")

    with pytest.raises(FileNotFoundError):
        run_main(tmp_path, "--epochs", "2", "--note", "moved", run_fn=missing_data)
    m = json.loads((folder / "manifest.json").read_text())
    assert m["status"] == "completed" and m["error"] is None and m["epochs_done"] == 2
    failed = m["attempts"][-1]
    assert failed["status"] == "failed" and "no MNIST files" in failed["error"]
    assert failed["config"]["note"] == "moved"
    assert json.loads((folder / "config.json").read_text())["config"]["note"] == "first"
    assert (folder / "results.json").read_text() == results
    (record,) = experiment.collect("spiral", tmp_path)
    assert record.status == "completed" and record.config["note"] == "first"

    run_main(tmp_path, "--epochs", "2", "--note", "second")
    m = json.loads((folder / "manifest.json").read_text())
    assert m["status"] == "completed" and len(m["attempts"]) == 2
    assert json.loads((folder / "config.json").read_text())["config"]["note"] == "second"
    starts = [a["started"] for a in m["attempts"]]
    assert starts == sorted(starts) and m["attempts"][-1]["status"] == "failed"

    # An attempt that wrote something (here new results) before failing is recorded as
    # it ended: the folder no longer holds only what the completed attempt left.
    def log_then_fail(r):
        spiral_run(r)
        raise RuntimeError("failed after logging its results")

    with pytest.raises(RuntimeError):
        run_main(tmp_path, "--epochs", "2", "--note", "third", run_fn=log_then_fail)
    m = json.loads((folder / "manifest.json").read_text())
    assert m["status"] == "failed" and "after logging" in m["error"]
    assert json.loads((folder / "config.json").read_text())["config"]["note"] == "third"


# --------------------------------------------------------------------------- resume

class Crash(Exception):
    pass


def test_resume_after_interruption_is_bitwise_equal(tmp_path, monkeypatch):
    reference = run_main(tmp_path / "ref")
    ref_folder = only_folder(tmp_path / "ref")

    real_save_step = checkpoint.save_step

    def crash_at_epoch_4(directory, step, tree, **kw):
        if step == 4:  # epoch 4's metrics line is written, its checkpoint is not
            raise Crash("simulated crash")
        return real_save_step(directory, step, tree, **kw)

    monkeypatch.setattr(checkpoint, "save_step", crash_at_epoch_4)
    with pytest.raises(Crash):
        run_main(tmp_path / "cut")
    monkeypatch.setattr(checkpoint, "save_step", real_save_step)
    folder = only_folder(tmp_path / "cut")
    assert [r["epoch"] for r in experiment.read_metrics(folder / "metrics.jsonl")] == [1, 2, 3, 4]
    assert json.loads((folder / "manifest.json").read_text())["status"] == "failed"

    # damage the newest checkpoint too: resuming falls back to the one before
    newest = folder / "checkpoints" / "ckpt_00000003.npz"
    blob = bytearray(newest.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    newest.write_bytes(bytes(blob))

    resumed = run_main(tmp_path / "cut")
    assert (folder / "checkpoints" / "ckpt_00000003.npz.damaged").is_file()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["resumed_from_epoch"] == 2 and manifest["status"] == "completed"
    assert manifest["attempts"][0]["status"] == "failed"
    assert leaves_equal(resumed, reference)
    assert int(resumed.step) == 6 * 3
    # no duplicate lines, and the same numbers as the uninterrupted run
    assert metrics_without_timing(folder) == metrics_without_timing(ref_folder)


# Epochs of the SIGKILL test's child. It is killed within 50 ms of its first checkpoint
# (each epoch writes one), long before the last epoch; more epochs only lengthen the
# reference run and the resumed one.
CHILD_EPOCHS = 100
CHILD = textwrap.dedent(f"""
    import dataclasses, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    from funcnn import data, experiment, losses, nn, optim, train

    @dataclasses.dataclass(frozen=True)
    class Config:
        epochs: int = {CHILD_EPOCHS}

    def run(r):
        x, y = data.spiral_data(20, 3)
        model = nn.serial(nn.dense(16), nn.relu(), nn.dropout(0.1), nn.dense(3))
        opt = optim.adam(0.01)
        state = train.init_state(model, opt, r.key, (2,))
        r.fit(model, losses.softmax_cross_entropy, opt, state, x, y,
              epochs=r.config.epochs, batch_size=20)

    experiment.main("child", Config, run, sys.argv[1:], keep=2)
""")


def _child(script: Path, runs_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, str(script), "--runs-dir", str(runs_dir),
                             "--no-plots"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _final_checkpoint(runs_dir: Path) -> dict:
    (folder,) = (runs_dir / "child").iterdir()
    path = folder / "checkpoints" / f"ckpt_{CHILD_EPOCHS:08d}.npz"
    return checkpoint.read(path), folder


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_at_a_random_moment_then_resume_changes_nothing(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    killed_dir, ref_dir = tmp_path / "killed", tmp_path / "ref"
    reference = _child(script, ref_dir)  # uninterrupted, in parallel with the one we kill
    victim = _child(script, killed_dir)
    deadline = time.monotonic() + 60
    while not list(killed_dir.glob("child/*/checkpoints/ckpt_*.npz")):
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint after 60 s"
        time.sleep(0.002)
    time.sleep(random.Random(0).uniform(0.0, 0.05))  # a "random" moment, same every run
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    victim.stderr.close()
    (folder,) = (killed_dir / "child").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "running", "the child finished before it was killed"
    done = experiment.read_metrics(folder / "metrics.jsonl")
    assert 1 <= len(done) < CHILD_EPOCHS

    resumed = _child(script, killed_dir)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err.decode()
    _, err = reference.communicate(timeout=120)
    assert reference.returncode == 0, err.decode()

    got, folder = _final_checkpoint(killed_dir)
    want, ref_folder = _final_checkpoint(ref_dir)
    assert got.keys() == want.keys()
    for k in want:
        a, b = got[k], want[k]
        if k.endswith("key"):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), k
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["attempts"][0]["status"] == "killed (no end recorded)"
    assert manifest["resumed_from_epoch"] >= 1
    assert metrics_without_timing(folder) == metrics_without_timing(ref_folder)
    assert [r["epoch"] for r in experiment.read_metrics(folder / "metrics.jsonl")] == \
        list(range(1, CHILD_EPOCHS + 1))


# --------------------------------------------------------------------------- check-repro

CTRL_C_SCRIPT = textwrap.dedent("""
    import dataclasses, os
    from funcnn import data, experiment, losses, nn, optim, train

    @dataclasses.dataclass(frozen=True)
    class Config:
        epochs: int = 4

    def run(r):
        x, y = data.spiral_data(10, 3)
        model = nn.serial(nn.dense(4), nn.relu(), nn.dense(3))
        opt = optim.sgd(0.1)
        state = train.init_state(model, opt, r.key, (2,))

        def ctrl_c(state):  # Ctrl-C after epoch 2, before its checkpoint
            if int(state.step) == 2 * 3 and os.environ.get("CTRL_C"):
                raise KeyboardInterrupt
            return {}
        r.fit(model, losses.softmax_cross_entropy, opt, state, x, y,
              epochs=r.config.epochs, batch_size=10, epoch_metrics=ctrl_c)

    experiment.main("ctrlc", Config, run)   # the real command line (argv=None)
""")


def test_ctrl_c_on_the_command_line_says_how_to_resume_in_one_line(tmp_path):
    script = tmp_path / "ctrlc.py"
    script.write_text(CTRL_C_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "CTRL_C": "1"}
    cmd = [sys.executable, str(script), "--runs-dir", str(tmp_path / "runs"), "--no-plots"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert "ctrlc: interrupted; its checkpoints up to epoch 1 are kept in" in done.stderr
    assert "run the same command again to resume" in done.stderr
    del env["CTRL_C"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (folder,) = (tmp_path / "runs" / "ctrlc").iterdir()
    m = json.loads((folder / "manifest.json").read_text())
    assert m["status"] == "completed" and m["resumed_from_epoch"] == 1
    assert m["attempts"][-1]["status"] == "interrupted"
    # with --restart, the same command would discard the checkpoints again
    env["CTRL_C"] = "1"
    done = subprocess.run(cmd + ["--restart"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 130 and "run the same command without --restart" in done.stderr


def test_check_repro_reports_match_and_mismatch(tmp_path, capsys):
    run_main(tmp_path, "--epochs", "3", "--note", "first")
    folder = only_folder(tmp_path)
    report = run_main(tmp_path, "--epochs", "3", "--check-repro")
    assert isinstance(report, experiment.ReproReport)
    assert report.match and report.params_equal and report.epochs_rerun == 3
    assert "REPRODUCED" in capsys.readouterr().out
    assert (folder / "repro" / "metrics.jsonl").is_file()

    # tamper with one recorded number: the check names the epoch and the metric
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["loss"] = row["loss"] * (1 + 1e-6)
    lines[1] = json.dumps(row)
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    report = run_main(tmp_path, "--check-repro", str(folder))  # by folder: config from disk
    assert not report.match
    assert any(m.startswith("epoch 2: loss") for m in report.mismatches)
    assert "NOT REPRODUCED" in str(report)
    # a tolerance accepts it
    assert run_main(tmp_path, "--check-repro", str(folder), "--repro-rtol", "1e-5").match
    with pytest.raises(experiment.ExperimentError, match="no recorded run"):
        run_main(tmp_path, "--epochs", "4", "--check-repro")


# --------------------------------------------------------------------------- faults

def test_unwritable_run_folder_fails_before_the_run_starts(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the runs folder should go")
    called = []
    with pytest.raises(experiment.RunFolderError, match="cannot create the run folder") as e:
        experiment.execute("spiral", Config(), called.append, runs_dir=blocker / "runs")
    assert "--runs-dir" in str(e.value)
    assert called == []


def test_full_disk_fails_before_training(tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    real_fit = train.fit
    trained = []
    monkeypatch.setattr(train, "fit", lambda *a, **k: trained.append(1) or real_fit(*a, **k))
    monkeypatch.setattr(experiment.run.shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 4096))
    with pytest.raises(experiment.RunFolderError, match="free") as e:
        run_main(tmp_path)
    assert "--runs-dir" in str(e.value)
    assert trained == []
    folder = only_folder(tmp_path)
    assert not list(folder.glob("checkpoints/ckpt_*"))
    assert json.loads((folder / "manifest.json").read_text())["status"] == "failed"


def test_nan_in_the_data_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        run_main(tmp_path, "--nan-at", "7")
    folder = only_folder(tmp_path)
    assert not (folder / "checkpoints").exists()
    assert experiment.read_metrics(folder / "metrics.jsonl") == []
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "non-finite" in manifest["error"]


@dataclasses.dataclass(frozen=True)
class RegressionConfig:
    lr: float = 3.0
    epochs: int = 40


def diverging_run(r: experiment.Run):
    """Linear regression with a learning rate far past stability: grows ~600x an epoch."""
    kx, kw = jax.random.split(jax.random.key(1))
    x = np.asarray(jax.random.normal(kx, (40, 4), jnp.float32))
    y = x @ np.asarray(jax.random.normal(kw, (4, 1), jnp.float32))
    model = nn.dense(1)
    opt = optim.sgd(r.config.lr)
    state = train.init_state(model, opt, r.key, (4,))
    return r.fit(model, losses.mse, opt, state, x, y, epochs=r.config.epochs, batch_size=10)


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(train.DivergedError) as e:
        experiment.main("regression", RegressionConfig, diverging_run,
                        ["--runs-dir", str(tmp_path), "--no-plots"])
    err = e.value
    assert err.epoch >= 2
    (folder,) = (tmp_path / "regression").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "diverged"
    assert manifest["diverged"]["epoch"] == err.epoch
    assert manifest["diverged"]["step_in_epoch"] == err.step
    assert f"epoch {err.epoch}, step {err.step}" in manifest["error"]
    good = [p for p in (folder / "checkpoints").iterdir()]
    newest = max(good)
    assert newest.name == f"ckpt_{err.epoch - 1:08d}.npz"
    assert manifest["diverged"]["last_good_checkpoint"] == str(newest)
    for path in good + [folder / "diverged_last_finite.npz"]:
        for leaf in checkpoint.read(path).values():
            if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                assert np.all(np.isfinite(np.asarray(leaf))), path
    last = checkpoint.load_metadata(folder / "diverged_last_finite.npz")
    assert last["epoch"] == err.epoch and last["step"] == int(err.state.step)
    assert [r["epoch"] for r in experiment.read_metrics(folder / "metrics.jsonl")] == \
        list(range(1, err.epoch))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locks")
def test_two_processes_cannot_run_the_same_folder(tmp_path):
    import fcntl

    folder = tmp_path / "spiral" / experiment.config_hash("spiral", Config(), 0)
    folder.mkdir(parents=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(experiment.ExperimentError, match="another process"):
            run_main(tmp_path)


def test_restart_discards_the_old_run(tmp_path):
    run_main(tmp_path, "--epochs", "2")
    folder = only_folder(tmp_path)

    def wider(r):  # the script changed under the same config: a clear error, not a skip
        r.config = dataclasses.replace(r.config, hidden=9)
        return spiral_run(r)

    with pytest.raises(experiment.ExperimentError, match="no longer matches"):
        run_main(tmp_path, "--epochs", "2", run_fn=wider)
    assert (folder / "checkpoints" / "ckpt_00000002.npz").is_file()
    (folder / "metrics.jsonl").write_text('{"epoch": 1, "loss": 99.0}\n')
    (folder / "checkpoints" / "ckpt_00000002.npz").unlink()
    run_main(tmp_path, "--epochs", "2", "--restart")
    rows = experiment.read_metrics(folder / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["loss"] != 99.0
    assert json.loads((folder / "manifest.json").read_text())["resumed_from_epoch"] is None


# --------------------------------------------------------------------------- experiments

def _load_experiment(name: str, monkeypatch):
    """Import ``experiments/<name>.py`` as a module (its dataclasses need sys.modules)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_exp_{name}", REPO / "experiments" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _nielsen_sgd_step(weights, biases, xs, ys, eta, lmbda, n, cost):
    """One mini-batch of Nielsen's ``update_mini_batch`` + ``backprop``, example by
    example, weights (out, in) as his; ``cost`` is "quadratic" or "cross_entropy"."""
    nabla_w = [np.zeros_like(w) for w in weights]
    nabla_b = [np.zeros_like(b) for b in biases]
    for x, y in zip(xs, ys):
        a, acts, zs = x[:, None], [x[:, None]], []
        for w, b in zip(weights, biases):
            z = w @ a + b
            zs.append(z)
            a = _sigmoid(z)
            acts.append(a)
        y = y[:, None]
        if cost == "quadratic":
            delta = (a - y) * _sigmoid(zs[-1]) * (1 - _sigmoid(zs[-1]))
        else:
            delta = a - y
        nabla_b[-1] += delta
        nabla_w[-1] += delta @ acts[-2].T
        for layer in range(2, len(weights) + 1):
            sp = _sigmoid(zs[-layer]) * (1 - _sigmoid(zs[-layer]))
            delta = (weights[-layer + 1].T @ delta) * sp
            nabla_b[-layer] += delta
            nabla_w[-layer] += delta @ acts[-layer - 1].T
    m = len(xs)
    weights = [(1 - eta * lmbda / n) * w - (eta / m) * nw for w, nw in zip(weights, nabla_w)]
    biases = [b - (eta / m) * nb for b, nb in zip(biases, nabla_b)]
    return weights, biases


@pytest.mark.parametrize("network", ["network", "network2"])
def test_nielsen_scaling_reproduces_his_update_exactly(network, monkeypatch):
    """The learning-rate and L2 scalings derived in experiments/nielsen_mnist.py turn
    funcnn's mean losses into Nielsen's summed costs: one SGD step agrees in float64."""
    mod = _load_experiment("nielsen_mnist", monkeypatch)
    cfg = mod.Config(network=network, hidden=5)
    n = 50  # training-set size in Nielsen's lambda / n
    model, loss, opt, l2 = mod.build(cfg, n)
    rng = np.random.default_rng(0)
    xs = rng.uniform(0, 1, (4, 6))
    ys = np.eye(mod.K)[rng.integers(0, mod.K, 4)]
    state = train.init_state(model, opt, jax.random.key(0), (6,), dtype=jnp.float64)
    penalty = train.dense_penalty(state.params, weight_l2=l2) if l2 else None
    new, _ = train.train_step(state, jnp.asarray(xs), jnp.asarray(ys), model=model, loss=loss,
                              update=opt.update, penalty=penalty)

    dense = [p for p in state.params if isinstance(p, nn.Dense)]
    ws, bs = _nielsen_sgd_step([np.asarray(d.w).T for d in dense],
                               [np.asarray(d.b)[:, None] for d in dense], xs, ys, cfg.eta,
                               cfg.lmbda, n, "quadratic" if network == "network" else "x")
    got = [p for p in new.params if isinstance(p, nn.Dense)]
    assert (network == "network2") == (l2 > 0)
    for d, w, b in zip(got, ws, bs):
        np.testing.assert_allclose(np.asarray(d.w), w.T, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(d.b), b[:, 0], rtol=1e-12, atol=1e-14)
    # and the step is not trivially small: the weights moved
    assert not np.allclose(np.asarray(got[0].w), np.asarray(dense[0].w), atol=1e-6)
