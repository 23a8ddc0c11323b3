"""The command line: :func:`main` parses flags into a config and runs or checks it."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from funcnn import checkpoint

from .config import _check_config_cls, _coerce, _hints, _is_hashed, build_parser, config_hash
from .execution import _run_folder, execute
from .repro import check_repro
from .results import collect, results_table
from .run import Run


def main(name: str, config_cls: type, run_fn: Callable[[Run], Any],
         argv: Sequence[str] | None = None, *, description: str | None = None,
         checkpoint_every: int = 1, keep: int = 3) -> Any:
    """Parse flags into a ``config_cls`` instance and run (or resume, or check) it.

    Returns what ``run_fn`` returns, the runs read back (:func:`collect`) with
    ``--results``, or a :class:`ReproReport` with ``--check-repro``
    (which is printed; when ``argv`` is None, i.e. a real command line, a mismatch
    exits with status 1). ``checkpoint_every`` epochs are compiled per call and
    checkpointed; it is part of the run's identity (hash).
    """
    _check_config_cls(config_cls, "main")
    if argv is not None and (isinstance(argv, (str, bytes))
                             or not all(isinstance(a, str) for a in argv)):
        raise TypeError(f"main: argv must be a list of strings, e.g. ['--lr', '0.1'] (or None "
                        f"for the command line); got {argv!r}")
    parser = build_parser(name, config_cls, description)
    # --results reads folders and needs no configuration (required fields may be unset)
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--results", action="store_true")
    listing.add_argument("--runs-dir", default="runs")
    wanted, _ = listing.parse_known_args(argv)
    if wanted.results:
        records = collect(name, wanted.runs_dir)
        print(results_table(records) or f"no runs of {name!r} yet", flush=True)
        return records
    args = vars(parser.parse_args(argv))
    field_names = {f.name for f in dataclasses.fields(config_cls)}
    given = {k: v for k, v in args.items() if k in field_names}
    hints = _hints(config_cls)
    given = {k: _coerce(hints[k], v) for k, v in given.items()}
    try:
        config = config_cls(**given)
        config_hash(name, config, args["seed"], checkpoint_every)  # storable (finite)
    except (TypeError, ValueError) as e:
        parser.error(f"bad configuration: {e}")
    if not 0 <= args["repro_rtol"] < float("inf"):
        parser.error(f"--repro-rtol must be a finite number >= 0, got {args['repro_rtol']}")
    command = [sys.executable, *sys.argv] if argv is None else [name, *argv]
    if args["check_repro"] is None:
        try:
            return execute(name, config, run_fn, seed=args["seed"], runs_dir=args["runs_dir"],
                           checkpoint_every=checkpoint_every, keep=keep,
                           restart=args["restart"], plots=not args["no_plots"],
                           command=command)
        except KeyboardInterrupt:
            if argv is not None:  # called from Python: the caller decides
                raise
            # Ctrl-C on the command line: one line on how to go on, not a traceback
            # from wherever XLA happened to be.
            folder = _run_folder(args["runs_dir"], name,
                                 config_hash(name, config, args["seed"], checkpoint_every))
            saved = checkpoint.steps(folder / "checkpoints")
            kept = (f"its checkpoints up to epoch {saved[0][0]} are" if saved
                    else "its folder is")
            again = ("the same command without --restart" if args["restart"]
                     else "the same command again")
            print(f"\n{name}: interrupted; {kept} kept in {folder}: run {again} to resume",
                  file=sys.stderr, flush=True)
            raise SystemExit(130) from None
    if args["check_repro"]:
        run_dir = Path(args["check_repro"])
        unhashed = {f.name for f in dataclasses.fields(config_cls) if not _is_hashed(f)}
        overrides = {k: v for k, v in given.items() if k in unhashed}
    else:
        run_dir = _run_folder(args["runs_dir"], name,
                              config_hash(name, config, args["seed"], checkpoint_every))
        overrides = dict(given)
    report = check_repro(run_dir, config_cls, run_fn, overrides=overrides,
                         rtol=args["repro_rtol"], keep=keep, verbose=True)
    print(report, flush=True)
    if argv is None and not report.match:
        raise SystemExit(1)
    return report
