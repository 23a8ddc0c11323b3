"""Small helpers shared by the sweep modules: numpy values as Python, metric lookup."""

from __future__ import annotations

from typing import Any

import numpy as np


def _py(v: Any) -> Any:
    """A numpy value as a plain Python value (NaN/inf kept)."""
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


def _check_metric(history: dict[str, np.ndarray], metric: str, where: str = "") -> None:
    """Raises ValueError when ``metric`` is not in ``history`` (``where``: the prefix)."""
    if metric not in history:
        raise ValueError(f"{where + ': ' if where else ''}unknown metric {metric!r}; the "
                         f"history has {sorted(history)}")
