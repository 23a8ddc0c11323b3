"""Shared timing helpers for the scripts in ``benchmarks/``.

Import from a benchmark script run as ``python benchmarks/bench_x.py`` (the script's
directory is then on ``sys.path``)::

    from _timing import median_time, interleaved_times, env_line, print_table

JAX dispatches asynchronously, so every timed call is followed by
``jax.block_until_ready`` on its result: a time is the latency of one finished call,
dispatch included. Times are medians, which a few slow outliers on a noisy machine
(other processes, frequency changes) do not move.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from funcnn import _markdown

__all__ = ["median_time", "interleaved_times", "calibrate_number", "env_line",
           "print_table", "format_table"]


def _run(fn: Callable[[], Any], number: int) -> float:
    """Seconds per call of ``number`` calls of ``fn``, each waited for."""
    t0 = time.perf_counter()
    for _ in range(number):
        jax.block_until_ready(fn())
    return (time.perf_counter() - t0) / number


def calibrate_number(fn: Callable[[], Any], *, target_s: float = 2e-3,
                     max_number: int = 10_000) -> int:
    """How many calls of ``fn`` take about ``target_s`` (at least 1).

    Grouping fast calls keeps ``perf_counter``'s own cost and resolution out of the
    measurement; ``fn`` should already be warm (compiled).
    """
    per_call = min(_run(fn, 1) for _ in range(3))
    return int(max(1, min(max_number, round(target_s / max(per_call, 1e-9)))))


def median_time(fn: Callable[[], Any], *, warmup: int = 3, repeat: int = 50,
                number: int | None = None) -> float:
    """Median seconds per call of ``fn()`` (no arguments; wrap with a lambda).

    ``warmup`` untimed calls first (the first one compiles a jitted function), then
    ``repeat`` timings of ``number`` back-to-back calls each; returns the median over the
    repeats of the mean per call. ``number=None`` picks it so a repeat takes ~2 ms.
    """
    if repeat < 1:
        raise ValueError(f"median_time: repeat must be >= 1; got {repeat}")
    for _ in range(warmup):
        jax.block_until_ready(fn())
    if number is None:
        number = calibrate_number(fn)
    return statistics.median(_run(fn, number) for _ in range(repeat))


def interleaved_times(fns: Mapping[str, Callable[[], Any]], *, warmup: int = 3,
                      repeat: int = 50, number: int | None = None
                      ) -> dict[str, np.ndarray]:
    """Per-call seconds of several contenders, timed in turn: A B, B A, A B, ...

    Alternating the contenders within each round, and reversing their order every
    other round, spreads slow drift (thermal, other processes) evenly over them, and
    lets a caller compare round by round (``times["a"] / times["b"]``, paired).
    Returns, per name, an array of ``repeat`` per-call times in seconds (take
    ``np.median``). ``number=None`` calibrates one common ``number`` from the slowest
    contender so that its repeat takes ~2 ms.
    """
    names = list(fns)
    if not names:
        return {}
    for name in names:
        for _ in range(warmup):
            jax.block_until_ready(fns[name]())
    if number is None:
        number = min(calibrate_number(fns[name]) for name in names)
    out = {name: np.empty(repeat) for name in names}
    for r in range(repeat):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            out[name][r] = _run(fns[name], number)
    return out


def env_line() -> str:
    """One line describing where the numbers came from, for RESULTS.md."""
    import jaxlib

    dev = jax.devices()[0]
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"{now} | python {platform.python_version()} | jax {jax.__version__} | "
            f"jaxlib {jaxlib.__version__} | numpy {np.__version__} | backend "
            f"{jax.default_backend()} | device {dev.device_kind} x{jax.device_count()} | "
            f"CPUs {usable} usable of {os.cpu_count()} | {platform.machine()}")


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A Markdown (GitHub) table (``funcnn._markdown.table``); numbers formatted by
    ``_fmt``, numeric columns right-aligned."""
    return _markdown.table(headers, [[_fmt(c) for c in row] for row in rows])


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Prints :func:`format_table` (ready to paste into RESULTS.md) and returns it."""
    table = format_table(rows, headers)
    print(table, flush=True)
    return table


def _fmt(c: Any) -> str:
    if isinstance(c, (float, np.floating)):
        return f"{c:.3g}" if abs(c) < 1e-2 or abs(c) >= 1e5 else f"{c:.2f}"
    return str(c)
