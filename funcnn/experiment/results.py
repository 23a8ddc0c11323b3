"""Reading an experiment's run folders back: every configuration and seed with its results.

A run folder holds one configuration and one seed. Comparing seeds (Nielsen reports the
best of three) or configurations means reading many of them: :func:`collect` reads
every folder of an experiment under a runs directory, and :func:`results_table` lays
them out side by side, one row per run, with the config fields that differ between
the runs, the seed, the status and every result. The command line's ``--results``
flag prints that table.

Only files are read (``config.json``, ``manifest.json``, ``results.json``); nothing is
changed, so it is safe while runs are still going. A folder whose ``config.json`` is
missing or not JSON is not a run (it is left out, with a warning).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from funcnn import _markdown

from .errors import ExperimentError


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run folder, as read back.

    ``config``: every field's value (``config.json``); ``status``: the manifest's
    (``running``, ``completed``, ``failed``, ``diverged``, ``interrupted``, ...;
    ``unknown`` without a readable manifest); ``epochs_done``: the epochs in
    ``metrics.jsonl`` (None without one); ``results``: what the run logged with
    ``Run.log_result`` (empty before it logged anything).
    """

    folder: Path
    seed: int
    config: dict[str, Any]
    status: str
    epochs_done: int | None
    results: dict[str, Any]


def _json_object(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _epochs_logged(folder: Path) -> int | None:
    """Lines in ``metrics.jsonl`` (one per epoch logged; up to date while a run goes)."""
    try:
        with open(folder / "metrics.jsonl", "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return None


def collect(name: str, runs_dir: str | os.PathLike = "runs") -> list[RunRecord]:
    """Every run of experiment ``name`` under ``runs_dir`` (``<runs_dir>/<name>/*/``),
    sorted by configuration, then seed.

    Raises :class:`ExperimentError` when ``<runs_dir>/<name>`` is not a folder (the
    message lists the experiments that are there).
    """
    root = Path(runs_dir) / name
    if not root.is_dir():
        there = sorted(p.name for p in Path(runs_dir).iterdir() if p.is_dir()) \
            if Path(runs_dir).is_dir() else []
        raise ExperimentError(
            f"no runs of {name!r} in {root}" + (f"; experiments there: {', '.join(there)}"
                                                if there else "; the folder does not exist")
            + "; fix: pass the --runs-dir the runs were written to")
    records = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        config = _json_object(folder / "config.json")
        if config is None or not isinstance(config.get("config"), dict):
            print(f"warning: {folder} has no readable config.json (not a run, or one just "
                  "starting); left out", file=sys.stderr)
            continue
        seed = config.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            print(f"warning: {folder}/config.json has no integer seed ({seed!r}); left out",
                  file=sys.stderr)
            continue
        manifest = _json_object(folder / "manifest.json") or {}
        results = _json_object(folder / "results.json") or {}
        records.append(RunRecord(folder=folder, seed=seed,
                                 config=config["config"],
                                 status=str(manifest.get("status", "unknown")),
                                 epochs_done=_epochs_logged(folder), results=results))
    fields = sorted({k for r in records for k in r.config})
    return sorted(records, key=lambda r: ([_order(r.config.get(k)) for k in fields], r.seed))


def _order(value: Any) -> tuple:
    """A sort key that puts numbers in numeric order (8 before 16), then other values."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value if value == value else math.inf, "")
    return (1, 0, json.dumps(value, sort_keys=True, default=str))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def results_table(records: list[RunRecord]) -> str:
    """A markdown table, one row per run: the config fields whose values differ between
    the runs (all of them for a single run), the seed, status, epochs done and every
    result key any run logged. Empty string for no runs."""
    if not records:
        return ""
    fields = sorted({k for r in records for k in r.config})
    if len(records) > 1:
        fields = [k for k in fields
                  if len({json.dumps(r.config.get(k), default=str) for r in records}) > 1]
    keys = sorted({k for r in records for k in r.results})
    headers = [*fields, "seed", "status", "epochs done", *keys]
    rows = [[_cell(r.config.get(k)) for k in fields]
            + [str(r.seed), r.status, _cell(r.epochs_done)]
            + [_cell(r.results.get(k)) for k in keys] for r in records]
    return _markdown.table(headers, rows)
