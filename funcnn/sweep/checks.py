"""Checking a sweep's inputs: factory parameters, swept names, and their values."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from funcnn import optim

from ._common import _py
from .execute import PENALTY_NAMES, SEED
from .space import Space


def _factory_names(fn: Callable, what: str) -> tuple[list[str], list[str]]:
    """``(all keyword-capable parameter names, those without defaults)`` of a factory."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise TypeError(f"sweep.run: cannot read the parameters of the {what} factory "
                        f"{fn!r}; pass a plain function") from None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = [p for p in sig.parameters.values() if p.kind in kinds]
    return [p.name for p in params], [p.name for p in params if p.default is p.empty]


# The numbers of funcnn's schedules, to point a swept learning_rate at them.
_SCHEDULE_NUMBERS = {"init_value", "peak_value", "end_value", "decay_rate", "boundaries",
                     "values"}
# fit / sweep.run arguments that are not per-configuration values.
_FIT_ARGUMENTS = {"epochs", "steps", "batch_size", "shuffle", "eval_every"}


def _check_names(space: Space, hp0: dict, model_args: list, penalty_args: list,
                 builtin_penalty: bool) -> None:
    known = {**{n: "optimizer hyperparameter" for n in hp0}, SEED: "initialization seed",
             **{n: "model factory argument" for n in model_args},
             **{n: "penalty factory argument" for n in penalty_args}}
    if builtin_penalty:
        known.update({n: "penalty strength" for n in PENALTY_NAMES})
    for name in space.names:
        if name in known:
            continue
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        schedule = sorted(n for n in hp0 if n.split("/")[-1] in _SCHEDULE_NUMBERS)
        if name == "learning_rate" and schedule:
            hint = (f" The learning rate is a schedule here: sweep its numbers, "
                    f"{schedule}.")
        elif name in _FIT_ARGUMENTS:
            hint = (f" {name} is sweep.run's own argument, the same for every configuration "
                    "(one sweep.run per value to compare them).")
        elif name == "weight_decay":
            hint = (" This optimizer has no weight decay: use optim.adamw(learning_rate, "
                    "weight_decay=...) and sweep 'weight_decay', or sweep an L2 penalty "
                    "('l2').")
        if any("/" in n for n in hp0):
            hint += (" (A name 'i/x' is x of the i-th link of the optimizer's chain, counted "
                     "from 0; optim.hyperparams(optimizer.init(params)) lists them with "
                     "their values.)")
        if name in PENALTY_NAMES:
            hint += (" (Penalty names apply when penalty=None; with a penalty factory, "
                     "sweep its arguments.)")
        raise ValueError(
            f"sweep.run: unknown name {name!r} in the space.{hint} Names this sweep can "
            f"vary: optimizer hyperparameters {sorted(hp0)}; {SEED!r}"
            + (f"; penalty strengths {list(PENALTY_NAMES)}" if builtin_penalty else "")
            + (f"; model factory arguments {model_args}" if model_args else "")
            + (f"; penalty factory arguments {penalty_args}" if penalty_args else "")
            + ". (A dropout rate is swept through a model factory: pass "
            "model=lambda dropout_rate: nn.serial(..., nn.dropout(dropout_rate), ...).)")


def _check_shape(name: str, col: np.ndarray, shape: tuple, what: str) -> None:
    if col.shape[1:] != tuple(shape):
        want = (len(col),) + tuple(shape)
        raise ValueError(
            f"sweep.run: {name} ({what}) needs one value of shape {tuple(shape)} per "
            f"configuration, i.e. values of shape {want}; got {col.shape}. Fix: give "
            f"{name} as a flat list of numbers" if shape == () else
            f"sweep.run: {name} ({what}) needs values of shape {want}; got {col.shape}")


def _unique_rows(cols: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for i in range(len(next(iter(cols.values())))):
        row = {k: v[i] for k, v in cols.items()}
        key = tuple((k, np.asarray(v).tobytes()) for k, v in row.items())
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _checked_columns(space: Space, hparam_names, hp0, opt_state0, pen_names,
                     dtype) -> dict[str, np.ndarray]:
    """Each swept column checked (shape, range) and cast to the dtype training uses."""
    where = "sweep.run"
    names = space.names
    cols = {}
    for name in names:
        col = space.columns[name]
        if name in hparam_names:
            _check_shape(name, col, hp0[name].shape, "optimizer hyperparameter")
            for v in np.unique(col.reshape(len(col), -1), axis=0):
                try:
                    optim.set_hyperparams(opt_state0, **{name: v.reshape(hp0[name].shape)})
                except (ValueError, TypeError) as e:
                    raise ValueError(f"{where}: {name}={_py(v.reshape(hp0[name].shape))!r} "
                                     f"is not a valid value: {e}") from None
            cols[name] = _cast(name, col, dtype, where)
        elif name == SEED:
            _check_shape(name, col, (), "initialization seed")
            if not np.all(np.isfinite(col)) or np.any(col != np.round(col)) or \
                    np.any(col < 0) or np.any(col >= 2**31):
                raise ValueError(f"{where}: seed values must be integers in [0, 2**31); "
                                 f"got {col.tolist()}")
            cols[name] = np.asarray(col, np.int32)
        else:
            what = "penalty strength" if name in pen_names else "factory argument"
            _check_shape(name, col, (), what)
            if name in pen_names and not (np.all(np.isfinite(col)) and np.all(col >= 0)):
                raise ValueError(f"{where}: {name} (a penalty strength) must be finite and "
                                 f">= 0; got {col.tolist()}")
            cols[name] = np.asarray(col, dtype)
    return cols


def _cast(name: str, col: np.ndarray, dtype: Any, where: str) -> np.ndarray:
    """``col`` in the parameters' ``dtype``; a finite value that would become inf (or a
    nonzero one that would become 0) there is an error, not a silent change."""
    with np.errstate(over="ignore", under="ignore"):
        out = np.asarray(col, dtype)
    src = np.asarray(col, np.float64)
    lost = (np.isfinite(src) & ~np.isfinite(out)) | ((src != 0) & (out == 0))
    if np.any(lost):
        v = float(src[lost].reshape(-1)[0])
        raise ValueError(f"{where}: {name}={v:g} cannot be held in the parameters' "
                         f"{np.dtype(dtype).name} (it would become {out[lost].reshape(-1)[0]}); "
                         "use a value in range, or float64 parameters (dtype=jnp.float64 "
                         "with jax_enable_x64)")
    return out
