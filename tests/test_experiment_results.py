"""funcnn.experiment.collect / results_table / --results: an experiment's run folders
read back side by side (seeds and configurations), without changing them."""

import dataclasses
import json
import re

import pytest

from funcnn import experiment


@dataclasses.dataclass(frozen=True)
class Config:
    width: int = 4
    lr: float = 0.1
    fail: bool = False
    note: str = experiment.option("x", help="not hashed", hashed=False)


def scored(r: experiment.Run):
    """No training: a result from the config and seed, two metric rows."""
    if r.config.fail:
        raise RuntimeError("this configuration fails on purpose")
    for epoch in (1, 2):
        r.log_metrics(epoch, {"loss": 1.0 / epoch})
    r.log_result(score=r.config.width * 10 + r.seed, best=r.config.lr)
    return r.seed


def _main(runs_dir, *flags):
    return experiment.main("scored", Config, scored, ["--runs-dir", str(runs_dir),
                                                      "--no-plots", *flags])


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    for width in ("4", "16", "8"):   # 16 sorts after 8 (by value, not as text)
        for seed in ("1", "0"):
            if width != "16" or seed == "0":
                _main(runs, "--width", width, "--seed", seed)
    with pytest.raises(RuntimeError, match="on purpose"):
        _main(runs, "--fail", "--seed", "5")
    damaged = runs / "scored" / "000000000000"
    damaged.mkdir()
    (damaged / "config.json").write_text("{not json")
    no_seed = runs / "scored" / "000000000001"
    no_seed.mkdir()
    (no_seed / "config.json").write_text(json.dumps({"config": {"width": 2}, "seed": None}))
    return runs


def test_collect_reads_every_run_sorted_by_config_then_seed(runs_dir, capsys):
    records = experiment.collect("scored", runs_dir)
    err = capsys.readouterr().err
    assert "000000000000 has no readable config.json" in err
    assert "000000000001/config.json has no integer seed (None)" in err
    done = [r for r in records if r.status == "completed"]
    assert [(r.config["width"], r.seed) for r in done] == [(4, 0), (4, 1), (8, 0), (8, 1),
                                                           (16, 0)]
    assert [r.results["score"] for r in done] == [40, 41, 80, 81, 160]
    assert all(r.epochs_done == 2 for r in done)
    (failed,) = [r for r in records if r.status != "completed"]
    assert failed.status == "failed" and failed.config["fail"] and failed.results == {}
    assert failed.seed == 5 and failed.folder.parent == runs_dir / "scored"
    # reading changed nothing: the damaged folder is still there, as it was
    assert (runs_dir / "scored" / "000000000000" / "config.json").read_text() == "{not json"


def test_results_table_shows_what_differs_and_every_result(runs_dir):
    records = experiment.collect("scored", runs_dir)
    lines = experiment.results_table(records).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    # lr and note are the same in every run: not shown; width and fail differ
    assert header == ["fail", "width", "seed", "status", "epochs done", "best", "score"]
    assert len(lines) == 2 + len(records)
    row = [c.strip() for c in lines[2].strip("|").split("|")]
    assert row == ["False", "4", "0", "completed", "2", "0.1", "40"]
    assert experiment.results_table([]) == ""
    one = experiment.results_table(records[:1]).splitlines()[0]
    assert "lr" in one and "note" in one  # a single run shows every field


def test_results_flag_prints_the_table_and_runs_nothing(runs_dir, capsys):
    before = sorted(p.name for p in (runs_dir / "scored").iterdir())
    records = _main(runs_dir, "--results")
    out = capsys.readouterr().out
    assert len(records) == 6
    assert out.strip() == experiment.results_table(records)
    assert re.search(r"\| +81 \|", out)
    assert sorted(p.name for p in (runs_dir / "scored").iterdir()) == before


@dataclasses.dataclass(frozen=True)
class NeedsWidth:
    width: int   # required: no default


def test_results_flag_needs_no_configuration(runs_dir, capsys):
    """A config with a required field still lists its runs (nothing to configure)."""
    records = experiment.main("scored", NeedsWidth, scored,
                              ["--results", "--runs-dir", str(runs_dir)])
    assert len(records) == 6 and re.search(r"\| +160 \|", capsys.readouterr().out)


def test_no_runs_is_a_clear_error(tmp_path, runs_dir):
    with pytest.raises(experiment.ExperimentError, match=r"no runs of 'other'.*"
                       r"experiments there: scored.*--runs-dir"):
        experiment.collect("other", runs_dir)
    with pytest.raises(experiment.ExperimentError, match="the folder does not exist"):
        experiment.collect("scored", tmp_path / "nowhere")
    json.dumps([r.results for r in experiment.collect("scored", runs_dir)])  # plain values
