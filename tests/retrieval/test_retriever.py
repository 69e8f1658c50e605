"""The one retrieval path: `Retriever.retrieve` with its stages, used by search, eval and the RAG model."""

import logging
import math

import numpy as np
import pytest
import torch

from ragloop import Encoder, RagloopError, Retriever
from ragloop.evaluation import evaluate_retrieval
from ragloop.model import RAG, RAGConfig


class ByLength:
    """A stand-in reranker: longest passage first. Records what it was asked."""

    name = "by-length"

    def __init__(self):
        self.calls = []

    def score(self, questions, passages, progress=False):
        self.calls.append((list(questions), [len(ps) for ps in passages]))
        return [np.array([len(p.text) for p in ps], dtype=np.float32) for ps in passages]

    def save_pretrained(self, path):
        raise AssertionError("not saved in these tests")


QUESTIONS = ["Which team won Super Bowl 50?", "Where is the Vistula river?"]


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_retrieve_rows_scores_and_passages_agree(index, mode):
    got = Retriever(index).retrieve(QUESTIONS, k=4, mode=mode)
    assert got.rows.shape == got.scores.shape == (2, 4)
    for rows, scores, passages in zip(got.rows, got.scores, got.passages):
        found = rows[rows >= 0]
        assert [p.id for p in passages] == [p.id for p in index.store.get_rows(found.tolist())]
        assert list(scores[: len(found)]) == sorted(scores[: len(found)], reverse=True)
    hits = Retriever(index).search(QUESTIONS, k=4, mode=mode)
    assert [[h.row for h in hs] for hs in hits] == [[int(r) for r in rows if r >= 0] for rows in got.rows]


def test_dense_scores_are_inner_products_of_the_stored_vectors(index):
    r = Retriever(index)
    got = r.retrieve(QUESTIONS[:1], k=3)
    q = r.question_encoder.encode(QUESTIONS[:1], progress=False)[0]
    assert np.allclose(index.vectors(got.rows[0]) @ q, got.scores[0], atol=1e-5)


def test_reranker_reorders_the_first_stage_candidates(index):
    reranker = ByLength()
    r = Retriever(index, mode="hybrid", reranker=reranker, rerank_depth=6)
    first = Retriever(index, mode="hybrid").retrieve(QUESTIONS, k=6)
    got = r.retrieve(QUESTIONS, k=3)
    assert reranker.calls == [(QUESTIONS, [6, 6])]  # the depth, not k, goes to the reranker
    for b in range(2):
        candidates = sorted(first.passages[b], key=lambda p: -len(p.text))[:3]
        assert [p.id for p in got.passages[b]] == [p.id for p in candidates]
        assert list(got.scores[b]) == [len(p.text) for p in candidates]
    assert r.describe()["reranker"] == "by-length" and r.describe()["rerank_depth"] == 6


def test_rerank_depth_defaults_to_twenty_within_the_index(index):
    from ragloop.retrieval.retriever import RERANK_DEPTH

    reranker = ByLength()
    Retriever(index, reranker=reranker).retrieve(QUESTIONS[:1], k=3)
    assert reranker.calls[0][1] == [min(RERANK_DEPTH, len(index))] == [17]
    assert Retriever(index, reranker=reranker).describe()["rerank_depth"] == "max(k, 20)"


def test_bad_retrieval_settings_are_refused(index):
    with pytest.raises(RagloopError, match=r"rerank depth \(2\) is smaller than k \(3\)"):
        Retriever(index, reranker=ByLength(), rerank_depth=2).retrieve(QUESTIONS, k=3)
    with pytest.raises(RagloopError, match="needs a reranker"):
        Retriever(index, rerank_depth=5)
    for weight in (math.nan, -0.1, 1.5, "0.5"):
        with pytest.raises(RagloopError, match=r"weight of hybrid fusion must be a number in \[0, 1\]"):
            Retriever(index, weight=weight)
    with pytest.raises(RagloopError, match="unknown fusion method"):
        Retriever(index, fusion="max")
    with pytest.raises(RagloopError, match="unknown search mode"):
        Retriever(index, mode="sparse")
    with pytest.raises(RagloopError, match=f"k=100000 but {index.path} holds {len(index)} passages"):
        Retriever(index).retrieve(QUESTIONS, k=100_000)
    for k in (0, -1):
        with pytest.raises(RagloopError, match="k must be at least 1"):
            Retriever(index).retrieve(QUESTIONS, k=k)
    for k in (2.5, True, math.nan):
        with pytest.raises(RagloopError, match="k must be a whole number"):
            Retriever(index).retrieve(QUESTIONS, k=k)


def test_evaluation_goes_through_the_reranker(index, squad_small):
    from ragloop.data import load_qa

    examples = load_qa(squad_small)[:6]
    reranker = ByLength()
    plain = evaluate_retrieval(Retriever(index), examples, ks=(1, 5), progress=False)
    reranked = evaluate_retrieval(Retriever(index, reranker=reranker, rerank_depth=10), examples, ks=(1, 5, 20),
                                  progress=False)
    assert reranker.calls and reranked["reranker"] == "by-length" and "reranker" not in plain
    assert "gold@20" not in reranked  # past the rerank depth there is nothing it ranked


def test_rag_model_reads_the_retrievers_passages_and_scores_them_by_q_dot_d(index, tiny_bert_dir, tiny_t5_dir):
    from ragloop import Generator

    reranker = ByLength()
    rag = RAG(index, Encoder.from_pretrained(str(tiny_bert_dir)), Generator.from_pretrained(str(tiny_t5_dir)),
              RAGConfig(n_docs=2, search_mode="hybrid", rerank="by-length", rerank_depth=5), reranker=reranker)
    expect = Retriever(index, mode="hybrid", reranker=ByLength(), rerank_depth=5).retrieve(QUESTIONS, k=2)
    ctx = rag.retrieve(QUESTIONS)
    assert ctx.rows.tolist() == expect.rows.tolist()  # the passages the pipeline chose, in its order
    q = rag.embed_questions(QUESTIONS)
    d = torch.from_numpy(index.vectors(ctx.rows))
    assert torch.allclose(ctx.doc_scores, torch.einsum("bd,bkd->bk", q, d), atol=1e-5)  # p(z|x) from q·d
    ctx.doc_logprobs.sum().backward()
    assert any(p.grad is not None for p in rag.question_encoder.parameters())


def test_rag_config_refuses_a_rerank_depth_below_n_docs():
    with pytest.raises(RagloopError, match=r"rerank_depth \(2\) is smaller than n_docs \(5\)"):
        RAGConfig(n_docs=5, rerank="x", rerank_depth=2)
    with pytest.raises(RagloopError, match="needs a reranker"):
        RAGConfig(rerank_depth=5)


def test_vectors_of_the_wrong_shape_are_refused(index):
    r = Retriever(index)
    with pytest.raises(RagloopError, match=r"vectors have shape \(1, 32\); 2 questions"):
        r.retrieve(QUESTIONS, k=2, vectors=np.zeros((1, 32), dtype=np.float32))
    with pytest.raises(RagloopError, match=r"need \(2, 32\)"):
        r.retrieve(QUESTIONS, k=2, vectors=np.zeros((2, 7), dtype=np.float32))


def test_from_index_keeps_a_reranker_given_as_an_object(index):
    reranker = ByLength()
    r = Retriever.from_index(index.path, reranker=reranker, rerank_depth=6)
    assert r.reranker is reranker and r.rerank_depth == 6


def test_a_quantized_encoder_has_a_weights_digest(tiny_bert_dir):
    from ragloop.retrieval.cache import weights_digest

    plain = Encoder.from_pretrained(tiny_bert_dir)
    quantized = Encoder.from_pretrained(tiny_bert_dir)
    quantized.quantize("int8")
    assert weights_digest(quantized) == weights_digest(quantized) != weights_digest(plain)


def test_k_left_out_gives_what_a_small_index_holds_said_once(tmp_path, passages, encoder, index, caplog):
    from ragloop import Index

    small = Index.build(passages[:3], encoder, tmp_path / "small", progress=False)
    r = Retriever(small)
    with caplog.at_level(logging.INFO, logger="ragloop"):
        got = r.retrieve(QUESTIONS)
        assert got.rows.shape == (2, 3) and (got.rows >= 0).all()
        assert [len(hs) for hs in r.search("Warsaw")] == [3]
        assert len(r.search("Warsaw", mode="bm25")[0]) <= 3  # BM25: what matches, no error
    said = [rec.getMessage() for rec in caplog.records if "fewer than the default k" in rec.getMessage()]
    assert said == [f"{small.path} holds 3 passages, fewer than the default k=5: returning all of them"]
    with pytest.raises(RagloopError, match=r"k=4 but .* holds 3 passages"):  # asked for: an error
        r.search("Warsaw", k=4)
    assert [len(hs) for hs in Retriever(index).search(QUESTIONS)] == [5, 5]  # a larger index: the default 5
