"""The experiments runner's checking side (bench/experiments): expected files, figure lookup, the
tolerance rule, the report and the exit code, on small fake results files. Nothing trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.experiments import __main__ as cli
from bench.experiments.check import check, check_data, lookup, report
from bench.experiments.spec import SpecError, Tolerance, load_experiment, load_experiments

RESULTS = {"hit_before": {"held-out": 0.81},
           "runs": [{"mode": "fid", "scores": {"rag": {"f1": 0.10}}, "ms": 250.0},
                    {"mode": "token", "scores": {"rag": {"f1": 0.05}}, "ms": float("nan")}]}


def write_expected(folder: Path, name: str = "toy", figures: list | None = None, **extra) -> Path:
    figures = figures if figures is not None else [
        {"figure": "fid RAG F1", "at": ["runs", {"mode": "fid"}, "scores", "rag", "f1"], "expected": 0.12,
         "tolerance": "f1"},
        {"figure": "hit@5 before", "at": ["hit_before", "held-out"], "expected": 0.81, "tolerance": "hit"},
        {"figure": "latency", "at": ["runs", 0, "ms"], "expected": 200.0, "tolerance": "speed"}]
    body = {"experiment": name, "question": "q?", "recipe": "readers.json", "results": f"bench/results/{name}.json",
            "command": f"python -m bench.experiments --only {name}",
            "tolerances": {"f1": {"abs": 0.03}, "hit": {"abs": 0.0}, "speed": {"rel": 0.2, "why": "noisy"}},
            "figures": figures, **extra}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(body))
    return path


def test_lookup_walks_keys_positions_and_picks_by_fields():
    assert lookup(RESULTS, ["runs", {"mode": "token"}, "scores", "rag", "f1"]) == 0.05
    assert lookup(RESULTS, ["runs", -1, "mode"]) == "token"
    for at, why in ((["runs", {"mode": "sequence"}], "0 entries match"), (["hit_before", "new"], "no key 'new'"),
                    (["runs", 5], "no entry 5"), (["hit_before", {"a": 1}], "expected a list")):
        with pytest.raises(LookupError, match=why):
            lookup(RESULTS, at)


def test_tolerance_is_absolute_plus_relative():
    tol = Tolerance(abs=0.01, rel=0.1)
    assert tol.bound(2.0) == pytest.approx(0.21)
    assert tol.describe() == "±0.01 + ±10%"
    assert Tolerance().describe() == "exact"


def test_within_and_beyond_tolerance(tmp_path):
    exp = load_experiment(write_expected(tmp_path))
    rows = check_data(exp, RESULTS)
    # F1 0.10 vs 0.12: within ±0.03; hit exact: equal; latency 250 vs 200: beyond ±20% (40)
    assert [r.verdict for r in rows] == ["ok", "ok", "moved"]
    assert rows[2].got == 250.0 and rows[2].note == "+50"
    assert rows[0].tolerance == "f1 (±0.03)"
    # exactly on the bound is still within it
    edge = load_experiment(write_expected(tmp_path, figures=[
        {"figure": "edge", "at": ["runs", 0, "scores", "rag", "f1"], "expected": 0.13, "tolerance": "f1"}]))
    assert check_data(edge, RESULTS)[0].ok


def test_missing_figures_and_missing_files_fail(tmp_path):
    exp = load_experiment(write_expected(tmp_path, figures=[
        {"figure": "gone", "at": ["runs", {"mode": "sequence"}, "f1"], "expected": 0.1, "tolerance": "f1"},
        {"figure": "nan", "at": ["runs", 1, "ms"], "expected": 1.0, "tolerance": "speed"}]))
    rows = check_data(exp, RESULTS)
    assert [r.verdict for r in rows] == ["missing", "missing"]
    assert "0 entries match" in rows[0].note and "not a number" in rows[1].note
    rows = check(exp, tmp_path / "absent.json")
    assert len(rows) == 1 and rows[0].verdict == "missing" and "no such file" in rows[0].note
    (tmp_path / "broken.json").write_text("{oops")
    assert check(exp, tmp_path / "broken.json")[0].verdict == "missing"


def test_report_table_and_summary(tmp_path):
    rows = check_data(load_experiment(write_expected(tmp_path)), RESULTS)
    text = report(rows)
    assert text.splitlines()[0] == "| experiment | figure | expected | got | tolerance | verdict |"
    assert "| toy | latency | 200 | 250 | speed (±20%) | **moved** (+50) |" in text
    assert text.endswith("1 of 3 figures moved beyond their tolerance, 0 missing.")
    assert report(rows[:2]).endswith("2 figures within their tolerances.")


def test_bad_expected_files_say_where(tmp_path):
    path = write_expected(tmp_path, figures=[{"figure": "x", "at": ["a"], "expected": 1, "tolerance": "nope"}])
    with pytest.raises(SpecError, match=r"figures\[0\]\.tolerance: 'nope' is not one of"):
        load_experiment(path)
    path = write_expected(tmp_path, figures=[{"figure": "x", "at": ["a"], "expected": "high", "tolerance": "f1"}])
    with pytest.raises(SpecError, match=r"figures\[0\]\.expected: expected a number"):
        load_experiment(path)
    (tmp_path / "toy.json").write_text(json.dumps({"experiment": "toy"}))
    with pytest.raises(SpecError, match="missing key 'tolerances'"):
        load_experiment(tmp_path / "toy.json")


def test_check_command_exit_codes(tmp_path, capsys):
    expected, results = tmp_path / "expected", tmp_path / "results"
    expected.mkdir(), results.mkdir()
    write_expected(expected, "good", figures=[
        {"figure": "f1", "at": ["runs", 0, "scores", "rag", "f1"], "expected": 0.11, "tolerance": "f1"}])
    write_expected(expected, "bad")
    for name in ("good", "bad"):
        (results / f"{name}.json").write_text(json.dumps(RESULTS))
    argv = ["--check", "--expected-dir", str(expected), "--results-dir", str(results)]
    assert cli.main([*argv, "--only", "good"]) == 0
    assert "1 figures within their tolerances." in capsys.readouterr().out
    assert cli.main(argv) == 1
    assert "**moved**" in capsys.readouterr().out
    (results / "good.json").unlink()
    assert cli.main([*argv, "--only", "good"]) == 1
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--only", "nonesuch"])
    assert e.value.code == 2


def test_shipped_experiments_load_and_their_stored_results_pass():
    """Every expected file reads, its recipe loads through ragloop's recipe loader, and the stored
    results in bench/results/ are within every tolerance (the expected figures came from them)."""
    exps = load_experiments()
    assert set(exps) == {"readers", "rerank", "rerank-rag", "warm-start", "generator", "rerank-recipes", "int8"}
    for exp in exps.values():
        assert exp.recipe().steps > 0
        if not exp.figures:  # not run yet: it says so, and there is nothing to check
            assert exp.not_pinned.startswith("not run yet") and check(exp, exp.results_path()) == []
            continue
        rows = check(exp, exp.results_path())
        assert all(r.ok for r in rows), report([r for r in rows if not r.ok])


def test_every_experiment_has_a_module_that_runs_it():
    """`python -m bench.experiments --only NAME` imports bench.experiments.<name> and calls its run(exp, path)."""
    import importlib
    import inspect

    for exp in load_experiments().values():
        module = importlib.import_module(exp.module)
        assert list(inspect.signature(module.run).parameters) == ["exp", "results"], exp.module


def test_list_names_every_experiment(capsys):
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("readers", "rerank", "rerank-rag", "warm-start", "generator", "rerank-recipes", "int8"):
        assert f"| {name} |" in out
