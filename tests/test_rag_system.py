"""The original entry point: `python rag_system.py ...` and `from rag_system import RAG, RAGRetriever`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ragloop
from rag_system import RAG, OriginalRAG, RAGRetriever, save_state_dict
from ragloop import BiEncoder, Index, Passage, load_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_dpr_dirs, tiny_t5_dir, squad_small):
    from transformers import AutoTokenizer, DPRContextEncoder, DPRQuestionEncoder, T5ForConditionalGeneration

    q_dir, c_dir = tiny_dpr_dirs
    index_dir = tmp_path_factory.mktemp("dpr") / "index"
    Index.build(load_corpus([squad_small]), BiEncoder.from_pretrained(str(c_dir)), index_dir)
    return {
        "question_encoder": DPRQuestionEncoder.from_pretrained(q_dir),
        "context_encoder": DPRContextEncoder.from_pretrained(c_dir),
        "index": index_dir,
        "generator": T5ForConditionalGeneration.from_pretrained(tiny_t5_dir),
        "tokenizer": AutoTokenizer.from_pretrained(tiny_t5_dir),
    }


def test_original_shapes_answer_and_state_dict_round_trip(parts, tmp_path):
    retriever = RAGRetriever(parts["question_encoder"], parts["context_encoder"], parts["index"], parts["tokenizer"])
    assert len(retriever.retrieve(["Who won Super Bowl 50?"], k=3)[0]) == 3
    model = RAG(retriever, parts["generator"], parts["tokenizer"])
    assert isinstance(model.generate_answer("Who won Super Bowl 50?"), str)
    assert isinstance(model.generate_answer("Who won?", context="The Denver Broncos won Super Bowl 50."), str)
    # a second given context is read as itself, not as the first one's cached tokens
    first = model.generator.passage_ids(Passage("context", "", "The Denver Broncos won."))
    second = model.generator.passage_ids(Passage("context", "", "Paris is in France."))
    assert first != second

    path = tmp_path / "best_rag_model.pth"
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(0.01)  # weights that differ from a fresh model's
    save_state_dict(model, path)
    question_encoder = type(parts["question_encoder"]).from_pretrained(parts["question_encoder"].name_or_path)
    generator = type(parts["generator"]).from_pretrained(parts["generator"].name_or_path)
    fresh = RAG(RAGRetriever(question_encoder, None, parts["index"], parts["tokenizer"]), generator, parts["tokenizer"])
    fresh.load_state_dict(torch.load(path, weights_only=True))
    q, a = ["Who won Super Bowl 50?"], ["Denver Broncos"]
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert fresh(q, a).loss.item() == pytest.approx(model(q, a).loss.item(), rel=1e-6)


def test_the_original_rag_is_named_apart_from_the_library_model():
    assert RAG is OriginalRAG and issubclass(OriginalRAG, ragloop.RAG) and OriginalRAG is not ragloop.RAG


def _rag_system(*args, cwd, env=None):
    """Run in `cwd` (a test's tmp_path): the default --output_dir runs/rag must never land in the checkout."""
    return subprocess.run([sys.executable, str(ROOT / "rag_system.py"), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})}, cwd=cwd)


def test_original_command_without_the_hub_says_so_in_one_line(tmp_path):
    proc = _rag_system("--dataset_name", "squad", "--batch_size", "8", "--learning_rate", "5e-5", "--num_epochs",
                       "3", "--warmup_steps", "500", env={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert "'squad'" in line and "--train_file" in line
    assert list(tmp_path.iterdir()) == []  # the failed run wrote nothing: no runs/rag/train_config.json


def test_original_command_trains_on_local_files(tmp_path, squad_small, tiny_bert_dir, tiny_t5_dir):
    proc = _rag_system("--train_file", str(squad_small), "--validation_file", str(squad_small), "--question_encoder",
                       str(tiny_bert_dir), "--generator", str(tiny_t5_dir), "--n_docs", "2", "--batch_size", "4",
                       "--max_steps", "2", "--eval_steps", "2", "--max_eval_examples", "4", "--output_dir",
                       str(tmp_path / "run"), "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "best_rag_model.pth").is_file()
    assert (tmp_path / "run" / "best_model" / "rag_config.json").is_file()
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count('"loss"') == 1  # logging_steps 10: the last step
