"""Reranker training end to end on a tiny cross-encoder: the held-out articles are scored every
--eval_steps, the best checkpoint is the one saved, and every recipe option trains."""

import json
from pathlib import Path

import pytest

from ragloop.cli import main
from ragloop.config import RerankerTrainConfig
from ragloop.retrieval.rerank import Reranker
from ragloop.training.reranker_trainer import HeldOut, data_split, train_reranker, training_data


@pytest.fixture(scope="module")
def trained(tmp_path_factory, squad_small, tiny_ce_dir):
    cfg = RerankerTrainConfig(train_file=str(squad_small), model=str(tiny_ce_dir), dense_encoder="none",
                              heldout_every=2, seed=3, eval_steps=2, max_steps=5, batch_size=4, max_length=64,
                              max_eval_examples=12, learning_rate=1e-3, warmup_steps=0,
                              output_dir=str(tmp_path_factory.mktemp("rr") / "out"))
    return cfg, train_reranker(cfg, progress=False)


def test_the_heldout_articles_choose_the_saved_checkpoint(trained):
    cfg, result = trained
    held = json.loads((Path(result["output_dir"]) / "reranker_training.json").read_text())["heldout"]
    assert held == result["heldout"]
    split, everything = data_split(cfg)
    assert held["articles"] == split.heldout_titles and set(held["articles"]).isdisjoint(held["train_articles"])
    assert held["questions"] == len(split.heldout) and held["scored_questions"] == 12
    assert [e["step"] for e in held["evaluations"]] == [2, 4, 5]
    key = lambda e: (e["reranked gold@1"], e["reranked mrr@10"])  # noqa: E731
    assert held["best"] == max(held["evaluations"], key=key)  # ties: the earlier
    # the folder holds the best checkpoint: scoring it again gives the best evaluation's figures
    saved = Reranker.from_pretrained(result["output_dir"], max_length=cfg.max_length)  # as it was trained
    again = HeldOut.build(split, everything, cfg).scores(saved)["bm25"]
    assert again["reranked gold@1"] == held["best"]["reranked gold@1"]
    assert again["reranked mrr@10"] == held["best"]["reranked mrr@10"]
    # no training question is of a held-out article
    passages, items = training_data(cfg, split=split)
    assert {passages[it.positive].title for it in items} == set(held["train_articles"])


@pytest.mark.parametrize("recipe", [
    dict(loss="bce", negative_sources="bm25,random", negatives=3),
    dict(loss="listwise", negative_sources="hybrid,random", negatives=2, head_lr=1e-4),
])
def test_each_recipe_trains(recipe, squad_small, tiny_ce_dir, tiny_bert_dir, tmp_path):
    cfg = RerankerTrainConfig(train_file=str(squad_small), model=str(tiny_ce_dir), dense_encoder=str(tiny_bert_dir),
                              heldout_every=0, max_steps=2, batch_size=4, max_length=64,
                              output_dir=str(tmp_path / "out"), **recipe)
    result = train_reranker(cfg, progress=False)
    assert result["steps"] == 2 and result["heldout"] is None and all(x > 0 for x in result["losses"])
    summary = json.loads((tmp_path / "out" / "reranker_training.json").read_text())
    assert {k: summary["config"][k] for k in recipe} == recipe


def test_the_command_takes_the_recipe_options_and_prints_the_heldout_scores(squad_small, tiny_ce_dir, tmp_path,
                                                                           capsys):
    out = tmp_path / "cli"
    assert main(["train-reranker", "--train_file", str(squad_small), "--model", str(tiny_ce_dir),
                 "--dense_encoder", "none", "--loss", "bce", "--negative_sources", "bm25,random", "--negatives", "2",
                 "--heldout_every", "2", "--eval_steps", "1", "--max_steps", "1", "--batch_size", "2",
                 "--max_length", "48", "--max_eval_examples", "5", "--output_dir", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "held out (2 articles, 5 questions, BM25 top 17)" in printed and "(step 1, saved)" in printed
    # the combination with each first stage is fitted on the held-out questions, printed and saved with it
    saved = json.loads((out / "ragloop_reranker.json").read_text())["combination"]
    assert set(saved) == {"bm25", "dense", "hybrid"}
    for mode, entry in saved.items():
        assert entry["use"] in ("rerank", "combination", "first_stage") and entry["held_out"]["questions"] == 5
        assert f"| {mode} | {entry['use']} |" in printed
    assert {m: c.use for m, c in Reranker.from_pretrained(out).combinations.items()} == {
        m: e["use"] for m, e in saved.items()}
    assert main(["train-reranker", "--negative_sources", "bm25,sparse", "--output_dir", str(tmp_path / "x")]) == 2
    assert "--negative_sources: 'bm25,sparse': unknown 'sparse'" in capsys.readouterr().err


class GoldFirst:
    """A stand-in reranker that knows the answer: 1 for a passage of the question's own paragraph."""

    def __init__(self, examples, passages):
        from ragloop.retrieval.rerank import passage_text

        self.gold = {(ex.question, passage_text(p)) for ex in examples for p in passages if p.doc_id == ex.doc_id}

    def predict(self, pairs, show_progress_bar=False):
        import numpy as np

        return np.array([float(tuple(pair) in self.gold) for pair in pairs], dtype=np.float32)


def test_heldout_scores_before_and_after_reranking_each_first_stage(squad_small, tiny_bert_dir):
    from ragloop import Encoder, load_qa
    from ragloop.data.qa import context_passages
    from ragloop.training.rankings import Rankings
    from ragloop.training.reranker_eval import rerank_scores

    examples = load_qa(squad_small)[::10]
    passages = context_passages(load_qa(squad_small), 100)
    rankings = Rankings([ex.question for ex in examples], passages, Encoder.from_pretrained(str(tiny_bert_dir)))
    scores = rerank_scores(GoldFirst(examples, passages), examples, passages, rankings, ("bm25", "dense", "hybrid"))
    assert set(scores) == {"bm25", "dense", "hybrid"}
    for row in scores.values():
        assert row["questions"] == len(examples) and row["candidates"] == len(passages) == 17
        assert row["reranked gold@1"] == row["reranked mrr@10"] == 1.0  # the gold is always in all 17
        assert row["gold@1"] <= row["gold@5"] <= 1.0 and row["mrr@10"] <= 1.0
    assert scores["bm25"]["gold@1"] < 1.0  # BM25 alone misses some at rank 1 on these questions
