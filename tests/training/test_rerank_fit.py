"""Fitting a reranker's combinations on held-out questions: the first stage searched as the retriever
searches, gold counted as evaluate_retrieval counts it, and a trained folder's json rewritten to reload."""

import hashlib
import json

import numpy as np
import pytest

from ragloop import RagloopError, load_qa
from ragloop.data.qa import QAExample, context_passages
from ragloop.evaluation.retrieval import gold_ranks, within
from ragloop.retrieval.bm25 import BM25Index
from ragloop.retrieval.folder import bm25_text
from ragloop.retrieval.rerank import SETTINGS_FILE, Reranker
from ragloop.training.rerank_fit import first_stage_runs, fit_combinations, fit_held_out, refit_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def held_out(squad_small):
    examples = load_qa(squad_small)[::3]
    return examples, context_passages(load_qa(squad_small), 100)


@pytest.fixture(scope="module")
def runs(held_out, tiny_bert_dir):
    examples, passages = held_out
    return first_stage_runs(examples, passages, depth=6, encoder=tiny_bert_dir)


def test_first_stage_runs_are_the_retrievers_over_the_passages(held_out, runs):
    examples, passages = held_out
    assert set(runs) == {"dense", "bm25", "hybrid"}
    for scores, rows in runs.values():
        assert rows.shape == scores.shape == (len(examples), 6) and rows.max() < len(passages)
    bm25_scores, bm25_rows = BM25Index.build([bm25_text(p) for p in passages]).search(
        [ex.question for ex in examples], 6)
    assert runs["bm25"][1].tolist() == bm25_rows.tolist()  # rows are positions in `passages`
    found = bm25_rows >= 0
    np.testing.assert_allclose(runs["bm25"][0][found], bm25_scores[found], rtol=1e-6)
    assert (runs["bm25"][0][~found] == -np.inf).all()


def test_fit_combinations_scores_every_mode_against_its_first_stage(held_out, runs, tiny_ce_dir):
    examples, passages = held_out
    combos = fit_combinations(Reranker.from_pretrained(tiny_ce_dir), examples, passages, runs)
    assert set(combos) == set(runs)
    for mode, combo in combos.items():
        ranked = [[passages[r] for r in row if r >= 0] for row in runs[mode][1]]
        assert combo.held_out["questions"] == len(examples)
        assert combo.held_out["gold@1"]["first_stage"] == pytest.approx(within(gold_ranks(examples, ranked), 1))
        assert combo.use in ("combination", "first_stage")
        if combo.use == "combination":  # never saved unless it beat the first stage on these questions
            assert combo.held_out["gold@1"]["combination"] > combo.held_out["gold@1"]["first_stage"]


def test_refit_folder_rewrites_only_the_settings_and_reloads(squad_small, tiny_ce_dir, tiny_bert_dir, tmp_path):
    folder = tmp_path / "ce"
    Reranker.from_pretrained(tiny_ce_dir).save_pretrained(folder)  # as a trainer leaves it, without a combination
    assert "combination" not in json.loads((folder / SETTINGS_FILE).read_text())
    weights = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.name != SETTINGS_FILE}
    combos = refit_folder(folder, squad_small, max_questions=20, depth=5, encoder=tiny_bert_dir)
    saved = json.loads((folder / SETTINGS_FILE).read_text())
    assert saved["format"] == "ragloop-reranker" and set(saved["combination"]) == {"dense", "bm25", "hybrid"}
    assert saved["combination"]["bm25"]["held_out"]["questions"] == 20
    assert Reranker.from_pretrained(folder).combinations == combos
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()
            if p.name != SETTINGS_FILE} == weights


def test_fit_held_out_sets_what_the_reranker_saves(held_out, tiny_ce_dir, tiny_bert_dir, tmp_path):
    examples, passages = held_out
    reranker = Reranker.from_pretrained(tiny_ce_dir)
    combos = fit_held_out(reranker, examples[:10], passages, depth=4, encoder=tiny_bert_dir)
    assert reranker.combinations is combos and set(combos) == {"dense", "bm25", "hybrid"}
    reranker.save_pretrained(tmp_path / "saved")
    assert Reranker.from_pretrained(tmp_path / "saved").combinations == combos


def test_bad_inputs_are_one_clear_error(held_out, runs, tiny_ce_dir, tmp_path):
    examples, passages = held_out
    reranker = Reranker.from_pretrained(tiny_ce_dir)
    with pytest.raises(RagloopError, match="unknown mode 'sparse'"):
        fit_combinations(reranker, examples, passages, {"sparse": runs["bm25"]})
    with pytest.raises(RagloopError, match="bm25 run: scores"):
        fit_combinations(reranker, examples[:2], passages, {"bm25": runs["bm25"]})
    bare = [QAExample("x", "q?", ["a"]), *examples[1:]]
    with pytest.raises(RagloopError, match="'x' has no context paragraph"):
        fit_combinations(reranker, bare, passages, runs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RagloopError, match="not a reranker folder"):
        refit_folder(tmp_path / "empty", "unused.json")


def test_the_rerank_fit_command(squad_small, tiny_ce_dir, tiny_bert_dir, tmp_path, capsys):
    import argparse

    from ragloop.cli import rerank_fit, run_guarded

    parser = argparse.ArgumentParser()
    rerank_fit.add_parser(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))
    folder = tmp_path / "ce"
    Reranker.from_pretrained(tiny_ce_dir).save_pretrained(folder)
    args = parser.parse_args(["rerank-fit", str(folder), "--data", str(squad_small), "--limit", "12", "--depth", "4",
                              "--encoder", str(tiny_bert_dir)])
    assert run_guarded(args.func, args) == 0
    out = capsys.readouterr().out
    saved = Reranker.from_pretrained(folder).combinations
    assert set(saved) == {"dense", "bm25", "hybrid"} and all(c.held_out["questions"] == 12 for c in saved.values())
    assert f"| bm25 | {saved['bm25'].use} |" in out
    args = parser.parse_args(["rerank-fit", str(tmp_path / "nope"), "--data", str(squad_small)])
    assert run_guarded(args.func, args) == 2
    assert "not a reranker folder" in capsys.readouterr().err
