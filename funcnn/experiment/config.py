"""Configs: a dataclass's fields as flags, as JSON, and as the run's hash.

Every field becomes a flag typed from its annotation (``lr`` -> ``--lr``);
:func:`option` adds a help text and ``hashed=False`` for settings that do not change
the results. :func:`config_hash` names the run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExperimentError

# flags that build_parser adds beside the config's own (a field may not take their name)
_RESERVED = ("seed", "runs_dir", "restart", "no_plots", "check_repro", "repro_rtol", "results",
             "help")


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
    elif tp is float:
        def parse(s: str) -> Any:
            value = float(s)  # a ValueError reads "invalid float value" in argparse
            if not np.isfinite(value):
                raise argparse.ArgumentTypeError(f"expected a finite number, got {s!r}")
            return value
        parse.__name__ = "float"
    elif tp in (int, str, Path):
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
    if not _is_hashed(f):
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
        return _jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        raise ValueError(f"config value {value!r} is not a finite number, and config.json "
                         "(strict JSON, also hashed) cannot hold it; use a finite number, or "
                         "None for 'no value'")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"config value {value!r} of type {type(value).__name__} cannot be stored "
                    "in config.json; use numbers, strings, bools, paths, tuples or lists")


def config_to_json(config: Any) -> dict[str, Any]:
    """Every field of the config dataclass ``config`` as JSON values."""
    out = {}
    for f in dataclasses.fields(config):
        try:
            out[f.name] = _jsonable(getattr(config, f.name))
        except (TypeError, ValueError) as e:
            raise type(e)(f"config field {f.name}: {e}") from None
    return out


def config_from_json(config_cls: type, values: Mapping[str, Any]) -> Any:
    """The config dataclass from :func:`config_to_json`'s output (unknown keys refused)."""
    hints = _hints(config_cls)
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ExperimentError(f"recorded config has fields {unknown} that {config_cls.__name__} "
                              "lacks; the script changed since the run was recorded")
    try:
        return config_cls(**{k: _coerce(hints[k], v) for k, v in values.items()})
    except (TypeError, ValueError) as e:
        raise ExperimentError(f"recorded config does not fit {config_cls.__name__}: {e}; the "
                              "script changed since the run was recorded") from None


def _is_hashed(f: dataclasses.Field) -> bool:
    """False for a field declared with ``option(..., hashed=False)``."""
    return f.metadata.get("hashed", True) is not False


def _hashed_fields(config: Any) -> dict[str, Any]:
    full = config_to_json(config)
    return {f.name: full[f.name] for f in dataclasses.fields(config) if _is_hashed(f)}


def config_hash(name: str, config: Any, seed: int, checkpoint_every: int = 1) -> str:
    """12 hex digits of sha256 over the name, seed, ``checkpoint_every`` and hashed fields."""
    for what, v in (("seed", seed), ("checkpoint_every", checkpoint_every)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"config_hash: {what} must be an int, got {v!r}")
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
    run.add_argument("--results", action="store_true",
                     help="print every run of this experiment under --runs-dir (the config "
                          "fields that differ, seed, status, results) and exit")
    return parser
