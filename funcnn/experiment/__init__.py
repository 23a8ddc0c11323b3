"""Experiments: a config dataclass, a seed and a function, recorded in a run folder.

An experiment script is short::

    @dataclasses.dataclass(frozen=True)
    class Config:
        lr: float = 1e-3
        epochs: int = 10
        data_dir: str | None = experiment.option(None, help="IDX files", hashed=False)

    def run(r: experiment.Run):
        model = nn.serial(nn.dense(128), nn.relu(), nn.dense(10))
        opt = optim.adam(r.config.lr)
        state = train.init_state(model, opt, r.key, (784,))
        state, history = r.fit(model, losses.softmax_cross_entropy, opt, state, x, y,
                               epochs=r.config.epochs, batch_size=128)
        r.log_result(test_accuracy=train.evaluate(model, loss, state.params, xt, yt)["accuracy"])

    if __name__ == "__main__":
        experiment.main("my_experiment", Config, run)

Every field of ``Config`` becomes a flag (``lr`` -> ``--lr``, ``data_dir`` ->
``--data-dir``); :func:`main` adds ``--seed``, ``--runs-dir``, ``--restart``,
``--no-plots``, ``--check-repro``, ``--repro-rtol`` and ``--results``.

A run writes ``<runs-dir>/<name>/<config hash>/``, the hash covering the name, the
seed, ``checkpoint_every`` and every config field not marked ``hashed=False``:

* ``config.json``: name, hash, seed and every field's value;
* ``manifest.json``: funcnn, jax, jaxlib, numpy and Python versions, backend and
  device, git commit (when funcnn lives in a git checkout), command line, start and
  end time, status (running / completed / failed / diverged / interrupted), and the
  earlier attempts of the same run. A completed run stays completed when a later
  attempt fails before writing anything (a moved data folder in an unhashed field,
  Ctrl-C while compiling): ``config.json`` and the manifest are put back as the
  completed attempt left them, and the failed attempt, with its unhashed values, joins
  the attempts;
* ``metrics.jsonl``: one JSON line per epoch (``epoch``, ``step``, the metrics of
  ``train.fit``, any ``epoch_metrics``, and ``epoch_s``: wall seconds per epoch);
* ``results.json``: what the run function passes to :meth:`Run.log_result`;
* ``checkpoints/ckpt_<epoch>.npz``: the :class:`~funcnn.train.TrainState` every
  ``checkpoint_every`` epochs (the last ``keep`` of them);
* ``diverged_last_finite.npz``: when the loss turned NaN/inf, the last finite state;
* ``metrics.png``: loss and accuracy curves (when matplotlib is installed).

Resuming, and why it is bitwise exact. Running the same command again continues
from the newest checkpoint. ``train.fit`` derives every random draw from
``state.key`` and ``state.step`` (the shuffle of epoch ``e`` from ``fold_in(key, e)``,
dropout from the step), so the resumed run draws what the uninterrupted run drew.
:meth:`Run.fit` always compiles ``checkpoint_every`` epochs per call and checkpoints
after each call, so an interrupted and an uninterrupted run execute the same
compiled program on the same inputs, chunk by chunk; a checkpoint restores the
state's exact bits. On one machine (CPU) the final parameters are therefore bitwise
equal, which ``tests/test_experiment.py`` checks, including after ``SIGKILL``.

Crash safety. Each epoch's metrics line is appended (and fsynced) before its
checkpoint is written, and checkpoints are written atomically
(:func:`funcnn.checkpoint.save`); on resume ``metrics.jsonl`` is cut back to the
checkpointed epoch, so it never holds a line twice. A lock file keeps two processes
from running the same folder at once.

Faults, each an error before any training: an output folder that cannot be written
or a disk too full for the checkpoints (a probe file is written first), and NaN or
inf in the data. A loss that turns NaN stops the run with
:class:`funcnn.train.DivergedError` naming the epoch and step; the checkpoints
written before stay, and the last finite state is saved beside them.

``--results`` prints every run of the experiment under ``--runs-dir``, one row per
configuration and seed, with its status and results (to compare seeds or settings).

``--check-repro`` reruns a recorded run from scratch in ``<run folder>/repro/`` and
reports whether every metric (timings aside) and result matches, and whether the
final parameters are bitwise equal.

Modules (imports go one way, down this list):

- ``errors``: :class:`ExperimentError` and :class:`RunFolderError`.
- ``config``: :func:`option`, flags (:func:`build_parser`), JSON and :func:`config_hash`.
- ``files``: atomic writes, JSON and :func:`read_metrics`, probes, the manifest's
  environment and git commit, the folder lock.
- ``run``: the :class:`Run` handed to the run function (metrics, checkpoints, fit).
- ``execution``: :func:`execute`, the run folder's lifecycle (config, manifest, plot).
- ``repro``: :func:`check_repro` and its :class:`ReproReport`.
- ``results``: :func:`collect` reads every run folder of an experiment back
  (:class:`RunRecord`), :func:`results_table` lays them side by side (``--results``).
- ``cli``: :func:`main`, the command line.
"""

from .cli import main
from .config import build_parser, config_from_json, config_hash, config_to_json, option
from .errors import ExperimentError, RunFolderError
from .execution import execute
from .files import TIMING_KEYS, read_metrics
from .repro import ReproReport, check_repro
from .results import RunRecord, collect, results_table
from .run import Run

__all__ = ["Run", "ReproReport", "RunFolderError", "ExperimentError", "main", "execute",
           "check_repro", "option", "config_hash", "config_to_json", "config_from_json",
           "build_parser", "read_metrics", "TIMING_KEYS", "collect", "results_table",
           "RunRecord"]
