"""``--check-repro``: rerun a recorded run from scratch and compare.

The rerun goes to ``<run folder>/repro/``; every metric but the timings, every
result, and the final checkpoint's bytes are compared (``rtol=0``: exactly). The
report names both runs' layouts (process count and mesh): bitwise equality is
expected of the same layout only.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from funcnn import checkpoint, distributed

from .config import config_from_json, config_hash
from .errors import ExperimentError
from .execution import _execute_in
from .files import TIMING_KEYS, _read_json, read_metrics
from .run import Run, _is_key


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
    layouts: tuple[dict | None, dict | None] = (None, None)  # recorded, rerun

    @property
    def same_layout(self) -> bool:
        """Whether both runs had the same process count and mesh (what sets the order
        in which data-parallel sums add)."""
        return distributed.layout_key(self.layouts[0]) == \
            distributed.layout_key(self.layouts[1])

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
        rec, new = (_shown_layout(v) for v in self.layouts)
        if self.same_layout:
            lines.append(f"  layout: {rec} (the same in both runs)")
        else:
            lines.append(f"  layout DIFFERS: recorded {rec}, rerun {new}; over another mesh "
                         "the batch sums add in another order, so expect float-rounding "
                         "differences rather than bitwise equality (rerun with the recorded "
                         "layout to check reproducibility)")
        lines.append("REPRODUCED" if self.match else "NOT REPRODUCED")
        return "\n".join(lines)


def _shown_layout(layout: dict | None) -> str:
    layout = layout or {}
    mesh = layout.get("mesh")
    return (f"{layout.get('process_count', 1)} process(es), "
            + (f"mesh {mesh}" if mesh else "no mesh"))


def _recorded_layout(folder: Path) -> dict | None:
    """The layout of the run recorded in ``folder``: its newest checkpoint's, or (no
    checkpoint) its manifest's."""
    found = checkpoint.steps(folder / "checkpoints")
    if found:
        try:
            layout = checkpoint.load_metadata(found[0][1]).get("layout")
        except checkpoint.CheckpointError:
            layout = None
        if isinstance(layout, dict):
            return layout
    path = folder / "manifest.json"
    try:
        layout = _read_json(path).get("layout") if path.is_file() else None
    except (ExperimentError, AttributeError):
        return None
    return layout if isinstance(layout, dict) else None


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
        found = checkpoint.steps(folder)
        return found[0][1] if found else None

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
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 <= rtol < math.inf:
        raise ValueError(f"check_repro: rtol must be a finite number >= 0 (0: bitwise), got "
                         f"{rtol!r}")
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise ExperimentError(f"no recorded run in {run_dir} (no config.json); run the "
                              "experiment first, then --check-repro")
    record = _read_json(cfg_path)
    need = {"name": str, "seed": int, "config_hash": str, "config": dict}
    bad = (list(need) if not isinstance(record, dict) else
           [k for k, t in need.items() if not isinstance(record.get(k), t)])
    if bad:
        raise ExperimentError(f"{cfg_path} is damaged or was not written by funcnn: "
                              f"{', '.join(bad)} missing or of the wrong type. Fix: run the "
                              "experiment again to record it, then --check-repro")
    config = config_from_json(config_cls, record["config"])
    if overrides:
        config = dataclasses.replace(config, **overrides)
    checkpoint_every = record.get("checkpoint_every", 1)
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) \
            or checkpoint_every < 1:
        raise ExperimentError(f"{cfg_path}: checkpoint_every is {checkpoint_every!r}, not a "
                              "positive int; the file is damaged. Fix: run the experiment again")
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
    if distributed.is_main():  # with several processes, process 0 writes
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
                       params_equal, rtol,
                       (_recorded_layout(run_dir), _recorded_layout(repro)))
