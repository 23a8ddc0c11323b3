"""Files of a run folder: atomic writes, JSON and metrics, probes, manifest facts, the lock.

Every file is written through a temporary file and ``os.replace`` (then the folder
is fsynced), so a crash leaves the old file or the new one, never half of one;
:func:`_clean_tmp` removes the temporary files a killed process left behind.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import math
import os
import platform
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from funcnn._atomic import atomic_write

from .config import _jsonable
from .errors import ExperimentError, RunFolderError

TIMING_KEYS = ("epoch_s",)  # metrics that measure the machine, not the run: never compared
_PROBE_BYTES = 1 << 20


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    with atomic_write(path, what="run folder") as f:
        f.write(text.encode("utf-8"))


def _write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExperimentError(f"cannot read {path}: {e}") from None


def _read_record(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path`` (config.json, manifest.json), or None when the file is
    damaged (not JSON, or not an object): it is then renamed to ``<name>.damaged`` with
    a warning, and the caller writes a new one. A file that cannot be read at all
    (permissions) raises :class:`ExperimentError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ExperimentError(f"cannot read {path}: {e}") from None
    except ValueError as e:  # not UTF-8
        problem = str(e)
    else:
        try:
            record = json.loads(text)
            problem = "not a JSON object"
        except ValueError as e:
            record, problem = None, str(e)
        if isinstance(record, dict):
            return record
    aside = path.with_name(path.name + ".damaged")
    try:
        path.replace(aside)
    except OSError as e:
        raise ExperimentError(f"{path} is damaged ({problem}) and cannot be moved aside: {e}; "
                              "fix: delete it (funcnn writes a new one)") from None
    print(f"warning: {path} is damaged ({problem}); moved it to {aside.name} and writing a "
          "new one", file=sys.stderr)
    return None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` as dicts, in order; a torn last line is skipped.

    A line that is not a metrics row (a JSON object with an int ``epoch``) followed by
    more lines is damage, not a torn write: :class:`ExperimentError` names the line,
    rather than every later epoch being dropped in silence.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not (isinstance(row, dict) and isinstance(row.get("epoch"), int)
                and not isinstance(row.get("epoch"), bool)):
            if any(rest.strip() for rest in lines[i + 1:]):
                raise ExperimentError(
                    f"{path}: line {i + 1} of {len(lines)} is not a metrics row (a JSON object "
                    f"with an int \"epoch\"): {line[:80]!r}; the file is damaged. Fix: repair "
                    "or delete that line, or start the run over with --restart")
            break  # a line cut short by a crash: it is not trusted
        rows.append(row)
    return rows


def _metric_value(v: Any, name: str = "value") -> Any:
    """A metric as a JSON number; NaN and inf (no value) become null."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"metric {name!r} must be a number (or a 0-d array); got {v!r} of "
                        f"type {type(v).__name__}") from None
    return f if math.isfinite(f) else None


def _log_value(v: Any, name: str = "value") -> Any:
    """A value for a metrics line: ints, strings and None as they are, else a metric."""
    return v if isinstance(v, (int, str)) or v is None else _metric_value(v, name)


def _result_value(v: Any) -> Any:
    """A result as JSON: numbers (NaN/inf -> null), arrays and lists as lists, else as
    config values."""
    if isinstance(v, (jax.Array, np.ndarray)):
        arr = np.asarray(v)
        if arr.ndim == 0:
            return _metric_value(arr) if arr.dtype.kind in "fc" else arr.item()
        return [_result_value(x) for x in arr]
    if isinstance(v, (float, np.floating)):
        return _metric_value(v)
    if isinstance(v, (list, tuple)):
        return [_result_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _result_value(x) for k, x in v.items()}
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
