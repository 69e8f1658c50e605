"""The retrieval cache: repeated questions served from memory (or disk) with exactly the uncached
results, bounded in entries and bytes, and never stale after the index, the encoder or the settings change."""

import json

import numpy as np
import pytest
import torch

from ragloop import Encoder, Index, Passage, Retriever, load_corpus
from ragloop.cli import main
from ragloop.model import RAG, RAGConfig
from ragloop.retrieval.cache import RetrievalCache

QUESTIONS = ["Which team won Super Bowl 50?", "Where is the Vistula river?", "Who was the MVP?"]


class ByLength:
    """A stand-in reranker: longest (or, with sign=-1, shortest) passage first; counts its calls."""

    def __init__(self, name="by-length", sign=1.0):
        self.name, self.sign, self.calls = name, sign, 0

    def score(self, questions, passages, progress=False):
        self.calls += 1
        return [np.array([self.sign * len(p.text) for p in ps], dtype=np.float32) for ps in passages]


@pytest.fixture
def index(eight_passage_index):
    """Fresh for every test, which may add to it or re-encode it: 8 passages by `encoder` (conftest.py)."""
    return eight_passage_index


def counting(retriever, monkeypatch):
    """Count the questions that really reach the first stage."""
    seen = []
    real = retriever._first_stage

    def first_stage(questions, *args):
        seen.extend(questions)
        return real(questions, *args)

    monkeypatch.setattr(retriever, "_first_stage", first_stage)
    return seen


def same(a, b):
    assert a.rows.tolist() == b.rows.tolist()
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.passages == b.passages


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_hit_returns_exactly_the_uncached_result_as_fresh_arrays(index, encoder, mode, monkeypatch):
    plain = Retriever(index, encoder.question, mode=mode)
    cached = Retriever(index, encoder.question, mode=mode, cache=RetrievalCache())
    seen = counting(cached, monkeypatch)
    want = plain.retrieve(QUESTIONS, k=4)
    first = cached.retrieve(QUESTIONS, k=4)
    second = cached.retrieve(QUESTIONS, k=4)
    same(first, want)
    same(second, want)
    assert seen == QUESTIONS  # searched once
    stats = cached.cache.stats()["results"]
    assert (stats["hits"], stats["misses"], stats["hit_rate"]) == (3, 3, 0.5)
    second.rows[:] = -7  # a caller scribbling on its result does not reach the cache
    second.scores[:] = 0
    second.passages[0].clear()
    same(cached.retrieve(QUESTIONS, k=4), want)


def test_a_batch_mixing_hits_and_misses_searches_only_the_misses_once(index, encoder, monkeypatch):
    r = Retriever(index, encoder.question, cache=RetrievalCache())
    seen = counting(r, monkeypatch)
    r.retrieve(QUESTIONS[:1], k=3)
    got = r.retrieve([QUESTIONS[1], QUESTIONS[0], QUESTIONS[1]], k=3)
    assert seen == QUESTIONS[:2]  # the repeated miss searched once
    assert got.rows[0].tolist() == got.rows[2].tolist()
    alone = Retriever(index, encoder.question).retrieve([QUESTIONS[1], QUESTIONS[0]], k=3)
    assert got.rows[:2].tolist() == alone.rows.tolist()
    np.testing.assert_allclose(got.scores[:2], alone.scores, atol=1e-5)


def test_another_k_mode_fusion_or_reranker_misses(index, encoder, monkeypatch):
    r = Retriever(index, encoder.question, mode="hybrid", cache=RetrievalCache())
    seen = counting(r, monkeypatch)
    r.retrieve(QUESTIONS[:1], k=3)
    r.retrieve(QUESTIONS[:1], k=4)
    r.retrieve(QUESTIONS[:1], k=3, mode="dense")
    r.fusion = "score"
    r.retrieve(QUESTIONS[:1], k=3)
    assert len(seen) == 4
    longest = ByLength()
    r.set_reranker(longest, 10)
    by_long = r.retrieve(QUESTIONS[:1], k=3)
    r.set_reranker(longest, 12)  # another depth
    r.retrieve(QUESTIONS[:1], k=3)
    r.set_reranker(ByLength("by-length", sign=-1.0), 10)  # same name, another reranker
    by_short = r.retrieve(QUESTIONS[:1], k=3)
    assert len(seen) == 7 and by_long.rows.tolist() != by_short.rows.tolist()
    r.set_reranker(longest, 10)
    same(r.retrieve(QUESTIONS[:1], k=3), by_long)
    assert len(seen) == 7 and longest.calls == 2


def test_lru_is_bounded_by_entries_and_by_bytes(index, encoder, monkeypatch):
    r = Retriever(index, mode="bm25", cache=RetrievalCache(max_entries=2))
    seen = counting(r, monkeypatch)
    r.retrieve(QUESTIONS[0], k=2)
    r.retrieve(QUESTIONS[1], k=2)
    r.retrieve(QUESTIONS[0], k=2)  # now the most recently used
    r.retrieve(QUESTIONS[2], k=2)  # evicts QUESTIONS[1]
    assert len(r.cache) == 2 and r.cache.stats()["evictions"] == 1
    r.retrieve(QUESTIONS[0], k=2)
    assert seen == [QUESTIONS[0], QUESTIONS[1], QUESTIONS[2]]
    r.retrieve(QUESTIONS[1], k=2)
    assert seen[-1] == QUESTIONS[1]

    small = RetrievalCache(max_bytes=1)  # nothing fits
    r = Retriever(index, mode="bm25", cache=small)
    r.retrieve(QUESTIONS[0], k=2)
    assert len(small) == 0 and small.nbytes == 0
    one = RetrievalCache()
    Retriever(index, mode="bm25", cache=one).retrieve(QUESTIONS[0], k=2)
    entry = one.nbytes
    two = RetrievalCache(max_bytes=entry + entry // 2)  # room for one entry, not two
    r = Retriever(index, mode="bm25", cache=two)
    r.retrieve(QUESTIONS[0], k=2)
    r.retrieve(QUESTIONS[0] + " ", k=2)
    assert len(two) == 1 and two.nbytes <= two.stats()["max_bytes"]


def test_index_add_invalidates(index, encoder, monkeypatch):
    r = Retriever(index, encoder.question, cache=RetrievalCache())
    before = r.retrieve(QUESTIONS[:1], k=3)
    new = Passage("new-1", "Super Bowl 50", "Which team won Super Bowl 50? " * 5, "new-doc")
    assert index.add([new], encoder) == 1
    seen = counting(r, monkeypatch)
    after = r.retrieve(QUESTIONS[:1], k=3)
    assert seen == QUESTIONS[:1]
    same(after, Retriever(index, encoder.question).retrieve(QUESTIONS[:1], k=3))
    assert after.rows.tolist() != before.rows.tolist() and len(index) - 1 in after.rows


def test_reencode_and_swapping_the_index_invalidate(index, encoder, tiny_bert_dir, other_bert_dir, tmp_path,
                                                     squad_small, monkeypatch):
    r = Retriever(index, encoder.question, cache=RetrievalCache())
    r.retrieve(QUESTIONS, k=3)
    index.reencode(Encoder.from_pretrained(str(other_bert_dir)))  # other passage vectors, in memory
    seen = counting(r, monkeypatch)
    got = r.retrieve(QUESTIONS, k=3)
    assert seen == QUESTIONS
    same(got, Retriever(index, encoder.question).retrieve(QUESTIONS, k=3))

    other = Index.build(load_corpus([squad_small])[8:], encoder, tmp_path / "other", progress=False)
    r.index = other
    got = r.retrieve(QUESTIONS, k=3)
    assert seen == QUESTIONS * 2
    assert got.passages[0][0].id in {p.id for p in other.store}


@pytest.mark.own_copy  # steps the encoder's weights
def test_question_vectors_are_cached_for_the_eval_encoder_and_keyed_by_its_weights(index, encoder):
    cache = RetrievalCache()
    r = Retriever(index, encoder.question, cache=cache)
    r.retrieve(QUESTIONS, k=3)
    r.retrieve(QUESTIONS, k=5)  # another k: a result miss, but the vectors are known
    assert cache.stats()["embeddings"]["hits"] == 3
    with torch.no_grad():  # an optimizer step, in place
        next(encoder.question.parameters()).add_(0.5)
    got = r.retrieve(QUESTIONS, k=3)
    assert cache.stats()["embeddings"]["misses"] == 6
    same(got, Retriever(index, encoder.question).retrieve(QUESTIONS, k=3))


def test_callers_vectors_are_never_served_from_the_cache(index, encoder, monkeypatch):
    r = Retriever(index, encoder.question, cache=RetrievalCache())
    seen = counting(r, monkeypatch)
    vectors = encoder.question.encode(QUESTIONS[:1])
    r.retrieve(QUESTIONS[:1], k=3, vectors=vectors)
    r.retrieve(QUESTIONS[:1], k=3, vectors=-vectors)
    assert len(seen) == 2 and len(r.cache) == 0


def test_rag_answer_is_cached_per_question_and_weights(index, encoder, tiny_bert_dir, tiny_t5_dir):
    from ragloop import Generator

    rag = RAG(index, Encoder.from_pretrained(str(tiny_bert_dir)), Generator.from_pretrained(str(tiny_t5_dir)),
              RAGConfig(n_docs=2))
    want = rag.answer(QUESTIONS, max_new_tokens=4)
    rag.retriever.cache = RetrievalCache()
    calls = []
    real = rag._answer
    rag._answer = lambda qs, *a: calls.append(list(qs)) or real(qs, *a)
    first = rag.answer(QUESTIONS, max_new_tokens=4)
    second = rag.answer(QUESTIONS[0], max_new_tokens=4)
    assert [a.to_dict() for a in first] == [a.to_dict() for a in want] and second.to_dict() == want[0].to_dict()
    assert calls == [QUESTIONS]
    second.passages.clear()  # not the cache's copy
    assert rag.answer(QUESTIONS[0], max_new_tokens=4).to_dict() == want[0].to_dict()
    rag.answer(QUESTIONS[0], max_new_tokens=5)  # other decoding settings
    with torch.no_grad():
        next(rag.generator.parameters()).mul_(1.01)  # other weights
    rag.answer(QUESTIONS[0], max_new_tokens=4)
    assert calls == [QUESTIONS, QUESTIONS[:1], QUESTIONS[:1]]
    assert rag.retriever.cache.stats()["answers"]["hits"] == 2


def test_answers_false_leaves_answers_uncached_and_retrieval_cached(index, encoder, tiny_bert_dir, tiny_t5_dir,
                                                                   tmp_path):
    from ragloop import Generator

    rag = RAG(index, Encoder.from_pretrained(str(tiny_bert_dir)), Generator.from_pretrained(str(tiny_t5_dir)),
              RAGConfig(n_docs=2))
    rag.retriever.cache = RetrievalCache(answers=False, directory=tmp_path / "c", max_disk_bytes=1 << 20)
    calls = []
    real = rag._answer
    rag._answer = lambda qs, *a: calls.append(list(qs)) or real(qs, *a)
    rag.answer(QUESTIONS[0], max_new_tokens=2)
    rag.answer(QUESTIONS[0], max_new_tokens=2)
    assert calls == [QUESTIONS[:1]] * 2
    stats = rag.retriever.cache.stats()
    assert stats["answers"] == {"hits": 0, "misses": 0, "hit_rate": None}
    assert stats["disk"]["max_bytes"] == 1 << 20


def test_eval_retrieval_reuses_its_disk_cache_and_a_changed_index_misses(index, squad_small, tmp_path, capsys,
                                                                        monkeypatch):
    cache_dir = tmp_path / "cache"
    argv = ["-q", "eval-retrieval", str(index.path), "--data", str(squad_small), "--limit", "6", "--json",
            "--cache-dir", str(cache_dir)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert len(list(cache_dir.glob("*.npz"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("retrieval ran although the disk cache holds every question")

    with monkeypatch.context() as m:
        m.setattr(Retriever, "_retrieve", refuse)
        assert main(argv) == 0
    assert capsys.readouterr().out == first

    searched = []
    real = Retriever._retrieve
    monkeypatch.setattr(Retriever, "_retrieve", lambda self, qs, *a: searched.append(len(qs)) or real(self, qs, *a))
    index.add([Passage("added", "Added", "a passage added later about Super Bowl 50", "added-doc")])
    assert main(argv) == 0
    assert searched == [6]  # the index changed: nothing from before is served
    assert len(list(cache_dir.glob("*.npz"))) == 2
    assert main([*argv[:-3], "--mode", "bm25", *argv[-3:]]) == 0  # another mode: its own file
    assert searched == [6, 6]


def test_a_corrupt_disk_cache_is_ignored_with_a_warning(index, squad_small, tmp_path, capsys, caplog):
    cache_dir = tmp_path / "cache"
    argv = ["eval-retrieval", str(index.path), "--data", str(squad_small), "--limit", "4", "--json",
            "--cache-dir", str(cache_dir)]
    assert main(argv) == 0
    want = capsys.readouterr().out
    (file,) = cache_dir.glob("*.npz")
    file.write_bytes(b"PK\x03\x04 not a zip file at all")
    assert main(argv) == 0
    assert capsys.readouterr().out == want
    assert "unreadable" in caplog.text
    with np.load(file) as data:  # rewritten whole
        assert len(json.loads(bytes(data["questions"]))) == 4


def test_eval_reuses_the_disk_cache(index, encoder, tiny_bert_dir, tiny_t5_dir, squad_small, tmp_path, capsys,
                                    monkeypatch):
    from ragloop import Generator

    rag = RAG(index, Encoder.from_pretrained(str(tiny_bert_dir)), Generator.from_pretrained(str(tiny_t5_dir)),
              RAGConfig(n_docs=2))
    rag.save_pretrained(tmp_path / "rag")
    argv = ["-q", "eval", str(tmp_path / "rag"), "--data", str(squad_small), "--limit", "3", "--json",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    first = capsys.readouterr().out
    monkeypatch.setattr(RAG, "retrieve", lambda *a, **k: pytest.fail("retrieved although cached"))
    assert main(argv) == 0
    assert capsys.readouterr().out == first


def test_health_shows_the_cache_hit_rate(index, encoder):
    from fastapi.testclient import TestClient

    from ragloop.serving import create_app

    with TestClient(create_app(Retriever(index, encoder.question), threads=1)) as client:
        for _ in range(3):
            assert client.post("/search", json={"question": QUESTIONS[0], "k": 2}).status_code == 200
        cache = client.get("/health").json()["cache"]
    assert cache["results"] == {"hits": 2, "misses": 1, "hit_rate": round(2 / 3, 4)}
    with TestClient(create_app(Retriever(index, encoder.question), threads=1, cache_size=0)) as client:
        assert client.get("/health").json()["cache"] is None
