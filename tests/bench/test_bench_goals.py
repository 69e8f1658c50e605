"""The bench suite's Goals table: goal entries, gathering them from section records, the table, and
the goals the quantize and cache sections derive from their results (fake results; nothing is timed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.suite.goals import EXPECTED, gather, goal, goals_table, records, verdict


def write_record(folder: Path, name: str, suffix: str, result: dict, command: str = "python -m bench") -> None:
    record = {"section": name, "mode": "quick" if suffix else "full", "command": command,
              "date": "2026-11-30T12:00:00+00:00", "machine": {"ragloop_commit": "abc1234"}, "result": result}
    (folder / f"{name}{suffix}.json").write_text(json.dumps(record))


def test_goal_entry_keeps_unjudged_and_plain_bools():
    import numpy as np

    assert goal("g", "1.2x", np.bool_(True)) == {"goal": "g", "value": "1.2x", "met": True}
    assert type(goal("g", "v", np.bool_(False))["met"]) is bool
    assert goal("g", "v", None)["met"] is None
    assert [verdict(m) for m in (True, False, None)] == ["met", "**not met**", "not judged"]


def test_gather_reads_this_mode_recomputes_old_records_and_lists_missing_sections(tmp_path):
    write_record(tmp_path, "quantize", "", {"goals": [goal("int8 speed (>= 1.5x)", "1.70x", True)]},
                 command="python -m bench --only quantize")
    write_record(tmp_path, "quantize", "-quick", {"goals": [goal("int8 speed (>= 1.5x)", "0.90x", False)]})
    write_record(tmp_path, "rag", "", {"ratio": 0.4})  # written before sections had goals
    write_record(tmp_path, "other", "", {"goals": [goal("another engineer's goal", "3 MiB", None)]})
    (tmp_path / "retrieval.json").write_text(json.dumps({"rows": []}))  # another script's results
    (tmp_path / "broken.json").write_text("{not json")

    assert set(records(tmp_path, "")) == {"quantize", "rag", "other"}
    rows = gather(tmp_path, "", ["quality", "rag", "quantize", "cache"],
                  {"rag": lambda res: [goal("latency (<= 0.5x)", f"{res['ratio']:.2f}x", res["ratio"] <= 0.5)]})
    by_goal = {r["goal"]: r for r in rows}

    assert by_goal["int8 speed (>= 1.5x)"]["value"] == "1.70x"  # the full record, not the quick one
    assert by_goal["int8 speed (>= 1.5x)"]["command"] == "python -m bench --only quantize"
    assert by_goal["int8 speed (>= 1.5x)"]["measured"] == "2026-11-30, commit abc1234"
    assert by_goal["latency (<= 0.5x)"]["met"] is True  # recomputed from the stored result
    assert by_goal["another engineer's goal"]["section"] == "other"
    missing = {r["section"] for r in rows if r["value"] == "not measured yet"}
    assert missing == set(EXPECTED) - {"quantize", "rag"}
    assert all(r["met"] is None for r in rows if r["section"] in missing)
    # the suite's order first (rag before quantize), then sections it does not know, by name
    sections = list(dict.fromkeys(r["section"] for r in rows))
    assert sections[:3] == ["rag", "quantize", "cache"]
    assert sections[3:] == sorted(sections[3:])

    quick = gather(tmp_path, "-quick", ["quantize"])
    assert [r["value"] for r in quick if r["section"] == "quantize"] == ["0.90x"]
    assert next(r for r in quick if r["section"] == "cache")["command"] == "python -m bench --quick --only cache"


def test_record_without_goals_and_no_way_to_compute_them_says_so(tmp_path):
    write_record(tmp_path, "rag", "", {"ratio": 0.4})
    write_record(tmp_path, "quality", "", {"rows": []})  # no goals expected: no row
    rows = [r for r in gather(tmp_path, "", ["quality", "rag"]) if r["section"] in ("rag", "quality")]
    assert [(r["section"], r["met"]) for r in rows] == [("rag", None)]
    assert "no goals in its record" in rows[0]["value"]


def test_goals_table_has_one_row_per_goal_with_verdict_and_command(tmp_path):
    write_record(tmp_path, "cache", "", {"goals": [goal("repeated question (>= 10x)", "120x", True),
                                                   goal("RAG.answer (>= 10x)", "8x", False)]})
    text = goals_table([r for r in gather(tmp_path, "", ["cache"]) if r["section"] == "cache"])
    lines = text.splitlines()
    assert lines[0] == "| goal | value | verdict | section | measured | command |"
    assert lines[1] == "|---|---|---|---|---|---|"  # text columns, all aligned left
    assert len(lines) == 4
    assert lines[2].startswith("| repeated question (>= 10x) | 120x | met | cache |")
    assert "| **not met** |" in lines[3] and lines[3].endswith("| `python -m bench` |")


def quantize_result(trained: bool, f1_int8: float) -> dict:
    def speed(ratio):
        return {"fp32": {"ratio": 1.0}, "int8": {"ratio": ratio}}

    return {"trained": trained, "model": "trained runs/x" if trained else "untrained: bundled",
            "encoding": {"speed": speed(1.6)}, "answering": {"speed": speed(1.2), "quality": {
                "fp32": {"f1": 0.300}, "int8": {"f1": f1_int8}}},
            "retrieval": {"rows": {"fp32 index, fp32 queries": {"gold@5": 0.870},
                                   "int8 index, int8 queries": {"gold@5": 0.855}}}}


@pytest.mark.parametrize("trained", [True, False])
def test_quantize_goals_points_lost_and_f1_judged_only_for_a_trained_model(trained):
    from bench.suite import quantize

    enc, ans, gold, f1 = quantize.goals(quantize_result(trained, f1_int8=0.290))
    assert (enc["met"], ans["met"]) == (True, False)
    assert gold["value"].startswith("+1.5 pts") and gold["met"] is False  # 1.5 points lost > 1
    assert f1["value"].startswith("+1.0 pts")
    assert f1["met"] is (True if trained else None)


def test_cache_goals_one_per_path():
    from bench.suite import cache

    rows = [{"label": "Retriever.retrieve, dense", "speedup": 150.0, "cache": {"hit_rate": 0.98}},
            {"label": "RAG.answer", "speedup": 9.5, "cache": {"hit_rate": 0.83}}]
    entries = cache.goals({"rows": rows})
    assert [e["met"] for e in entries] == [True, False]
    assert entries[0]["value"] == "150x (hit rate 0.980)"
    assert "RAG.answer" in entries[1]["goal"]
