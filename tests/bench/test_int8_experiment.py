"""The int8 experiment (bench/experiments/int8.py) on tiny models, 2 questions per set: one row per
precision with the fields its table and the default decision read, fp32 against itself losing nothing,
the loss and speed-up arithmetic, the span reader without an LM-head row, and a missing model folder
skipped (never trained) by the command."""

from __future__ import annotations

import json
import types

import pytest
import torch

from bench.experiments import int8
from ragloop.data import load_qa

pytestmark = pytest.mark.usefixtures("one_thread")

SETS = ("held-out", "new articles")


@pytest.fixture
def sets_and_latency(squad_small):
    examples = load_qa(squad_small)
    return [(SETS[0], examples[:2]), (SETS[1], examples[2:4])], [e.question for e in examples[4:7]]


def test_one_row_per_precision_and_fp32_against_itself_loses_nothing(rag_dir, sets_and_latency):
    sets, latency = sets_and_latency
    spec = {"reader": "tiny", "model": str(rag_dir), "constrain": None}
    rows = int8.score_reader(spec, [None, None, "int8", "int8-lm-head"], sets, latency, k=2)
    assert [r["precision"] for r in rows] == ["fp32", "fp32", "int8", "int8-lm-head"]
    assert [r["applied"] for r in rows] == [None, None, "int8", "int8"]
    assert [r["lm_head_quantized"] for r in rows] == [False, False, False, True]
    for r in rows:
        assert r["reader"] == "tiny" and r["model"] == str(rag_dir)
        assert set(r["scores"]) == {*SETS, int8.ALL}
        assert [r["scores"][s]["questions"] for s in (*SETS, int8.ALL)] == [2, 2, 4]
        assert all(0.0 <= r["scores"][s][m] <= 1.0 for s in r["scores"] for m in ("f1", "em"))
        assert r["answer_ms_p50"] > 0 and r["speedup"] > 0 and isinstance(r["within"], bool)
        lost = (rows[0]["scores"][int8.ALL]["f1"] - r["scores"][int8.ALL]["f1"]) * 100
        assert r["f1_lost_points"][int8.ALL] == pytest.approx(lost, abs=0.01)
    assert rows[1]["f1_lost_points"] == {SETS[0]: 0.0, SETS[1]: 0.0, int8.ALL: 0.0}
    assert rows[1]["within"] is True and rows[1]["scores"] == rows[0]["scores"]


def row(precision: str, f1: float, ms: float) -> dict:
    return {"precision": precision, "scores": {int8.ALL: {"f1": f1}}, "answer_ms_p50": ms}


def test_loss_is_fp32_f1_minus_the_rows_in_points_and_speedup_the_latency_ratio():
    rows = int8.compare([row("fp32", 0.4610, 160.0), row("int8", 0.4516, 100.0), row("int8-lm-head", 0.4450, 80.0)],
                        max_loss=1.0)
    assert [r["f1_lost_points"][int8.ALL] for r in rows] == [0.0, 0.94, 1.6]
    assert [r["speedup"] for r in rows] == [1.0, 1.6, 2.0]
    assert [r["within"] for r in rows] == [True, True, False]
    gained = int8.compare([row("fp32", 0.40, 100.0), row("int8", 0.41, 100.0)], max_loss=1.0)[1]
    assert gained["f1_lost_points"][int8.ALL] == -1.0 and gained["within"] is True
    alone = int8.compare([row("int8", 0.4, 100.0)], max_loss=1.0)[0]  # nothing to compare with
    assert (alone["f1_lost_points"], alone["speedup"], alone["within"]) == (None, None, None)


@pytest.mark.own_copy
def test_the_span_reader_has_no_lm_head_row(index, tiny_bert_dir, tmp_path, sets_and_latency):
    from ragloop.generation.extractive import SpanReader
    from ragloop.model import RAG, RAGConfig

    torch.manual_seed(0)
    RAG.from_index(index, generator=SpanReader.from_pretrained(tiny_bert_dir),
                   config=RAGConfig(n_docs=2, mode="span")).save_pretrained(tmp_path / "span")
    sets, latency = sets_and_latency
    rows = int8.score_reader({"reader": "span", "model": str(tmp_path / "span")}, [None, "int8", "int8-lm-head"],
                             sets, latency, k=2)
    assert [(r["precision"], r["applied"]) for r in rows] == [("fp32", None), ("int8", "int8")]


def test_the_command_skips_a_missing_model_and_writes_its_table(rag_dir, tmp_path, capsys):
    from bench.experiments.spec import load_experiments

    exp = load_experiments()["int8"]
    settings = {**exp.settings, "questions": 1, "latency_questions": 1, "k": 2, "precisions": [None, "int8"],
                "models": [{"reader": "gone", "model": str(tmp_path / "absent")},
                           {"reader": "tiny", "model": str(rag_dir), "constrain": None}]}
    fake = types.SimpleNamespace(name=exp.name, recipe=exp.recipe, settings=settings)
    int8.run(fake, tmp_path / "int8.json")
    res = json.loads((tmp_path / "int8.json").read_text())
    assert res["skipped_readers"] == ["gone"] and res["sets"] == list(SETS) and res["questions_per_reader"] == 2
    assert [(r["reader"], r["precision"]) for r in res["rows"]] == [("tiny", "fp32"), ("tiny", "int8")]
    out = capsys.readouterr()
    assert "| tiny | fp32 |" in out.out and "| tiny | int8 |" in out.out and "+0.00 |" in out.out
    assert "skipping gone: no trained model in" in out.err
