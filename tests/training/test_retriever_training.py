"""DPR-style retriever training: BM25 hard negatives, a loss that learns, saved encoders that load and index."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ragloop import BiEncoder, Encoder, Index, RagloopError, Retriever, load_corpus, load_qa
from ragloop.cli import build_parser
from ragloop.evaluation import has_answer
from ragloop.retrieval.folder import bm25_text
from ragloop.training.retriever_trainer import (
    RetrieverTrainConfig,
    batch_targets,
    build_items,
    train_retriever,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, eight_paragraphs, tiny_bert_dir):
    cfg = RetrieverTrainConfig(train_file=str(eight_paragraphs), encoder=str(tiny_bert_dir), batch_size=8,
                               max_steps=20, learning_rate=1e-3, warmup_steps=0,
                               output_dir=str(tmp_path_factory.mktemp("rt") / "out"))
    return cfg, train_retriever(cfg, progress=False)


def test_hard_negatives_are_never_gold_and_never_contain_the_answer(squad_small):
    examples = load_qa(squad_small)
    passages, items = build_items(examples, hard_negatives=2)
    assert len(items) == len(examples) == 139
    answers = {ex.question: ex.answers for ex in examples}
    for it in items:
        assert passages[it.positive].doc_id == it.doc_id
        for r in it.negatives:
            assert passages[r].doc_id != it.doc_id
            assert not has_answer(answers[it.question], bm25_text(passages[r]))
    assert sum(len(it.negatives) == 2 for it in items) >= 0.9 * len(items)
    # the positive is the chunk holding the answer when the paragraph was cut in two
    assert sum(has_answer(answers[it.question], passages[it.positive].text) for it in items) >= 0.95 * len(items)


def test_same_paragraph_passages_are_masked_not_negatives(squad_small):
    passages, items = build_items(load_qa(squad_small), hard_negatives=1)
    same = [it for it in items if it.doc_id == items[0].doc_id][:2]
    rows, labels, mask = batch_targets(same, passages)
    assert rows[labels[0]] == same[0].positive
    for i, it in enumerate(same):
        assert not mask[i, labels[i]]
        for j, r in enumerate(rows):
            assert bool(mask[i, j]) == (passages[r].doc_id == it.doc_id and r != it.positive)


def test_loss_decreases_on_a_fixed_batch(trained):
    _, result = trained
    losses = result["losses"]
    assert result["steps"] == len(losses) == 20
    # 8 questions against 16 passages: chance is ln(16) = 2.77
    assert np.mean(losses[:3]) > 1.5
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
    assert result["final_loss"] == pytest.approx(np.mean(losses[-10:]))


def test_training_is_deterministic_given_the_seed(trained, tmp_path):
    cfg, _ = trained
    a = train_retriever(replace(cfg, max_steps=3, output_dir=str(tmp_path / "a")), progress=False)
    b = train_retriever(replace(cfg, max_steps=3, output_dir=str(tmp_path / "b")), progress=False)
    c = train_retriever(replace(cfg, max_steps=3, seed=7, output_dir=str(tmp_path / "c")), progress=False)
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-6)
    assert a["losses"] != pytest.approx(c["losses"], rel=1e-6)  # another seed: other dropout


def test_saved_encoder_loads_like_the_base_and_indexes(trained, tiny_bert_dir, squad_small, tmp_path):
    _, result = trained
    base = Encoder.from_pretrained(str(tiny_bert_dir))
    tuned = Encoder.from_pretrained(result["output_dir"])
    assert result["shared"] and result["question_encoder"] == result["passage_encoder"] == result["output_dir"]
    for key in ("dim", "pooling", "normalize", "max_length", "architecture"):
        assert getattr(tuned.spec, key) == getattr(base.spec, key)
    assert tuned.spec.normalize and tuned.spec.pooling == "mean"
    w0 = base.model.embeddings.word_embeddings.weight
    w1 = tuned.model.embeddings.word_embeddings.weight
    assert w0.shape == w1.shape and not torch.allclose(w0, w1)
    assert float(base.probe() @ tuned.probe()) < 0.999

    index = Index.build(load_corpus([squad_small]), BiEncoder.from_pretrained(result["output_dir"]),
                        tmp_path / "idx", progress=False)
    assert index.manifest["encoder"]["passage"]["name"] == result["output_dir"]
    hits = Retriever.from_index(tmp_path / "idx").search("Where was Super Bowl 50 played?", k=3)[0]
    assert len(hits) == 3


def test_two_towers_from_one_model(trained, tiny_bert_dir, tmp_path):
    cfg, _ = trained
    r = train_retriever(replace(cfg, shared_encoder=False, max_steps=3, output_dir=str(tmp_path / "two")),
                        progress=False)
    assert not r["shared"] and r["question_encoder"].endswith("question_encoder")
    q, p = Encoder.from_pretrained(r["question_encoder"]), Encoder.from_pretrained(r["passage_encoder"])
    assert q.spec.pooling == p.spec.pooling == "mean" and q.spec.normalize and p.spec.normalize
    assert float(q.probe() @ p.probe()) < 0.99999  # each tower got its own updates
    Index.build(load_corpus([cfg.train_file]), BiEncoder.from_pretrained(r["passage_encoder"], r["question_encoder"]),
                tmp_path / "idx", progress=False, with_bm25=False)


def test_dpr_towers(eight_paragraphs, tiny_dpr_dirs, tmp_path):
    _, ctx = tiny_dpr_dirs
    r = train_retriever(RetrieverTrainConfig(train_file=str(eight_paragraphs), encoder=str(ctx), max_steps=2,
                                             batch_size=4, output_dir=str(tmp_path / "dpr")), progress=False)
    assert not r["shared"]
    summary = json.loads((tmp_path / "dpr" / "retriever_training.json").read_text())
    assert summary["scale"] == 1.0  # DPR: raw dot products
    q, p = Encoder.from_pretrained(r["question_encoder"]), Encoder.from_pretrained(r["passage_encoder"])
    assert (q.spec.architecture, p.spec.architecture) == ("DPRQuestionEncoder", "DPRContextEncoder")
    assert q.spec.pooling == p.spec.pooling == "pooler"


def test_user_errors(eight_paragraphs, squad_small, tiny_bert_dir, tmp_path):
    cfg = RetrieverTrainConfig(train_file=str(eight_paragraphs), encoder=str(tiny_bert_dir), max_steps=1,
                               output_dir=str(tmp_path / "out"))
    with pytest.raises(RagloopError, match="--train_file is required"):
        train_retriever(replace(cfg, train_file=None))
    with pytest.raises(RagloopError, match="nope.json"):
        train_retriever(replace(cfg, train_file=str(tmp_path / "nope.json")))
    with pytest.raises(RagloopError, match="at least two paragraphs"):
        train_retriever(replace(cfg, train_file=str(squad_small), max_train_examples=5))
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(RagloopError, match="refusing to overwrite"):
        train_retriever(replace(cfg, output_dir=str(tmp_path / "precious")))
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_cli_command(eight_paragraphs, tiny_bert_dir, tmp_path, capsys):
    args = build_parser().parse_args(["train-retriever", "--train_file", str(eight_paragraphs), "--encoder",
                              str(tiny_bert_dir), "--max-steps", "2", "--batch_size", "4", "--scale", "10",
                              "--max_length", "64", "--shared_encoder", "false", "--output_dir",
                              str(tmp_path / "cli"), "-q"])
    assert args.scale == 10.0 and args.shared_encoder is False
    args.func(args)
    out = capsys.readouterr().out
    assert "trained 2 steps" in out and "--question-encoder" in out
    summary = json.loads((tmp_path / "cli" / "retriever_training.json").read_text())
    assert summary["scale"] == 10.0 and summary["config"]["max_length"] == 64
    assert Encoder.from_pretrained(str(tmp_path / "cli" / "passage_encoder")).spec.max_length == 64
