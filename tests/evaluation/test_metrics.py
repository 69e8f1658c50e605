"""SQuAD EM/F1, DPR has-answer, and the retrieval metrics computed from ranked rows."""

import numpy as np
import pytest

from ragloop import Passage, QAExample
from ragloop.evaluation import evaluate_retrieval, exact_match, f1_score, has_answer, normalize_answer
from ragloop.retrieval.retriever import Retrieved


def test_squad_normalisation_em_and_f1():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert exact_match("the Denver Broncos", ["Carolina", "Denver Broncos"]) == 1.0
    assert exact_match("Broncos", ["Denver Broncos"]) == 0.0
    assert f1_score("Broncos of Denver", ["Denver Broncos"]) == pytest.approx(0.8)
    assert f1_score("x", ["a b", "x y"]) == pytest.approx(2 / 3)  # max over gold answers
    assert f1_score("", ["Paris"]) == 0.0


def test_has_answer_matches_whole_tokens_only():
    assert has_answer(["Denver Broncos"], "The Denver Broncos defeated the Panthers.")
    assert not has_answer(["Den"], "The Denver Broncos")
    assert not has_answer(["the"], "the end")  # normalises to nothing: never a hit


class _Retriever:
    """Returns fixed rankings, so the metrics can be checked by hand."""

    reranker = None

    def describe(self):
        return {"mode": "dense", "reranker": None, "rerank_depth": None, "quantize": None}

    def __init__(self, passages, ranking):
        self.passages = passages
        self.index = passages  # only its size is asked
        self.ranking = ranking

    def retrieve(self, questions, k, mode, progress=None):
        rows = np.full((len(questions), k), -1)
        for i, r in enumerate(self.ranking):
            rows[i, : len(r)] = r[:k]
        found = [[self.passages[j] for j in row if j >= 0] for row in rows]
        return Retrieved(rows, np.zeros_like(rows, dtype=np.float32), found)


def test_hit_gold_and_mrr_by_hand():
    passages = [
        Passage("a-0", "A", "Paris is in France.", "docA"),
        Passage("b-0", "B", "Rome is in Italy; Paris is not.", "docB"),
        Passage("c-0", "C", "Nothing here.", "docC"),
    ]
    qs = [
        QAExample("1", "capital of France?", ["Paris"], doc_id="docA"),
        QAExample("2", "capital of Italy?", ["Rome"], doc_id="docB"),
    ]
    # q1: docB (has "Paris", not gold) then docA (gold); q2: docC, docA, then nothing
    r = evaluate_retrieval(_Retriever(passages, [[1, 0, 2], [2, 0]]), qs, ks=(1, 2))
    assert r["questions"] == 2
    assert r["hit@1"] == 0.5 and r["hit@2"] == 0.5  # q1 hits at rank 1 through docB; q2 never
    assert r["gold@1"] == 0.0 and r["gold@2"] == 0.5
    assert r["mrr@10"] == pytest.approx((1 / 2 + 0) / 2)
