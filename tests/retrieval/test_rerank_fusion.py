"""The rerank stage with the first stage's evidence: a fitted combination beats a noisy cross-encoder where the
first stage is good, a saved one reloads to the same scores, and the fallback keeps the first stage's order."""

import json
import logging

import numpy as np
import pytest

from ragloop import RagloopError, Retriever
from ragloop.retrieval.rerank import SETTINGS_FILE, Reranker
from ragloop.retrieval.rerank_fusion import Combination, fit_weights, read_combinations, sign_test, zscore

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ["Where is the Vistula river?", "Who won Super Bowl 50?", "What is the capital of Poland?"]


def _held_out(n, signal, seed=0, depth=20):
    """n questions whose first stage has gold on top 70% of the time (else second), and a cross-encoder that
    gives gold `signal` over unit noise."""
    rng = np.random.default_rng(seed)
    rerank, first, gold = [], [], []
    for _ in range(n):
        g = np.zeros(depth, bool)
        g[0 if rng.random() < 0.7 else 1] = True
        first.append(np.linspace(10, 5, depth) + rng.normal(0, 0.1, depth))
        rerank.append(signal * g + rng.normal(0, 1.0, depth))
        gold.append(g)
    return rerank, first, gold


def test_the_combination_beats_a_noisy_cross_encoder_and_a_good_first_stage():
    combo = fit_weights("bm25", *_held_out(300, signal=2.0))
    gold = combo.held_out["gold@1"]
    assert combo.use == "combination" and combo.held_out["questions"] == 300
    assert gold["rerank"] < gold["first_stage"] < gold["combination"]  # noise alone loses to the first stage
    assert gold["combination"] - gold["first_stage"] > 0.1
    assert combo.weights["rerank"] == 1.0 and combo.weights["first_stage_rank"] + combo.weights["first_stage_score"] > 0
    # the saved figures are what its final scores give on the same questions
    rerank, first, g = _held_out(300, signal=2.0)
    top = [g_[int(np.argmax(combo.final(r, f)))] for r, f, g_ in zip(rerank, first, g)]
    assert np.mean(top) == pytest.approx(gold["combination"], abs=1e-4)


def test_a_cross_encoder_of_pure_noise_falls_back_to_the_first_stage():
    combo = fit_weights("dense", *_held_out(300, signal=0.0))
    assert combo.use == "first_stage"
    assert combo.held_out["gold@1"]["rerank"] < 0.2 and combo.held_out["against_first_stage"]["p"] >= 0.05
    assert "no combination beat the first stage's gold@1" in combo.reason()


def test_features_and_sign_test():
    assert zscore(np.array([3.0, 3.0])).tolist() == [0.0, 0.0] and zscore(np.array([])).shape == (0,)
    np.testing.assert_allclose(zscore(np.array([1.0, 2.0, 3.0])), [-1.2247449, 0.0, 1.2247449], rtol=1e-6)
    assert sign_test(0, 0) == 1.0 and sign_test(3, 0) == pytest.approx(0.125)
    assert sign_test(10, 2) < 0.05 < sign_test(7, 3)


def test_questions_with_fewer_candidates_or_no_gold_count_as_misses():
    rerank = [np.array([0.0, 5.0]), np.array([1.0]), np.array([0.0, 1.0, 2.0])]
    first = [np.array([2.0, 1.0]), np.array([1.0]), np.array([3.0, 2.0, 1.0])]
    gold = [np.array([False, True]), np.array([True]), np.array([False, False, False])]
    combo = fit_weights("hybrid", rerank, first, gold)
    assert combo.held_out["gold@1"]["first_stage"] == pytest.approx(1 / 3, abs=1e-4)
    assert combo.held_out["gold@1"]["rerank"] == pytest.approx(2 / 3, abs=1e-4)
    assert combo.held_out["depth"] == 3 and combo.use == "first_stage"  # one question's win is not evidence
    with pytest.raises(RagloopError, match="question 1: 1 reranker scores, 2 first-stage scores"):
        fit_weights("bm25", rerank, [first[0], first[0], first[2]], gold)
    with pytest.raises(RagloopError, match="found no candidate for any question"):
        fit_weights("bm25", [np.zeros(0)], [np.zeros(0)], [np.zeros(0, bool)])


COMBINED = Combination("bm25", "combination", {"rerank": 1.0, "first_stage_rank": 2.0, "first_stage_score": 0.5},
                       {"questions": 7, "gold@1": {"first_stage": 0.5, "rerank": 0.4, "combination": 0.6}})
FALLBACK = Combination("hybrid", "first_stage", {"rerank": 1.0, "first_stage_rank": 6.0, "first_stage_score": 3.0},
                       {"questions": 7, "gold@1": {"first_stage": 0.6, "rerank": 0.4, "combination": 0.6}})


@pytest.fixture
def combined_dir(tiny_ce_dir, tmp_path):
    reranker = Reranker.from_pretrained(tiny_ce_dir)
    reranker.combinations = {"bm25": COMBINED, "hybrid": FALLBACK}
    reranker.save_pretrained(tmp_path / "combined")
    return tmp_path / "combined"


def test_a_saved_combination_reloads_and_gives_the_same_scores_and_order(combined_dir, tiny_ce_dir, index):
    saved = json.loads((combined_dir / SETTINGS_FILE).read_text())
    assert saved["combination"]["bm25"]["weights"] == COMBINED.weights
    assert saved["combination"]["hybrid"]["use"] == "first_stage"
    loaded = Reranker.from_pretrained(combined_dir)
    assert loaded.combinations == {"bm25": COMBINED, "hybrid": FALLBACK}

    got = Retriever(index, mode="bm25", reranker=loaded, rerank_depth=6).retrieve(QUESTIONS, 6)
    again = Retriever.from_index(index.path, mode="bm25", rerank=combined_dir, rerank_depth=6).retrieve(QUESTIONS, 6)
    assert got.rows.tolist() == again.rows.tolist() and np.array_equal(got.scores, again.scores)
    # by hand: the first stage, the plain cross-encoder's scores, and the saved weights
    first = Retriever(index, mode="bm25").retrieve(QUESTIONS, 6)
    plain = Reranker.from_pretrained(tiny_ce_dir).score(QUESTIONS, first.passages)
    for b in range(len(QUESTIONS)):
        n = len(first.passages[b])  # BM25 may find fewer than 6: those slots stay -1 / -inf
        final = COMBINED.final(plain[b], first.scores[b][:n])
        order = np.argsort(-final, kind="stable")
        assert got.rows[b].tolist() == first.rows[b][order].tolist() + [-1] * (6 - n)
        np.testing.assert_allclose(got.scores[b][:n], final[order], rtol=1e-5, atol=1e-6)
    assert any(got.rows[b].tolist() != first.rows[b].tolist() for b in range(3))  # the order really changed
    # a mode without a saved combination is reranked by the cross-encoder alone, as before
    dense = Retriever(index, mode="dense", reranker=loaded, rerank_depth=6).retrieve(QUESTIONS, 6)
    first = Retriever(index, mode="dense").retrieve(QUESTIONS, 6)
    plain = loaded.score(QUESTIONS, first.passages)
    assert dense.rows.tolist() == [first.rows[b][np.argsort(-plain[b], kind="stable")].tolist() for b in range(3)]


def test_the_fallback_returns_the_first_stage_exactly_and_says_so(combined_dir, index, caplog):
    retriever = Retriever(index, mode="hybrid", reranker=Reranker.from_pretrained(combined_dir), rerank_depth=6)
    first = Retriever(index, mode="hybrid").retrieve(QUESTIONS, 6)
    with caplog.at_level(logging.INFO, logger="ragloop"):
        got = retriever.retrieve(QUESTIONS, 6)
        retriever.retrieve(QUESTIONS[:1], 3)
    assert got.rows.tolist() == first.rows.tolist() and np.array_equal(got.scores, first.scores)
    assert [[p.id for p in ps] for ps in got.passages] == [[p.id for p in ps] for ps in first.passages]
    said = [r.getMessage() for r in caplog.records if "keeping the hybrid first stage's order" in r.getMessage()]
    assert len(said) == 1 and "gold@1 0.6" in said[0]  # once, with why
    assert retriever.describe()["rerank_use"] == {"dense": "rerank", "bm25": "combination", "hybrid": "first_stage"}


def test_eval_retrieval_reports_what_the_rerank_stage_did(combined_dir, index, squad_small):
    from ragloop import load_qa
    from ragloop.evaluation import evaluate_retrieval

    retriever = Retriever(index, reranker=Reranker.from_pretrained(combined_dir), rerank_depth=6)
    examples = load_qa(squad_small)[:4]
    assert evaluate_retrieval(retriever, examples, (1, 5), "hybrid")["rerank_use"] == "first_stage"
    hybrid = evaluate_retrieval(Retriever(index), examples, (1, 5), "hybrid")
    fallback = evaluate_retrieval(retriever, examples, (1, 5), "hybrid")
    assert {k: fallback[k] for k in ("gold@1", "gold@5", "mrr@10")} == {k: hybrid[k] for k in ("gold@1", "gold@5",
                                                                                              "mrr@10")}


@pytest.mark.parametrize(("entry", "message"), [
    ([1], "must be a mapping"),
    ({"sparse": {}}, "unknown search mode 'sparse'"),
    ({"bm25": {"use": "maybe"}}, "'use' = one of combination, first_stage"),
    ({"bm25": {"use": "combination", "weights": {"rerank": 1.0}}}, "finite 'weights'"),
    ({"bm25": {"use": "combination", "weights": {"rerank": 1, "first_stage_rank": float("nan"),
                                                 "first_stage_score": 0}}}, "finite 'weights'"),
])
def test_a_bad_saved_combination_is_one_clear_error(entry, message, combined_dir):
    with pytest.raises(RagloopError, match=message):
        read_combinations(entry, "x")
    settings = json.loads((combined_dir / SETTINGS_FILE).read_text())
    (combined_dir / SETTINGS_FILE).write_text(json.dumps({**settings, "combination": entry}))
    with pytest.raises(RagloopError, match=message):
        Reranker.from_pretrained(combined_dir)


def test_a_cached_result_follows_the_combination_in_effect(combined_dir, index):
    from ragloop.retrieval.cache import RetrievalCache

    reranker = Reranker.from_pretrained(combined_dir)
    retriever = Retriever(index, mode="hybrid", reranker=reranker, rerank_depth=6, cache=RetrievalCache())
    kept = retriever.retrieve(QUESTIONS, 6)
    reranker.combinations = {}  # the same weights, now the cross-encoder's order: not served from the cache
    plain = Retriever(index, mode="hybrid", reranker=Reranker.from_pretrained(combined_dir), rerank_depth=6)
    plain.reranker.combinations = {}
    assert retriever.retrieve(QUESTIONS, 6).rows.tolist() == plain.retrieve(QUESTIONS, 6).rows.tolist()
    assert plain.retrieve(QUESTIONS, 6).rows.tolist() != kept.rows.tolist()
