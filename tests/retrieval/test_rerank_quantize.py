"""int8 reranking: scores that agree with float32 ones, the precision reported, reached from every way a
retriever gets its reranker (--quantize with --rerank), and refused where full precision is needed."""

import numpy as np
import pytest

from ragloop import Passage, RagloopError, Retriever
from ragloop.cli import main
from ragloop.retrieval.rerank import Reranker

pytestmark = pytest.mark.usefixtures("one_thread")


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(float)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def _pairs(passages):
    questions = ["Where is the Vistula river?", "Who won Super Bowl 50?", "What is the capital of Poland?",
                 "Which team represented the AFC?"]
    return [(q, f"{p.title} {p.text}") for q in questions for p in passages]


def test_int8_scores_agree_with_float32(tiny_ce_dir, passages):
    pairs = _pairs(passages)
    fp32 = Reranker.from_pretrained(tiny_ce_dir).predict(pairs)
    int8 = Reranker.from_pretrained(tiny_ce_dir).quantize("int8")
    assert int8.quantization == "int8"
    assert type(int8.model.classifier).__name__ == "Linear"  # the head that makes the score stays float32
    got = int8.predict(pairs)
    assert got.dtype == np.float32 and not np.array_equal(got, fp32)  # really another computation
    assert spearman(fp32, got) > 0.9
    # pairs the float32 model sets clearly apart keep their order
    spread = fp32.max() - fp32.min()
    apart = [(i, j) for i in range(len(pairs)) for j in range(len(pairs)) if fp32[i] - fp32[j] > 0.25 * spread]
    assert len(apart) > 20 and all(got[i] > got[j] for i, j in apart)


def test_a_quantized_reranker_reranks_but_is_not_saved(tiny_ce_dir, index, tmp_path):
    reranker = Reranker.from_pretrained(tiny_ce_dir).quantize("int8")
    assert reranker.quantize("int8") is reranker and reranker.quantization == "int8"  # asking twice: no change
    got = Retriever(index, mode="bm25", reranker=reranker, rerank_depth=5).retrieve(["Where is the Vistula?"], 3)
    first = Retriever(index, mode="bm25").retrieve(["Where is the Vistula?"], 5)
    assert set(got.rows[0].tolist()) <= set(first.rows[0].tolist())
    with pytest.raises(RagloopError, match="cannot save reranker .* quantized \\(int8\\)"):
        reranker.save_pretrained(tmp_path / "int8")
    assert not (tmp_path / "int8").exists()


def test_the_retriever_quantizes_its_reranker_whenever_it_gets_one(tiny_ce_dir, index):
    early = Retriever(index, mode="bm25").quantize("int8")
    early.set_reranker(str(tiny_ce_dir), 5)  # set after quantize: quantized when set
    late = Retriever(index, mode="bm25", reranker=Reranker.from_pretrained(tiny_ce_dir), rerank_depth=5)
    assert late.describe()["rerank_quantize"] is None
    late.quantize("int8")
    opened = Retriever.from_index(index.path, mode="bm25", rerank=tiny_ce_dir, rerank_depth=5, quantize="int8")
    for r in (early, late, opened):
        assert r.reranker.quantization == "int8" and r.describe()["rerank_quantize"] == "int8"
    q = ["Where is the Vistula river?", "Who won Super Bowl 50?"]
    rows = [r.retrieve(q, 5).rows.tolist() for r in (early, late, opened)]
    assert rows[0] == rows[1] == rows[2]


def test_search_with_rerank_and_quantize_reranks_in_int8(tiny_ce_dir, index, capsys):
    import json

    question = "Where is the Vistula river?"
    expected = Retriever.from_index(index.path, mode="bm25", rerank=tiny_ce_dir, rerank_depth=6, quantize="int8")
    want = expected.search(question, 3)[0]
    fp32 = Retriever.from_index(index.path, mode="bm25", rerank=tiny_ce_dir, rerank_depth=6).search(question, 3)[0]
    capsys.readouterr()
    assert main(["search", str(index.path), question, "-k", "3", "--mode", "bm25", "--rerank", str(tiny_ce_dir),
                 "--rerank-depth", "6", "--quantize", "int8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    hits = out["hits"]
    assert [h["id"] for h in hits] == [h.passage.id for h in want] and out["rerank_quantize"] == "int8"
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in want], abs=1e-5)
    assert [h["score"] for h in hits] != pytest.approx([h.score for h in fp32], abs=1e-5)  # int8's, not float32's


def test_pairs_are_cut_to_the_length_the_model_reads(tiny_ce_dir, tmp_path):
    long = Passage("p", "Title", " ".join(["word"] * 600), "d")
    reranker = Reranker.from_pretrained(tiny_ce_dir, max_length=32)
    assert [len(ids) for ids in reranker.tokenize(["q?"], [long.text])["input_ids"]] == [32]
    # a folder remembers the length it was saved with, and is scored at it
    reranker.save_pretrained(tmp_path / "short")
    again = Reranker.from_pretrained(tmp_path / "short")
    assert again.max_length == 32 and Reranker.from_pretrained(tiny_ce_dir).max_length == 256
    assert again.score(["q?"], [[long]])[0][0] == pytest.approx(reranker.score(["q?"], [[long]])[0][0], abs=1e-6)
    # what is cut away makes no difference: the model reads the first 32 tokens only
    longer = Passage("p", "Title", long.text + " other words entirely", "d")
    assert again.score(["q?"], [[longer]])[0][0] == pytest.approx(again.score(["q?"], [[long]])[0][0], abs=1e-6)
