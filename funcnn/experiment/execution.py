"""Executing a run: the run folder's lifecycle around the run function.

:func:`execute` names the folder by the config hash, creates and probe-writes it,
takes its lock, writes ``config.json`` and ``manifest.json`` (recording how the run
ended, also on error), calls the run function with a :class:`~.run.Run`, and draws
``metrics.png``. With several processes (``jax.distributed``) every process runs the
run function and process 0 alone writes the folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from funcnn import distributed, train

from .config import _hashed_fields, config_hash, config_to_json
from .errors import ExperimentError
from .files import (_clean_tmp, _environment, _lock, _now, _prepare, _read_json, _read_record,
                    _write_json, read_metrics)
from .run import Run

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _run_folder(runs_dir: str | os.PathLike, name: str, digest: str) -> Path:
    return Path(runs_dir) / name / digest


def _discard(folder: Path) -> None:
    """``--restart``: remove what earlier attempts trained (config and manifest stay)."""
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    for name in ("metrics.jsonl", "results.json", "diverged_last_finite.npz", "metrics.png"):
        (folder / name).unlink(missing_ok=True)


def _plot(folder: Path) -> None:
    """``metrics.png``: loss and accuracy per epoch (skipped without matplotlib)."""
    rows = read_metrics(folder / "metrics.jsonl")
    if not rows:
        return
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    axes = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    names = list(dict.fromkeys(k for r in rows for k in r))
    loss_keys = [k for k in names if k == "loss" or (k.endswith("_loss") and k != "data_loss")]
    acc_keys = [k for k in names if k.endswith("accuracy")]
    for ax, keys, title in ((axes[0], loss_keys, "loss"), (axes[1], acc_keys, "accuracy")):
        for k in keys:
            vals = [r[k] if isinstance(r.get(k), (int, float)) else np.nan for r in rows]
            if not np.all(np.isnan(vals)):
                ax.plot(epochs, vals, marker=".", label=k)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if ax.lines:
            ax.legend()
    tmp = folder / f".metrics.{secrets.token_hex(4)}.png"
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, folder / "metrics.png")
    finally:
        tmp.unlink(missing_ok=True)


def _execute_in(folder: Path, name: str, config: Any, seed: int, run_fn: Callable[[Run], Any],
                *, checkpoint_every: int, keep: int, restart: bool, plots: bool,
                verbose: bool, command: Sequence[str] | None) -> Any:
    main = distributed.is_main()  # with several processes, process 0 writes the folder
    with contextlib.ExitStack() as held:
        # Set up before anything trains; with several processes, process 0's errors
        # (no room, a locked folder) stop every process, and the others start only once
        # the folder is ready (checked_together's exchange is the barrier).
        with distributed.checked_together("experiment", jax.process_count() > 1):
            run = Run(name, config, seed, folder, checkpoint_every=checkpoint_every,
                      keep=keep, verbose=verbose and main)
            if main:
                _prepare(folder)
                held.enter_context(_lock(folder))
                _clean_tmp(folder)
                if restart:
                    _discard(folder)
                completed = None if restart else _completed_records(folder)
                manifest = _open_records(folder, name, config, run, checkpoint_every, command)
        if verbose and main:
            print(f"{name}: run folder {folder}")
        t0 = time.perf_counter()
        try:
            result = run_fn(run)
        except BaseException as e:
            if main:
                status = ("diverged" if isinstance(e, train.DivergedError) else
                          "interrupted" if isinstance(e, KeyboardInterrupt) else "failed")
                manifest.update(status=status, ended=_now(), error=f"{type(e).__name__}: {e}",
                                elapsed_s=round(time.perf_counter() - t0, 3),
                                resumed_from_epoch=run.resumed_from, epochs_done=run.epoch,
                                layout=run.layout)
                if run.diverged is not None:
                    manifest["diverged"] = run.diverged
                with contextlib.suppress(OSError):
                    # A completed run stays completed when this attempt changed nothing
                    # in its folder but config.json and the manifest (see _keep_completed).
                    if completed is not None and _fingerprint(folder) == completed[2]:
                        _keep_completed(folder, manifest, completed[0], completed[1])
                    else:
                        _write_json(folder / "manifest.json", manifest)
            raise
        if main:
            if plots:
                try:
                    _plot(folder)
                except Exception as e:  # a plot is never worth losing a finished run
                    print(f"warning: could not write metrics.png: {e}", file=sys.stderr)
            manifest.update(status="completed", ended=_now(), error=None,
                            elapsed_s=round(time.perf_counter() - t0, 3),
                            resumed_from_epoch=run.resumed_from, epochs_done=run.epoch,
                            layout=run.layout)
            _write_json(folder / "manifest.json", manifest)
    distributed.barrier("funcnn.experiment done")  # the folder is complete
    return result


# What the manifest keeps of each earlier attempt.
_ATTEMPT_KEYS = ("started", "ended", "status", "error", "command", "resumed_from_epoch",
                 "epochs_done", "layout")


def _fingerprint(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file a run writes in ``folder`` (all but
    config.json, the manifest, and hidden lock and temporary files)."""
    out = {}
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts) \
                and str(rel) not in ("config.json", "manifest.json"):
            st = path.stat()
            out[str(rel)] = (st.st_size, st.st_mtime_ns)
    return out


def _completed_records(folder: Path) -> tuple[dict, dict, dict] | None:
    """``(config record, manifest, fingerprint)`` of a run folder whose last attempt
    completed, else None. A later attempt that fails before writing anything (a moved
    data folder given in an unhashed field, Ctrl-C while compiling) must not make the
    completed run read as failed, nor its results as obtained with the failed attempt's
    unhashed values: :func:`_keep_completed` puts these back. An attempt that did write
    (trained further, logged results) is recorded as it ended."""
    cfg_path, man_path = folder / "config.json", folder / "manifest.json"
    if not (cfg_path.is_file() and man_path.is_file()):
        return None
    with contextlib.suppress(ExperimentError):  # unreadable: nothing to keep
        manifest, record = _read_json(man_path), _read_json(cfg_path)
        if isinstance(manifest, dict) and isinstance(record, dict) \
                and manifest.get("status") == "completed":
            return record, manifest, _fingerprint(folder)
    return None


def _keep_completed(folder: Path, failed: dict[str, Any], record: dict[str, Any],
                    manifest: dict[str, Any]) -> None:
    """After a failed attempt on a completed run: its ``config.json`` and manifest as
    the completed attempt left them, the failed attempt (with its unhashed config
    values) added to the manifest's ``attempts``."""
    attempt = {k: failed.get(k) for k in _ATTEMPT_KEYS}
    cfg = folder / "config.json"
    now = _read_record(cfg) if cfg.is_file() else None
    if now is not None and now.get("config") != record.get("config"):
        attempt["config"] = now.get("config")
    earlier = manifest.get("attempts")
    manifest = {**manifest, "attempts": (earlier if isinstance(earlier, list) else [])
                + [attempt]}
    _write_json(cfg, record)
    _write_json(folder / "manifest.json", manifest)


def _open_records(folder: Path, name: str, config: Any, run: Run, checkpoint_every: int,
                  command: Sequence[str] | None) -> dict[str, Any]:
    """Writes ``config.json`` (checking that the folder is this run's) and the
    manifest of a new attempt (keeping the earlier attempts'); returns the manifest."""
    record = {"name": name, "config_hash": run.hash, "seed": run.seed,
              "checkpoint_every": checkpoint_every, "config": config_to_json(config),
              "hashed_fields": sorted(_hashed_fields(config))}
    cfg_path = folder / "config.json"
    old = _read_record(cfg_path) if cfg_path.is_file() else None
    if old is not None:
        if old.get("config_hash") != run.hash:
            raise ExperimentError(f"{cfg_path} records config hash {old.get('config_hash')!r}"
                                  f", not {run.hash!r}; this folder belongs to another run")
    _write_json(cfg_path, record)
    man_path = folder / "manifest.json"
    attempts = []
    old = _read_record(man_path) if man_path.is_file() else None
    if old is not None:
        last = {k: old.get(k) for k in _ATTEMPT_KEYS}
        if last["status"] == "running":
            last["status"] = "killed (no end recorded)"
        earlier = old.get("attempts")
        attempts = (earlier if isinstance(earlier, list) else []) + [last]
        # by start time (ISO 8601 UTC strings sort so): a completed attempt kept in
        # place by _keep_completed follows the failed ones recorded after it
        attempts.sort(key=lambda a: str(a.get("started")) if isinstance(a, dict) else "")
    manifest = {"name": name, "config_hash": run.hash, "seed": run.seed,
                **_environment(), "layout": run.layout,
                "command": list(command) if command is not None else [sys.executable,
                                                                     *sys.argv],
                "cwd": os.getcwd(), "started": _now(), "ended": None, "status": "running",
                "resumed_from_epoch": None, "attempts": attempts}
    _write_json(man_path, manifest)
    return manifest


def execute(name: str, config: Any, run_fn: Callable[[Run], Any], *, seed: int = 0,
            runs_dir: str | os.PathLike = "runs", checkpoint_every: int = 1, keep: int = 3,
            restart: bool = False, plots: bool = True, verbose: bool = True,
            command: Sequence[str] | None = None) -> Any:
    """Run (or resume) ``run_fn`` for ``config`` and ``seed``; returns what it returns.

    This is :func:`main` without the command line. The run folder is
    ``runs_dir/name/config_hash(...)``; it is created and probe-written before
    ``run_fn`` starts, and ``manifest.json`` records how the run ended, also on error.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"experiment name must be letters, digits, '_', '.', '-' (a folder "
                         f"name); got {name!r}")
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config must be a dataclass instance, got {config!r}")
    if not callable(run_fn):
        raise TypeError(f"run_fn must be a function taking the experiment.Run, got {run_fn!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not -2**63 <= seed < 2**64:
        raise ValueError(f"seed must fit in 64 bits (jax.random.key's range), got {seed}")
    if not isinstance(runs_dir, (str, os.PathLike)):
        raise TypeError(f"runs_dir must be a folder path (str or Path), got {runs_dir!r}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) \
            or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be a positive int, got {keep!r}")
    folder = _run_folder(runs_dir, name, config_hash(name, config, seed, checkpoint_every))
    return _execute_in(folder, name, config, int(seed), run_fn,
                       checkpoint_every=checkpoint_every, keep=keep, restart=restart,
                       plots=plots, verbose=verbose, command=command)
