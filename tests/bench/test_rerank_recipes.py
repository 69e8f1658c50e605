"""The rerank-recipes experiment picks up where it stopped: rows of an earlier results file are read
back only where they were scored on the same held-out split with the same steps and base settings."""

from __future__ import annotations

import json

from bench.experiments.rerank_recipes import FIRST_STAGE, rows_scored_earlier

RUN = {"steps": 80, "base": {"loss": "listwise", "negatives": 3}, "heldout_articles": ["A", "B"],
       "heldout_questions": 100}
ROWS = [{"variant": FIRST_STAGE, "bm25 gold@1": 0.7}, {"variant": "bce", "bm25 gold@1": 0.72}]


def test_rows_of_the_same_run_are_read_back_by_variant(tmp_path):
    path = tmp_path / "rerank-recipes.json"
    path.write_text(json.dumps({**RUN, "rows": ROWS}))
    assert rows_scored_earlier(path, dict(RUN)) == {r["variant"]: r for r in ROWS}


def test_rows_of_another_split_steps_or_base_are_not(tmp_path):
    path = tmp_path / "rerank-recipes.json"
    path.write_text(json.dumps({**RUN, "rows": ROWS}))
    for changed in ({"steps": 160}, {"base": {"loss": "bce", "negatives": 3}}, {"heldout_articles": ["A", "C"]}):
        assert rows_scored_earlier(path, {**RUN, **changed}) == {}


def test_a_missing_or_broken_results_file_gives_nothing(tmp_path):
    assert rows_scored_earlier(tmp_path / "none.json", dict(RUN)) == {}
    (tmp_path / "bad.json").write_text("{not json")
    assert rows_scored_earlier(tmp_path / "bad.json", dict(RUN)) == {}
