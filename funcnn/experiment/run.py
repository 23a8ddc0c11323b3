"""The :class:`Run` handed to an experiment's run function.

It knows the run folder's layout (``metrics.jsonl``, ``results.json``,
``checkpoints/ckpt_<epoch>.npz``) and does the per-epoch work: :meth:`Run.fit`
resumes from the newest checkpoint, logs each epoch's metrics (fsynced) before
checkpointing it, and saves the last finite state when the loss diverges.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from funcnn import checkpoint, diagnostics, distributed, train
from funcnn.data import check_dataset

from .config import config_hash
from .errors import ExperimentError, RunFolderError
from .files import (_PROBE_BYTES, _log_value, _metric_value, _probe, _read_json,
                    _result_value, _write_atomic, _write_json, read_metrics)



class Run:
    """One run of an experiment, handed to the run function.

    Attributes:
      name, config, seed: what is being run. ``key`` is ``jax.random.key(seed)``.
      dir: the run folder. ``checkpoint_every`` (epochs per checkpoint), ``keep``
        (checkpoints kept).
      epoch: epochs completed and checkpointed so far (after :meth:`resume_state`,
        the epoch of the checkpoint it loaded).

    The simplest use is :meth:`fit`, which resumes, checkpoints and logs by itself.
    For a loop of your own: ``state = run.resume_state(state)``, then pass
    ``run.on_chunk`` as ``train.fit``'s ``on_chunk`` with
    ``epochs_per_call=run.checkpoint_every`` and ``epochs=total - run.epoch``.

    With several processes (``jax.distributed``) every process runs the same run
    function with its own ``Run``; process 0 alone writes (metrics, results,
    checkpoints), and every process reads the same checkpoints when resuming. The
    run folder must be on a file system all processes see.
    """

    def __init__(self, name: str, config: Any, seed: int, folder: Path, *,
                 checkpoint_every: int = 1, keep: int = 3, verbose: bool = True):
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"Run: seed must be an int, got {seed!r}")
        if not dataclasses.is_dataclass(config) or isinstance(config, type):
            raise TypeError(f"Run: config must be an instance of your config dataclass "
                            f"(experiment.main builds it from the command line); got "
                            f"{type(config).__name__ if not isinstance(config, type) else config}")
        self.name, self.config, self.seed, self.dir = name, config, int(seed), Path(folder)
        self.key = jax.random.key(self.seed)
        self.checkpoint_every, self.keep, self.verbose = checkpoint_every, keep, verbose
        self.hash = config_hash(name, config, seed, checkpoint_every)
        self.epoch = 0
        self.layout: dict[str, Any] = distributed.layout()  # and the mesh, in fit
        self._resumed_layout: dict[str, Any] | None = None  # the checkpoint's
        self.total_epochs: int | None = None
        self.resumed_from: int | None = None
        self.diverged: dict[str, Any] | None = None
        self._fit_history: Any = None
        self._fit_start = 0
        self._last_step: int | None = None
        self._last_time = time.perf_counter()
        self._epoch_metrics: Callable[[Any], Mapping[str, Any]] | None = None

    # -- paths ---------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    def path(self, name: str) -> Path:
        """A path inside the run folder for a file of your own (a plot, a table)."""
        return self.dir / name

    # -- metrics ---------------------------------------------------------------------------
    def log_metrics(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Append one line ``{"epoch": epoch, **metrics}`` to ``metrics.jsonl`` (fsynced)."""
        if isinstance(epoch, (bool, np.bool_)) or not isinstance(epoch, (int, np.integer)) \
                or epoch < 0:
            raise TypeError(f"log_metrics: epoch must be an int >= 0; got {epoch!r}")
        row = {"epoch": int(epoch)}
        row.update(_row_values(metrics, "log_metrics"))
        if not distributed.is_main():
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def history(self) -> train.History:
        """The run's per-epoch metrics so far, read back from ``metrics.jsonl``."""
        rows = read_metrics(self.metrics_path)
        keys = list(dict.fromkeys(k for r in rows for k in r if k != "epoch"))
        keys = [k for k in keys if all(isinstance(r.get(k), (int, float, type(None)))
                                       for r in rows)]  # numbers only
        h = train.History()
        for k in keys:
            h.metrics[k] = np.array([np.nan if r.get(k) is None else r[k] for r in rows],
                                    dtype=np.float64)
        return h

    def log_result(self, **values: Any) -> None:
        """Record final results (e.g. ``test_accuracy=0.87``) in ``results.json``."""
        path = self.dir / "results.json"
        results = _read_json(path) if path.is_file() else {}
        if not isinstance(results, dict):
            raise ExperimentError(f"{path} holds {type(results).__name__}, not a JSON object of "
                                  "results; it is damaged. Fix: delete it (log_result writes "
                                  "a new one), or --restart")
        for k, v in values.items():
            try:
                results[k] = _result_value(v)
            except (TypeError, ValueError) as e:
                raise TypeError(f"log_result: result {k}={v!r} cannot be stored in "
                                f"results.json ({e}); pass numbers, strings, bools, arrays, "
                                "or lists and dicts of them") from None
        if distributed.is_main():
            _write_json(path, results)

    def _truncate_metrics(self, epoch: int) -> None:
        if not distributed.is_main():
            return
        rows = read_metrics(self.metrics_path)
        keep = [r for r in rows if r["epoch"] <= epoch]
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in keep)
        if not self.metrics_path.exists() or self.metrics_path.read_text(encoding="utf-8") != text:
            _write_atomic(self.metrics_path, text)

    # -- checkpoints -----------------------------------------------------------------------
    def _checkpoints(self) -> list[tuple[int, Path]]:
        return checkpoint.steps(self.checkpoint_dir)

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint file, or None."""
        found = self._checkpoints()
        return found[0][1] if found else None

    def resume_state(self, template: Any) -> Any:
        """The newest checkpoint loaded into ``template``'s structure, else ``template``.

        Sets :attr:`epoch` to the checkpoint's epoch and cuts ``metrics.jsonl`` back to
        it (lines written after the checkpoint came from work that is redone). A
        damaged checkpoint (one that :func:`~funcnn.checkpoint.read` refuses too) is
        renamed to ``<name>.damaged`` with a warning naming it and the one before is
        tried, as often as needed; with none left, training starts from scratch. An intact
        checkpoint that cannot be used (another state, a newer format, narrowing with
        ``jax_enable_x64`` off) stops with :class:`ExperimentError` and is left as it is.
        """
        state, epoch = template, 0
        found = self._checkpoints()
        for ck_epoch, path in found:
            try:
                meta = checkpoint.load_metadata(path)
                state = checkpoint.load(path, template)
            except (checkpoint.CheckpointVersionError, checkpoint.NarrowingError) as e:
                raise ExperimentError(str(e)) from None
            except FileNotFoundError:  # process 0 renamed it: damaged (below)
                continue
            except checkpoint.CheckpointError as e:
                try:
                    checkpoint.read(path)  # intact file: it does not fit the template
                except (checkpoint.CheckpointError, FileNotFoundError):
                    damaged = path.with_name(path.name + ".damaged")
                    if distributed.is_main():
                        path.replace(damaged)
                    print(f"warning: skipping the damaged checkpoint {path.name}: {e}\n"
                          f"  renamed it to {damaged.name}; trying the one before",
                          file=sys.stderr)
                    continue
                raise ExperimentError(
                    f"{e}\nThe checkpoint was written by this configuration, but the state "
                    "built by the script no longer matches it (did the code change?). Fix: "
                    "--restart to train from scratch, or restore the code that wrote it."
                ) from None
            if meta.get("config_hash") != self.hash:
                raise ExperimentError(
                    f"checkpoint {path} belongs to config hash {meta.get('config_hash')!r}, "
                    f"not {self.hash!r}; fix: --restart, or move the folder away")
            epoch, self._resumed_layout = ck_epoch, meta.get("layout")
            break
        else:
            if found:
                print(f"warning: none of the {len(found)} checkpoints in {self.checkpoint_dir} "
                      "could be read; training from scratch", file=sys.stderr)
        self.epoch = epoch
        self.resumed_from = epoch if epoch > 0 else None
        self._fit_history = None
        self._last_step = _step_of(state)
        self._last_time = time.perf_counter()
        self._truncate_metrics(epoch)
        if epoch and self.verbose:
            print(f"{self.name}: resuming from epoch {epoch} ({path.name})")
        return state

    def save_checkpoint(self, epoch: int, state: Any) -> Path:
        """Write ``state`` as the checkpoint of ``epoch`` (atomic; prunes to ``keep``)."""
        meta = {"epoch": int(epoch), "config_hash": self.hash, "layout": self.layout}
        step = _step_of(state)
        if step is not None:
            meta["step"] = step
        if distributed.is_main():  # a loop of one's own has not made it yet
            self.checkpoint_dir.mkdir(exist_ok=True)
        return checkpoint.save_step(self.checkpoint_dir, int(epoch), state, keep=self.keep,
                                    metadata=meta)

    def on_chunk(self, state: Any, history: train.History) -> None:
        """``train.fit``'s ``on_chunk`` hook: log the new epochs, then checkpoint.

        The metrics lines are fsynced before the checkpoint is written, so a crash
        between the two leaves lines that :meth:`resume_state` cuts away, never a
        checkpoint without its lines.
        """
        if history is not self._fit_history:  # a new fit call starts at the current epoch
            self._fit_history, self._fit_start = history, self.epoch
        done = len(history)
        start = self.epoch - self._fit_start
        new = done - start
        if new <= 0:
            return
        now = time.perf_counter()
        per_epoch = (now - self._last_time) / new
        step = _step_of(state)
        steps_per_epoch = (None if step is None or self._last_step is None
                           else (step - self._last_step) // new)
        extra = self._epoch_metrics(state) if self._epoch_metrics is not None else {}
        for i in range(start, done):
            epoch = self._fit_start + i + 1
            row: dict[str, Any] = {}
            if steps_per_epoch is not None:
                row["step"] = self._last_step + (i - start + 1) * steps_per_epoch
            row.update({k: _metric_value(v[i], k) for k, v in history.metrics.items()})
            if i == done - 1:
                row.update(_row_values(extra, "epoch_metrics"))
            row["epoch_s"] = round(per_epoch, 6)
            self.log_metrics(epoch, row)
            if self.verbose:
                print(_format_line(epoch, self.total_epochs, row), flush=True)
        epoch = self._fit_start + done
        self.save_checkpoint(epoch, state)
        self.epoch, self._last_step, self._last_time = epoch, step, time.perf_counter()

    def _record_layout(self) -> None:
        """The manifest of this attempt records the layout with its mesh (process 0)."""
        path = self.dir / "manifest.json"
        if distributed.is_main() and path.is_file():
            manifest = _read_json(path)
            if isinstance(manifest, dict):
                manifest["layout"] = self.layout
                _write_json(path, manifest)

    def _check_layout(self) -> None:
        """Resuming needs the layout (process count, mesh) that wrote the checkpoint
        (its metadata records it): another adds the batch sums in another order, and
        the resumed run would no longer equal one trained without a stop."""
        before = self._resumed_layout  # None: a checkpoint from before layouts were kept
        if before is not None and \
                distributed.layout_key(before) != distributed.layout_key(self.layout):
            shown = lambda v: (f"{v.get('process_count', 1)} process(es), "  # noqa: E731
                               + (f"mesh {v['mesh']}" if v.get("mesh") else "no mesh"))
            raise ExperimentError(
                f"the checkpoint in {self.dir} was trained with {shown(before)}, and "
                f"this attempt has {shown(self.layout)}: resuming across layouts would add "
                "the batch sums in another order, so the run would no longer equal one "
                "trained without a stop. Fix: resume with the recorded layout, or "
                "--restart to train from scratch in this one.")

    def _check_space(self, state: Any) -> None:
        """Probe-write one checkpoint's worth of bytes and check room for ``keep + 1``
        (process 0, the one that writes)."""
        if not distributed.is_main():
            return
        nbytes = sum(int(np.asarray(jax.random.key_data(x) if _is_key(x) else x).nbytes)
                     for x in jax.tree.leaves(state)) + 64 * 1024
        need = (self.keep + 1) * nbytes + _PROBE_BYTES
        free = shutil.disk_usage(self.dir).free
        if free < need:
            raise RunFolderError(errno.ENOSPC, f"the disk of the run folder {self.dir} has "
                                 f"{free} bytes free, but {self.keep + 1} checkpoints of "
                                 f"{nbytes} bytes need {need}; free some space or pass "
                                 "--runs-dir on another disk")
        self.checkpoint_dir.mkdir(exist_ok=True)
        _probe(self.checkpoint_dir, nbytes, "a checkpoint-sized file")

    # -- training ----------------------------------------------------------------------------
    def fit(self, model: Any, loss: Callable, optimizer: Any, state: train.TrainState,
            x: Any, y: Any, *, epochs: int | None = None, batch_size: int | None = None,
            validation_data: tuple[Any, Any] | None = None,
            epoch_metrics: Callable[[train.TrainState], Mapping[str, Any]] | None = None,
            **fit_kwargs: Any) -> tuple[train.TrainState, train.History]:
        """``train.fit`` that resumes, checkpoints and logs; returns the state and the
        whole run's history (all epochs, including those of earlier attempts).

        ``state`` is the fresh state (from ``train.init_state``); it is replaced by
        the newest checkpoint when there is one, and only the remaining epochs are
        trained. ``epoch_metrics(state)`` may add metrics of your own (say, test
        accuracy under a loss whose built-in metric is not accuracy) to the last
        epoch of each checkpointed chunk. Other keyword arguments go to ``train.fit``;
        with ``diagnostics=[...]`` among them the run folder also gets
        ``diagnostics.md``, a table per layer (the columns are in ``metrics.jsonl``).

        Raises:
          ValueError: NaN/inf or mismatched data (before any training).
          RunFolderError: no room or no write access for the checkpoints.
          train.DivergedError: the loss went NaN/inf; the last finite state is saved
            as ``diverged_last_finite.npz`` and the earlier checkpoints are kept.
        """
        if "steps" in fit_kwargs or "eval_every" in fit_kwargs:
            raise TypeError("Run.fit counts epochs: its checkpoints, resume and "
                            "metrics.jsonl rows are per epoch, so it takes epochs=, not "
                            "train.fit's steps= / eval_every=; fix: epochs=ceil(steps / "
                            "steps_per_epoch), or call train.fit(steps=...) without the run")
        for bad in ("on_chunk", "epochs_per_call"):
            if bad in fit_kwargs:
                raise TypeError(f"Run.fit: {bad} is set by the run (checkpoint every "
                                f"{self.checkpoint_every} epoch(s)); pass checkpoint_every to "
                                "experiment.main instead, or call train.fit with run.on_chunk")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"Run.fit: epochs must be a positive int; got {epochs!r}")
        mesh = fit_kwargs.get("mesh")
        across = isinstance(mesh, jax.sharding.Mesh) and distributed.spans_processes(mesh)
        done = False
        # With several processes, process 0's folder checks stop every process.
        with distributed.checked_together("Run.fit", across) as agree:
            check_dataset(x, y)
            if validation_data is not None:
                if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                    raise TypeError("Run.fit: validation_data must be a pair (x_val, y_val); "
                                    f"got {type(validation_data).__name__}"
                                    + (f" of length {len(validation_data)}"
                                       if hasattr(validation_data, "__len__") else ""))
                check_dataset(*validation_data)
            if mesh is not None:
                self.layout = distributed.layout(mesh)
                self._record_layout()
            state = self.resume_state(state)
            if self.epoch:
                self._check_layout()
            agree.same("the run folder as this process sees it",
                       ((self.dir / "config.json").is_file(), self.epoch),
                       f"every process must see the same run folder {self.dir}, on a file "
                       "system shared by all processes (config.json there, and the epoch "
                       "to resume from)")
            if self.epoch > epochs:
                raise ExperimentError(f"the run folder {self.dir} holds a checkpoint at "
                                      f"epoch {self.epoch}, past the {epochs} epochs asked "
                                      "for; fix: --restart, or ask for more epochs")
            self.total_epochs = int(epochs)
            self._epoch_metrics = epoch_metrics
            if self.epoch == epochs:
                if self.verbose:
                    print(f"{self.name}: all {epochs} epochs already done in {self.dir}")
                done = True
            else:
                self._check_space(state)
        if done:
            return state, self.history()
        self._last_time = time.perf_counter()
        try:
            state, _ = train.fit(model, loss, optimizer, state, x, y, epochs=epochs - self.epoch,
                                 batch_size=batch_size, validation_data=validation_data,
                                 epochs_per_call=self.checkpoint_every, on_chunk=self.on_chunk,
                                 **fit_kwargs)
        except train.DivergedError as e:
            # e.epoch and e.step count from the start of the run: train.fit numbers
            # epochs by state.step, which a resumed state carries on.
            last_good = self.latest_checkpoint()
            path = checkpoint.save(self.dir / "diverged_last_finite.npz", e.state,
                                   metadata={"config_hash": self.hash, "epoch": e.epoch,
                                             "step_in_epoch": e.step,
                                             "step": _step_of(e.state)})
            self.diverged = {"epoch": e.epoch, "step_in_epoch": e.step,
                             "last_good_checkpoint": None if last_good is None else str(last_good),
                             "last_finite_state": str(path)}
            e.args = (f"{e.args[0]} [run folder {self.dir}: last good checkpoint "
                      f"{self.diverged['last_good_checkpoint']}, last finite state {path}]",)
            raise
        distributed.barrier("funcnn.Run.fit done")  # process 0 has logged it all
        history = self.history()
        if table := diagnostics.table(history):  # fit(..., diagnostics=[...]) was asked
            _write_atomic(self.path("diagnostics.md"),
                          f"# Diagnostics per layer: {self.name}\n\n{table}\n")
        return state, history


def _row_values(metrics: Any, where: str) -> dict[str, Any]:
    """``metrics`` as the values of a metrics line, or a clear error naming the bad one."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{where}: expected a dict of metrics {{name: number}}; got "
                        f"{type(metrics).__name__}")
    row = {}
    for k, v in metrics.items():
        if not isinstance(k, str) or k == "epoch":
            raise ValueError(f"{where}: metric names must be strings other than 'epoch'; "
                             f"got {k!r}")
        try:
            row[k] = _log_value(v, k)
        except TypeError as e:
            raise TypeError(f"{where}: {e}") from None
    return row


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _step_of(state: Any) -> int | None:
    step = getattr(state, "step", None)
    try:
        return None if step is None else int(step)
    except (TypeError, ValueError):
        return None


def _format_line(epoch: int, total: int | None, row: Mapping[str, Any]) -> str:
    parts = [f"epoch {epoch}" + (f"/{total}" if total else "")]
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if row.get(k) is not None:
            parts.append(f"{k} {row[k]:.4f}")
    for k, v in row.items():
        if k not in ("loss", "accuracy", "val_loss", "val_accuracy", "data_loss", "step",
                     "learning_rate", "epoch_s") and isinstance(v, float):
            parts.append(f"{k} {v:.4f}")
    return ", ".join(parts) + f" ({row['epoch_s']:.2f} s/epoch)"
