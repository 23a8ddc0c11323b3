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
``--no-plots``, ``--check-repro`` and ``--repro-rtol``.

A run writes ``<runs-dir>/<name>/<config hash>/``, the hash covering the name, the
seed, ``checkpoint_every`` and every config field not marked ``hashed=False``:

* ``config.json``: name, hash, seed and every field's value;
* ``manifest.json``: funcnn, jax, jaxlib, numpy and Python versions, backend and
  device, git commit (when funcnn lives in a git checkout), command line, start and
  end time, status (running / completed / failed / diverged / interrupted), and the
  earlier attempts of the same run;
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

``--check-repro`` reruns a recorded run from scratch in ``<run folder>/repro/`` and
reports whether every metric (timings aside) and result matches, and whether the
final parameters are bitwise equal.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import errno
import hashlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from funcnn import checkpoint, train
from funcnn.data import check_dataset

__all__ = ["Run", "ReproReport", "RunFolderError", "ExperimentError", "main", "execute",
           "check_repro", "option", "config_hash", "config_to_json", "config_from_json",
           "build_parser", "read_metrics", "TIMING_KEYS"]

TIMING_KEYS = ("epoch_s",)  # metrics that measure the machine, not the run: never compared
_RESERVED = ("seed", "runs_dir", "restart", "no_plots", "check_repro", "repro_rtol", "help")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CKPT = re.compile(r"^ckpt_(\d+)\.npz$")
_PROBE_BYTES = 1 << 20


class ExperimentError(RuntimeError):
    """A run cannot start or continue as asked (the message says why and what to do)."""


class RunFolderError(OSError):
    """The run folder cannot be created or written, or its disk is too full."""


# --------------------------------------------------------------------------------------
# Configs: fields, flags, JSON and hash
# --------------------------------------------------------------------------------------

def option(default: Any = dataclasses.MISSING, *, help: str | None = None,
           hashed: bool = True) -> Any:
    """A config field with a flag help text; ``hashed=False`` keeps it out of the hash.

    Use ``hashed=False`` for settings that do not change the results (where the data
    lives, how much to print), so that they do not start a new run folder.
    """
    meta = {"help": help, "hashed": hashed}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _check_config_cls(config_cls: Any, where: str) -> None:
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"{where}: config_cls must be a dataclass class, got {config_cls!r}; "
                        "fix: decorate it with @dataclasses.dataclass")
    for f in dataclasses.fields(config_cls):
        if f.name in _RESERVED:
            raise ValueError(f"{where}: config field {f.name!r} clashes with a flag that "
                             f"experiment.main adds ({', '.join(_RESERVED)}); rename it "
                             "(the seed is passed apart from the config, as --seed)")


def _hints(config_cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(config_cls)
    except NameError as e:
        raise TypeError(f"cannot resolve the type annotations of {config_cls.__name__}: {e}; "
                        "fix: define the config class at module level") from None


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(tp)):
            return args[0], True
    return tp, False


def _scalar_parser(tp: Any, optional: bool) -> Callable[[str], Any]:
    if tp is bool:
        def parse(s: str) -> Any:
            low = s.lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")
    elif tp in (int, float, str, Path):
        parse = tp
    else:
        raise TypeError(f"unsupported config field type {tp!r}; use int, float, str, bool, "
                        "Path, Literal[...], tuple[X, ...], list[X] or X | None")
    if not optional:
        return parse

    def parse_optional(s: str) -> Any:
        return None if s.lower() == "none" else parse(s)
    parse_optional.__name__ = getattr(parse, "__name__", "value")
    return parse_optional


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any) -> None:
    """One flag for one config field, typed from its annotation."""
    flag = "--" + f.name.replace("_", "-")
    has_default = (f.default is not dataclasses.MISSING
                   or f.default_factory is not dataclasses.MISSING)
    default = (f.default if f.default is not dataclasses.MISSING else
               f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    help_text = f.metadata.get("help") or ""
    if has_default:
        help_text += f" (default: {default!r})"
    if f.metadata.get("hashed", True) is False:
        help_text += " [not part of the config hash]"
    kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text.strip(),
                              required=not has_default)
    inner, optional = _unwrap_optional(tp)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if inner is bool and not optional:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        return
    if origin is typing.Literal:
        kw["choices"] = list(args)
        kw["type"] = _scalar_parser(type(args[0]), optional)
        if optional:
            kw["choices"].append(None)
    elif origin in (tuple, list):
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            kw["nargs"], elem = "+", args[0]
        elif origin is list and len(args) == 1:
            kw["nargs"], elem = "+", args[0]
        elif origin is tuple and args:
            if len(set(args)) != 1:
                raise TypeError(f"config field {f.name}: tuples must hold one type, got {inner!r}")
            kw["nargs"], elem = len(args), args[0]
        else:
            raise TypeError(f"config field {f.name}: give the element type, e.g. tuple[int, ...]")
        kw["type"] = _scalar_parser(elem, False)
        kw["metavar"] = getattr(elem, "__name__", "X").upper()
    else:
        try:
            kw["type"] = _scalar_parser(inner, optional)
        except TypeError as e:
            raise TypeError(f"config field {f.name}: {e}") from None
    parser.add_argument(flag, **kw)


def _coerce(tp: Any, value: Any) -> Any:
    """A JSON value back into the field's type (lists into tuples, strings into Paths)."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        return None
    origin = typing.get_origin(inner)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(inner)
        elem = args[0] if args else None
        return tuple(_coerce(elem, v) if elem is not None else v for v in value)
    if origin is list and isinstance(value, list):
        return list(value)
    if inner is Path:
        return Path(value)
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"config value {value!r} of type {type(value).__name__} cannot be stored "
                    "in config.json; use numbers, strings, bools, paths, tuples or lists")


def config_to_json(config: Any) -> dict[str, Any]:
    """Every field of the config dataclass ``config`` as JSON values."""
    return {f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}


def config_from_json(config_cls: type, values: Mapping[str, Any]) -> Any:
    """The config dataclass from :func:`config_to_json`'s output (unknown keys refused)."""
    hints = _hints(config_cls)
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ExperimentError(f"recorded config has fields {unknown} that {config_cls.__name__} "
                              "lacks; the script changed since the run was recorded")
    return config_cls(**{k: _coerce(hints[k], v) for k, v in values.items()})


def _hashed_fields(config: Any) -> dict[str, Any]:
    full = config_to_json(config)
    return {f.name: full[f.name] for f in dataclasses.fields(config)
            if f.metadata.get("hashed", True) is not False}


def config_hash(name: str, config: Any, seed: int, checkpoint_every: int = 1) -> str:
    """12 hex digits of sha256 over the name, seed, ``checkpoint_every`` and hashed fields."""
    body = {"name": name, "seed": int(seed), "checkpoint_every": int(checkpoint_every),
            "config": _hashed_fields(config)}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def build_parser(name: str, config_cls: type, description: str | None = None
                 ) -> argparse.ArgumentParser:
    """The command-line parser: one flag per config field, plus the run flags."""
    _check_config_cls(config_cls, "build_parser")
    parser = argparse.ArgumentParser(prog=name, description=description)
    hints = _hints(config_cls)
    group = parser.add_argument_group("config")
    for f in dataclasses.fields(config_cls):
        _add_field(group, f, hints[f.name])
    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int, default=0, help="the run's PRNG seed (default: 0)")
    run.add_argument("--runs-dir", default="runs",
                     help="where run folders go: <runs-dir>/<name>/<config hash>/ (default: runs)")
    run.add_argument("--restart", action="store_true",
                     help="discard this configuration's checkpoints and metrics and start over")
    run.add_argument("--no-plots", action="store_true", help="do not write metrics.png")
    run.add_argument("--check-repro", nargs="?", const="", default=None, metavar="RUN_DIR",
                     help="rerun a recorded run (this configuration's, or the one in RUN_DIR) "
                          "and report whether its metrics match")
    run.add_argument("--repro-rtol", type=float, default=0.0,
                     help="relative tolerance for --check-repro (default 0: bitwise)")
    return parser


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExperimentError(f"cannot read {path}: {e}") from None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` as dicts, in order; a torn last line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            break  # a line cut short by a crash: it and anything after are not trusted
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            break
        rows.append(row)
    return rows


def _metric_value(v: Any) -> Any:
    """A metric as a JSON number; NaN and inf (no value) become null."""
    f = float(v)
    return f if math.isfinite(f) else None


def _result_value(v: Any) -> Any:
    """A result as JSON: numbers (NaN/inf -> null), arrays as lists, else as config values."""
    if isinstance(v, (jax.Array, np.ndarray)):
        arr = np.asarray(v)
        if arr.ndim == 0:
            return _metric_value(arr) if arr.dtype.kind in "fc" else arr.item()
        return [_result_value(x) for x in arr]
    if isinstance(v, (float, np.floating)):
        return _metric_value(v)
    return _jsonable(v)


def _probe(folder: Path, nbytes: int, what: str) -> None:
    """Write, fsync and delete a ``nbytes`` file in ``folder``; a clear error if we cannot."""
    tmp = folder / f".probe-{secrets.token_hex(4)}"
    try:
        with open(tmp, "wb") as f:
            block = b"\0" * min(nbytes, 1 << 20)
            left = nbytes
            while left > 0:
                f.write(block[:left])
                left -= len(block)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        hint = ("the disk is full: free some space or pass --runs-dir on another disk"
                if e.errno in (errno.ENOSPC, errno.EDQUOT) else
                "fix its permissions or pass --runs-dir with a writable folder")
        raise RunFolderError(e.errno, f"cannot write {what} to the run folder {folder}: "
                             f"{e.strerror or e}; {hint}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _git_commit(folder: Path) -> dict[str, Any] | None:
    """HEAD of the git checkout holding ``folder`` and whether tracked files changed.

    Read-only: ``--no-optional-locks`` keeps ``git status`` from touching the index.
    """
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "--no-optional-locks", "-C", str(folder), *args],
                                 capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _environment() -> dict[str, Any]:
    import importlib.metadata

    import funcnn

    try:
        jaxlib_version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        import jaxlib
        jaxlib_version = getattr(jaxlib, "__version__", None)
    devices = jax.devices()
    return {
        "versions": {"funcnn": funcnn.__version__, "jax": jax.__version__,
                     "jaxlib": jaxlib_version, "numpy": np.__version__,
                     "python": platform.python_version()},
        "backend": jax.default_backend(),
        "device": f"{devices[0].platform}:{devices[0].device_kind}",
        "device_count": len(devices),
        "x64": bool(jax.dtypes.canonicalize_dtype(np.float64) == np.float64),
        "platform": platform.platform(),
        "git": _git_commit(Path(funcnn.__file__).resolve().parent),
    }


@contextlib.contextmanager
def _lock(folder: Path):
    """Hold an exclusive lock on ``folder/.lock`` (POSIX; elsewhere a no-op)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ExperimentError(f"another process is running the run in {folder} (it holds "
                                  f"{folder / '.lock'}); wait for it to finish, or use another "
                                  "--runs-dir") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock; the kernel also releases it on SIGKILL


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------

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
    """

    def __init__(self, name: str, config: Any, seed: int, folder: Path, *,
                 checkpoint_every: int = 1, keep: int = 3, verbose: bool = True):
        self.name, self.config, self.seed, self.dir = name, config, int(seed), Path(folder)
        self.key = jax.random.key(self.seed)
        self.checkpoint_every, self.keep, self.verbose = checkpoint_every, keep, verbose
        self.hash = config_hash(name, config, seed, checkpoint_every)
        self.epoch = 0
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
        row = {"epoch": int(epoch)}
        for k, v in metrics.items():
            row[k] = v if isinstance(v, (int, str)) or v is None else _metric_value(v)
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
        results.update({k: _result_value(v) for k, v in values.items()})
        _write_json(path, results)

    def _truncate_metrics(self, epoch: int) -> None:
        rows = read_metrics(self.metrics_path)
        keep = [r for r in rows if r["epoch"] <= epoch]
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in keep)
        if not self.metrics_path.exists() or self.metrics_path.read_text(encoding="utf-8") != text:
            _write_atomic(self.metrics_path, text)

    # -- checkpoints -----------------------------------------------------------------------
    def _checkpoints(self) -> list[tuple[int, Path]]:
        if not self.checkpoint_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoint_dir.iterdir()
                 if (m := _CKPT.match(p.name)) and p.is_file()]
        return sorted(found, reverse=True)

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint file, or None."""
        found = self._checkpoints()
        return found[0][1] if found else None

    def resume_state(self, template: Any) -> Any:
        """The newest checkpoint loaded into ``template``'s structure, else ``template``.

        Sets :attr:`epoch` to the checkpoint's epoch and cuts ``metrics.jsonl`` back to
        it (lines written after the checkpoint came from work that is redone). A
        damaged checkpoint is skipped with a warning and the one before is used.
        """
        state, epoch = template, 0
        for ck_epoch, path in self._checkpoints():
            try:
                meta = checkpoint.load_metadata(path)
                state = checkpoint.load(path, template)
            except checkpoint.CheckpointError as e:
                try:
                    checkpoint.read(path)  # intact file: it does not fit the template
                except checkpoint.CheckpointError:
                    damaged = path.with_name(path.name + ".damaged")
                    print(f"warning: {e}; renamed to {damaged.name}, trying the one before",
                          file=sys.stderr)
                    path.replace(damaged)
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
            epoch = ck_epoch
            break
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
        meta = {"epoch": int(epoch), "config_hash": self.hash}
        step = _step_of(state)
        if step is not None:
            meta["step"] = step
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
        extra = dict(self._epoch_metrics(state)) if self._epoch_metrics is not None else {}
        for i in range(start, done):
            epoch = self._fit_start + i + 1
            row: dict[str, Any] = {}
            if steps_per_epoch is not None:
                row["step"] = self._last_step + (i - start + 1) * steps_per_epoch
            row.update({k: _metric_value(v[i]) for k, v in history.metrics.items()})
            if i == done - 1:
                row.update({k: v if isinstance(v, (int, str)) or v is None else
                            _metric_value(v) for k, v in extra.items()})
            row["epoch_s"] = round(per_epoch, 6)
            self.log_metrics(epoch, row)
            if self.verbose:
                print(_format_line(epoch, self.total_epochs, row), flush=True)
        epoch = self._fit_start + done
        self.save_checkpoint(epoch, state)
        self.epoch, self._last_step, self._last_time = epoch, step, time.perf_counter()

    def _check_space(self, state: Any) -> None:
        """Probe-write one checkpoint's worth of bytes and check room for ``keep + 1``."""
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
            x: Any, y: Any, *, epochs: int, batch_size: int | None = None,
            validation_data: tuple[Any, Any] | None = None,
            epoch_metrics: Callable[[train.TrainState], Mapping[str, Any]] | None = None,
            **fit_kwargs: Any) -> tuple[train.TrainState, train.History]:
        """``train.fit`` that resumes, checkpoints and logs; returns the state and the
        whole run's history (all epochs, including those of earlier attempts).

        ``state`` is the fresh state (from ``train.init_state``); it is replaced by
        the newest checkpoint when there is one, and only the remaining epochs are
        trained. ``epoch_metrics(state)`` may add metrics of your own (say, test
        accuracy under a loss whose built-in metric is not accuracy) to the last
        epoch of each checkpointed chunk. Other keyword arguments go to ``train.fit``.

        Raises:
          ValueError: NaN/inf or mismatched data (before any training).
          RunFolderError: no room or no write access for the checkpoints.
          train.DivergedError: the loss went NaN/inf; the last finite state is saved
            as ``diverged_last_finite.npz`` and the earlier checkpoints are kept.
        """
        for bad in ("on_chunk", "epochs_per_call"):
            if bad in fit_kwargs:
                raise TypeError(f"Run.fit: {bad} is set by the run (checkpoint every "
                                f"{self.checkpoint_every} epoch(s)); pass checkpoint_every to "
                                "experiment.main instead, or call train.fit with run.on_chunk")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"Run.fit: epochs must be a positive int; got {epochs!r}")
        check_dataset(x, y)
        if validation_data is not None:
            check_dataset(*validation_data)
        state = self.resume_state(state)
        if self.epoch > epochs:
            raise ExperimentError(f"the run folder {self.dir} holds a checkpoint at epoch "
                                  f"{self.epoch}, past the {epochs} epochs asked for; fix: "
                                  "--restart, or ask for more epochs")
        self.total_epochs = int(epochs)
        self._epoch_metrics = epoch_metrics
        if self.epoch == epochs:
            if self.verbose:
                print(f"{self.name}: all {epochs} epochs already done in {self.dir}")
            return state, self.history()
        self._check_space(state)
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
        return state, self.history()


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


# --------------------------------------------------------------------------------------
# Executing and checking runs
# --------------------------------------------------------------------------------------

def _run_folder(runs_dir: str | os.PathLike, name: str, digest: str) -> Path:
    return Path(runs_dir) / name / digest


def _prepare(folder: Path) -> None:
    """Create the run folder and probe-write it, with a clear error if we cannot."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(e.errno, f"cannot create the run folder {folder}: "
                             f"{e.strerror or e}; fix: pass --runs-dir with a folder you can "
                             "write to") from None
    if not folder.is_dir():
        raise RunFolderError(errno.ENOTDIR, f"the run folder {folder} is not a folder")
    _probe(folder, _PROBE_BYTES, "a probe file")


def _clean_tmp(folder: Path) -> None:
    """Remove temporary files that a killed process left behind (we hold the lock)."""
    for sub in (folder, folder / "checkpoints"):
        if sub.is_dir():
            for p in sub.iterdir():
                if p.name.startswith(".") and (p.name.endswith(".tmp")
                                               or p.name.startswith(".probe-")):
                    with contextlib.suppress(OSError):
                        p.unlink()


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
    _prepare(folder)
    with _lock(folder):
        _clean_tmp(folder)
        if restart:
            _discard(folder)
        run = Run(name, config, seed, folder, checkpoint_every=checkpoint_every, keep=keep,
                  verbose=verbose)
        record = {"name": name, "config_hash": run.hash, "seed": run.seed,
                  "checkpoint_every": checkpoint_every, "config": config_to_json(config),
                  "hashed_fields": sorted(_hashed_fields(config))}
        cfg_path = folder / "config.json"
        if cfg_path.is_file():
            old = _read_json(cfg_path)
            if old.get("config_hash") != run.hash:
                raise ExperimentError(f"{cfg_path} records config hash {old.get('config_hash')!r}"
                                      f", not {run.hash!r}; this folder belongs to another run")
        _write_json(cfg_path, record)
        man_path = folder / "manifest.json"
        attempts = []
        if man_path.is_file():
            old = _read_json(man_path)
            last = {k: old.get(k) for k in ("started", "ended", "status", "error", "command",
                                            "resumed_from_epoch", "epochs_done")}
            if last["status"] == "running":
                last["status"] = "killed (no end recorded)"
            attempts = old.get("attempts", []) + [last]
        manifest = {"name": name, "config_hash": run.hash, "seed": run.seed,
                    **_environment(),
                    "command": list(command) if command is not None else [sys.executable,
                                                                         *sys.argv],
                    "cwd": os.getcwd(), "started": _now(), "ended": None, "status": "running",
                    "resumed_from_epoch": None, "attempts": attempts}
        _write_json(man_path, manifest)
        if verbose:
            print(f"{name}: run folder {folder}")
        t0 = time.perf_counter()
        try:
            result = run_fn(run)
        except BaseException as e:
            status = ("diverged" if isinstance(e, train.DivergedError) else
                      "interrupted" if isinstance(e, KeyboardInterrupt) else "failed")
            manifest.update(status=status, ended=_now(), error=f"{type(e).__name__}: {e}",
                            elapsed_s=round(time.perf_counter() - t0, 3),
                            resumed_from_epoch=run.resumed_from, epochs_done=run.epoch)
            if run.diverged is not None:
                manifest["diverged"] = run.diverged
            with contextlib.suppress(OSError):
                _write_json(man_path, manifest)
            raise
        if plots:
            try:
                _plot(folder)
            except Exception as e:  # a plot is never worth losing a finished run
                print(f"warning: could not write metrics.png: {e}", file=sys.stderr)
        manifest.update(status="completed", ended=_now(), error=None,
                        elapsed_s=round(time.perf_counter() - t0, 3),
                        resumed_from_epoch=run.resumed_from, epochs_done=run.epoch)
        _write_json(man_path, manifest)
        return result


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
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) \
            or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be a positive int, got {keep!r}")
    folder = _run_folder(runs_dir, name, config_hash(name, config, seed, checkpoint_every))
    return _execute_in(folder, name, config, int(seed), run_fn,
                       checkpoint_every=checkpoint_every, keep=keep, restart=restart,
                       plots=plots, verbose=verbose, command=command)


@dataclasses.dataclass
class ReproReport:
    """What ``--check-repro`` found: ``match`` is True when every compared metric and
    result agrees (within ``rtol``) and the final parameters are equal."""

    recorded_dir: Path
    repro_dir: Path
    epochs_recorded: int
    epochs_rerun: int
    mismatches: list[str]
    max_abs_diff: dict[str, float]
    params_equal: bool | None
    rtol: float = 0.0

    @property
    def match(self) -> bool:
        return (not self.mismatches and self.epochs_recorded == self.epochs_rerun
                and self.params_equal is not False)

    def __str__(self) -> str:
        how = "bitwise" if self.rtol == 0 else f"within rtol {self.rtol:g}"
        lines = [f"check-repro of {self.recorded_dir} (rerun in {self.repro_dir}):",
                 f"  epochs: recorded {self.epochs_recorded}, rerun {self.epochs_rerun}",
                 f"  metrics and results {how}: "
                 + ("all match" if not self.mismatches else f"{len(self.mismatches)} differ")]
        lines += [f"    {m}" for m in self.mismatches[:20]]
        if len(self.mismatches) > 20:
            lines.append(f"    ... and {len(self.mismatches) - 20} more")
        if self.max_abs_diff:
            worst = ", ".join(f"{k} {v:.3g}" for k, v in sorted(self.max_abs_diff.items()))
            lines.append(f"  largest absolute differences: {worst}")
        lines.append("  final parameters: " + {True: "bitwise equal", False: "DIFFER",
                                                None: "not compared (no checkpoint)"}
                     [self.params_equal])
        lines.append("REPRODUCED" if self.match else "NOT REPRODUCED")
        return "\n".join(lines)


def _same(a: Any, b: Any, rtol: float) -> tuple[bool, float | None]:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        diff = abs(float(a) - float(b))
        return (a == b or diff <= rtol * max(abs(a), abs(b))), diff
    return a == b, None


def _compare_rows(recorded: list[dict], rerun: list[dict], rtol: float,
                  mismatches: list[str], max_diff: dict[str, float]) -> None:
    for old, new in zip(recorded, rerun):
        for k in sorted((set(old) | set(new)) - set(TIMING_KEYS)):
            ok, diff = _same(old.get(k), new.get(k), rtol)
            if diff is not None and k not in ("epoch", "step"):
                max_diff[k] = max(max_diff.get(k, 0.0), diff)
            if not ok:
                mismatches.append(f"epoch {old['epoch']}: {k} recorded {old.get(k)!r}, "
                                  f"rerun {new.get(k)!r}")


def _final_params_equal(a: Path, b: Path) -> bool | None:
    def newest(folder: Path) -> Path | None:
        found = [(int(m.group(1)), p) for p in folder.glob("ckpt_*.npz")
                 if (m := _CKPT.match(p.name))] if folder.is_dir() else []
        return max(found)[1] if found else None

    pa, pb = newest(a / "checkpoints"), newest(b / "checkpoints")
    if pa is None or pb is None:
        return None
    if pa.name != pb.name:
        return False
    ta, tb = checkpoint.read(pa), checkpoint.read(pb)
    if ta.keys() != tb.keys():
        return False
    for k in ta:
        x, y = ta[k], tb[k]
        if _is_key(x):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return True


def check_repro(run_dir: str | os.PathLike, config_cls: type, run_fn: Callable[[Run], Any], *,
                overrides: Mapping[str, Any] | None = None, rtol: float = 0.0,
                keep: int = 3, verbose: bool = False) -> ReproReport:
    """Rerun the run recorded in ``run_dir`` from scratch and compare.

    The rerun goes to ``run_dir/repro/`` (replaced each time) with the recorded name,
    seed and config; ``overrides`` may change fields outside the hash (``data_dir``).
    Every metric but the timings (:data:`TIMING_KEYS`), every result, and the final
    checkpoint's bytes are compared; ``rtol=0`` asks for exact equality.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise ExperimentError(f"no recorded run in {run_dir} (no config.json); run the "
                              "experiment first, then --check-repro")
    record = _read_json(cfg_path)
    config = config_from_json(config_cls, record["config"])
    if overrides:
        config = dataclasses.replace(config, **overrides)
    checkpoint_every = int(record.get("checkpoint_every", 1))
    if config_hash(record["name"], config, record["seed"], checkpoint_every) \
            != record["config_hash"]:
        raise ExperimentError(f"the recorded config in {cfg_path} does not hash to its "
                              f"recorded hash {record['config_hash']} with this script's "
                              "Config (did the script or the flags change a hashed field?)")
    recorded = read_metrics(run_dir / "metrics.jsonl")
    if not recorded:
        raise ExperimentError(f"{run_dir / 'metrics.jsonl'} holds no epochs to compare; "
                              "let the run train first")
    repro = run_dir / "repro"
    shutil.rmtree(repro, ignore_errors=True)
    _execute_in(repro, record["name"], config, record["seed"], run_fn,
                checkpoint_every=checkpoint_every, keep=keep, restart=False, plots=False,
                verbose=verbose, command=None)
    rerun = read_metrics(repro / "metrics.jsonl")
    mismatches: list[str] = []
    max_diff: dict[str, float] = {}
    _compare_rows(recorded, rerun, rtol, mismatches, max_diff)
    res_old = _read_json(run_dir / "results.json") if (run_dir / "results.json").is_file() else {}
    res_new = _read_json(repro / "results.json") if (repro / "results.json").is_file() else {}
    for k in sorted(set(res_old) | set(res_new)):
        ok, diff = _same(res_old.get(k), res_new.get(k), rtol)
        if diff is not None:
            max_diff[k] = max(max_diff.get(k, 0.0), diff)
        if not ok:
            mismatches.append(f"result {k}: recorded {res_old.get(k)!r}, rerun {res_new.get(k)!r}")
    params_equal = _final_params_equal(run_dir, repro) if len(recorded) == len(rerun) else None
    return ReproReport(run_dir, repro, len(recorded), len(rerun), mismatches, max_diff,
                       params_equal, rtol)


# --------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------

def main(name: str, config_cls: type, run_fn: Callable[[Run], Any],
         argv: Sequence[str] | None = None, *, description: str | None = None,
         checkpoint_every: int = 1, keep: int = 3) -> Any:
    """Parse flags into a ``config_cls`` instance and run (or resume, or check) it.

    Returns what ``run_fn`` returns, or a :class:`ReproReport` with ``--check-repro``
    (which is printed; when ``argv`` is None, i.e. a real command line, a mismatch
    exits with status 1). ``checkpoint_every`` epochs are compiled per call and
    checkpointed; it is part of the run's identity (hash).
    """
    _check_config_cls(config_cls, "main")
    parser = build_parser(name, config_cls, description)
    args = vars(parser.parse_args(argv))
    field_names = {f.name for f in dataclasses.fields(config_cls)}
    given = {k: v for k, v in args.items() if k in field_names}
    hints = _hints(config_cls)
    given = {k: _coerce(hints[k], v) for k, v in given.items()}
    try:
        config = config_cls(**given)
    except (TypeError, ValueError) as e:
        parser.error(f"bad configuration: {e}")
    command = [sys.executable, *sys.argv] if argv is None else [name, *argv]
    if args["check_repro"] is None:
        return execute(name, config, run_fn, seed=args["seed"], runs_dir=args["runs_dir"],
                       checkpoint_every=checkpoint_every, keep=keep, restart=args["restart"],
                       plots=not args["no_plots"], command=command)
    if args["check_repro"]:
        run_dir = Path(args["check_repro"])
        unhashed = {f.name for f in dataclasses.fields(config_cls)
                    if f.metadata.get("hashed", True) is False}
        overrides = {k: v for k, v in given.items() if k in unhashed}
    else:
        run_dir = _run_folder(args["runs_dir"], name,
                              config_hash(name, config, args["seed"], checkpoint_every))
        overrides = {k: v for k, v in given.items()}
    report = check_repro(run_dir, config_cls, run_fn, overrides=overrides,
                         rtol=args["repro_rtol"], keep=keep, verbose=True)
    print(report, flush=True)
    if argv is None and not report.match:
        raise SystemExit(1)
    return report
