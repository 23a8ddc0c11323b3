"""Small helpers for checking inputs at the boundary (shared by every module)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def concrete(x: Any) -> np.ndarray | None:
    """``x`` as a numpy array when its value is known now, ``None`` inside a trace.

    Inside ``jit`` or ``vmap`` values are abstract tracers: only shapes and dtypes can be
    checked there, which is why funcnn checks values at its public boundary.
    """
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError,
            TypeError):
        return None
