"""The reranker called as sentence-transformers' CrossEncoder is: `predict` on (question, text) pairs and
`rank` of documents for one query, with the same scores as `Reranker.score`."""

import numpy as np
import pytest

from ragloop import Passage, RagloopError
from ragloop.retrieval.rerank import Reranker

pytestmark = pytest.mark.usefixtures("one_thread")

QUERY = "which team won the super bowl?"
TEXTS = ["The Denver Broncos won Super Bowl 50.", "Paris is the capital of France.",
         "a much longer passage about football, teams, stadiums and the games they play every winter",
         "Broncos", "The Carolina Panthers lost."]


@pytest.fixture(scope="module")
def reranker(tiny_ce_dir):
    return Reranker.from_pretrained(tiny_ce_dir, batch_size=2)


def test_predict_scores_pairs_in_order_as_score_does(reranker):
    pairs = [(QUERY, t) for t in TEXTS] + [("another question?", TEXTS[0])]
    got = reranker.predict(pairs)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (len(pairs),)
    expected = reranker.score([QUERY, "another question?"], [TEXTS, TEXTS[:1]])
    np.testing.assert_allclose(got, np.concatenate(expected), rtol=1e-5, atol=1e-6)
    # the batch size changes nothing but how many pairs go through at once
    np.testing.assert_allclose(reranker.predict(pairs, batch_size=5), got, rtol=1e-4, atol=1e-5)
    assert reranker.predict([]).shape == (0,)
    assert reranker.predict((QUERY, TEXTS[0])) == pytest.approx(float(got[0]), abs=1e-5)


def test_rank_is_best_first_with_corpus_ids_and_texts(reranker):
    scores = reranker.predict([(QUERY, t) for t in TEXTS])
    ranked = reranker.rank(QUERY, TEXTS)
    assert [r["corpus_id"] for r in ranked] == list(np.argsort(-scores, kind="stable"))
    assert [r["score"] for r in ranked] == pytest.approx([float(scores[r["corpus_id"]]) for r in ranked], abs=1e-6)
    assert all(a["score"] >= b["score"] for a, b in zip(ranked, ranked[1:]))
    assert all(set(r) == {"corpus_id", "score"} for r in ranked)
    top = reranker.rank(QUERY, TEXTS, top_k=2, return_documents=True)
    assert [(r["corpus_id"], r["text"]) for r in top] == [(r["corpus_id"], TEXTS[r["corpus_id"]]) for r in ranked[:2]]
    assert reranker.rank(QUERY, []) == []


def test_rank_reads_passages_as_the_retriever_does(reranker):
    passages = [Passage(f"p{i}", f"Title {i}", t) for i, t in enumerate(TEXTS)]
    ranked = reranker.rank(QUERY, passages, return_documents=True)
    expected = reranker.score([QUERY], [passages])[0]
    assert [r["score"] for r in ranked] == pytest.approx(sorted(expected.tolist(), reverse=True), abs=1e-5)
    assert {r["text"] for r in ranked} == set(TEXTS)


@pytest.mark.parametrize(("call", "message"), [
    (lambda r: r.predict([(QUERY, 3)]), r"pair 0 must be a \(question, passage text\) pair"),
    (lambda r: r.predict([(QUERY, "a"), "oops"]), "pair 1 must be"),
    (lambda r: r.rank(QUERY, TEXTS, top_k=0), "top_k must be at least 1"),
    (lambda r: r.rank(["q"], TEXTS), "query must be a string"),
    (lambda r: r.predict([(QUERY, "a")], batch_size=0), "batch_size must be at least 1"),
])
def test_bad_calls_are_one_clear_error(reranker, call, message):
    with pytest.raises(RagloopError, match=message):
        call(reranker)
