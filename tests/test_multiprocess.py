"""Two processes, one JAX job: data-parallel ``fit`` and sweeps across processes.

The test starts a real two-process job on the loopback interface
(``jax.distributed.initialize("127.0.0.1:PORT", 2, pid)``, CPU collectives over gloo,
2 CPU devices per process), runs ``multiprocess_cases.py`` in both, and reads what each
process reported:

* ``fit`` over the mesh of all 4 devices equals ``fit`` on one device (float64 within
  1e-12, float32 within 1e-6 relative; both engines, dense and conv), also when called
  again with the state it returned, and ``evaluate`` over the mesh agrees;
* a sweep of 8 configurations spread over the devices of both processes equals the
  same sweep in one process, on both processes;
* a data set held in parts (``distributed.gather_processes``) trains as the whole;
* an experiment writes its run folder from process 0 only, and records the layout;
* each bad input (NaN on one process only, data, labels, settings or initial state
  that differ between processes, parts of different lengths, a sweep whose
  configurations differ, a run folder that the processes do not share) is a clear
  error on every process, before anything runs, instead of a hang.

The processes are started and stopped by the test, with a timeout, in a temporary
folder.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TOL = {"float32": 1e-6, "float64": 1e-12}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("multiprocess")
    # less optimisation by the CPU backend halves each compilation (as test_scale)
    flags = os.environ.get("XLA_FLAGS", "") + (
        " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "tests.multiprocess_cases", str(pid),
                               port, str(out)], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for pid in (0, 1)]
    try:
        logs = [proc.communicate(timeout=480)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for pid, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"process {pid} failed:\n{log[-4000:]}"
    found = [json.loads((out / f"result_{pid}.json").read_text()) for pid in (0, 1)]
    return found, out


def _case(results, name):
    found, _ = results
    for pid, r in enumerate(found):
        assert "crashed" not in r[name], f"process {pid}: {r[name].get('crashed')}"
    return [r[name] for r in found]


def test_the_job_has_two_processes_and_four_devices(results):
    for r in results[0]:
        assert (r["process_count"], r["device_count"]) == (2, 4)


@pytest.mark.parametrize("name", ["fit/dense/backprop/float64", "fit/dense/jax/float32",
                                  "fit/conv/backprop/float64"])
def test_data_parallel_fit_across_processes_equals_one_device(results, name):
    tol = TOL[name.rsplit("/", 1)[1]]
    for pid, r in enumerate(_case(results, name)):
        for part, diff in r.items():
            assert diff <= tol, (pid, part, diff)


def test_sweep_across_processes_equals_one_process(results):
    a, b = _case(results, "sweep")
    for r in (a, b):
        assert (r["strategy"], r["devices"]) == ("sharded", 4)
        assert r["history"] == 0.0 and r["params"] == 0.0
    assert a["final_loss"] == b["final_loss"]  # every process gets every result


def test_data_held_in_parts_trains_as_the_whole(results):
    for r in _case(results, "gather"):
        assert r["equal"] and r["params"] == 0.0


def test_only_process_0_writes_the_run_folder_and_it_records_the_layout(results):
    p0, p1 = _case(results, "experiment")
    assert p0["loss"] == p1["loss"]
    for name in ("manifest.json", "config.json", "metrics.jsonl", "results.json",
                 "checkpoints/ckpt_00000002.npz"):
        assert any(f.endswith(name) for f in p0["files"]), (name, p0["files"])
    assert p1["writes"] == []  # process 1 trained but changed nothing in the folder
    assert p0["layout"] == {"process_count": 2, "device_count": 4, "mesh": {"data": 4}}


BAD = {
    "nan_on_one": ["non-finite", "process 1 of 2 failed its input checks"],
    "data_differs": ["the training data is not the same on every process",
                     "gather_processes"],
    "labels_differ": ["the training data is not the same on every process"],
    "batch_size_differs": ["batch_size is not the same on every process",
                           "process 0: 8; process 1: 16"],
    "state_differs": ["the initial state is not the same on every process",
                      "same key on every process"],
    "length_differs": ["every process must hold a part of the same size",
                       "process 0: x 16 examples", "process 1: x 17 examples"],
    "batch_not_divisible": ["does not split evenly over the 4 devices"],
    "sweep_space_differs": ["the configuration table is not the same on every process"],
    "experiment_folder_not_shared": ["the run folder as this process sees it is not the "
                                     "same on every process",
                                     "file system shared by all processes"],
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_a_clear_error_on_every_process(results, name):
    messages = [r[name] for r in _case(results, "bad")]
    for pid, message in enumerate(messages):
        assert message.startswith("ValueError"), (pid, message)
        for part in BAD[name]:
            if name == "nan_on_one" and pid == 1 and "process 1 of 2" in part:
                continue  # process 1 raises its own error
            assert part in message, (pid, message)


# ---------------------------------------------------------------- layouts in one process

def test_layouts_are_recorded_checked_on_resume_and_compared_by_check_repro(tmp_path):
    """Run folders record their layout (manifest and checkpoints). Resuming under another
    layout is refused (the resumed run would no longer equal an unbroken one), and
    ``--check-repro`` compares runs of one layout bitwise and says so when the recorded
    run had another (here: a mesh of one device, and none)."""
    import dataclasses

    import jax

    from funcnn import checkpoint, data, experiment, losses, nn, optim, train

    @dataclasses.dataclass(frozen=True)
    class Config:
        epochs: int = experiment.option(2, hashed=False)

    model, opt = nn.serial(nn.dense(4), nn.relu(), nn.dense(3)), optim.sgd(0.1)
    use_mesh = []

    def run_fn(run):
        x, y = data.spiral_data(10, 3)
        state = train.init_state(model, opt, run.key, (2,))
        mesh = jax.make_mesh((1,), ("data",)) if use_mesh else None
        run.fit(model, losses.softmax_cross_entropy, opt, state, x, y,
                epochs=run.config.epochs, batch_size=10, mesh=mesh)

    main = lambda *flags: experiment.main(  # noqa: E731
        "layout", Config, run_fn, ["--runs-dir", str(tmp_path), "--no-plots", *flags])
    use_mesh.append(True)  # recorded on a mesh of this process's one device
    main()
    (folder,) = (tmp_path / "layout").iterdir()
    here = {"process_count": 1, "device_count": jax.device_count(), "mesh": {"data": 1}}
    assert json.loads((folder / "manifest.json").read_text())["layout"] == here
    assert checkpoint.load_metadata(folder / "checkpoints" / "ckpt_00000002.npz")[
        "layout"] == here
    report = main("--check-repro")
    assert report.match and report.same_layout
    assert "layout: 1 process(es), mesh {'data': 1} (the same in both runs)" in str(report)

    use_mesh.clear()  # without the mesh: check-repro says the layouts differ
    report = main("--check-repro")
    assert not report.same_layout
    assert "layout DIFFERS: recorded 1 process(es), mesh {'data': 1}, rerun 1 process(es), " \
        "no mesh" in str(report)
    # resuming from epoch 2 without the mesh is refused before anything trains
    with pytest.raises(experiment.ExperimentError, match=r"trained with 1 process\(es\), "
                       r"mesh \{'data': 1\}, and this attempt has 1 process\(es\), no mesh"):
        main("--epochs", "3")
    assert not (folder / "checkpoints" / "ckpt_00000003.npz").exists()
