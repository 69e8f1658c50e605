"""`ragloop answer` and `ragloop eval` on a tiny trained model, and their errors."""

import json
import shutil

import pytest
from conftest import squashed

from ragloop.cli import main
from ragloop.config import TrainConfig
from ragloop.training import train


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, squad_small, tiny_bert_dir, tiny_t5_dir):
    out = tmp_path_factory.mktemp("rag")
    cfg = TrainConfig(train_file=str(squad_small), question_encoder=str(tiny_bert_dir), generator=str(tiny_t5_dir),
                      n_docs=2, batch_size=4, max_steps=2, output_dir=str(out / "run"))
    return train(cfg, progress=False).best_dir


def _err(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_answer_and_eval_json(model_dir, squad_small, capsys):
    capsys.readouterr()
    assert main(["answer", str(model_dir), "Who won Super Bowl 50?", "Where is Warsaw?", "-k", "2", "--json"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["question"] for a in answers] == ["Who won Super Bowl 50?", "Where is Warsaw?"]
    assert all(len(a["passages"]) == 2 and isinstance(a["answer"], str) for a in answers)
    assert answers[1]["passages"][0]["source"] == squad_small.name  # not a path of the server
    assert main(["answer", str(model_dir), "Where is Warsaw?", "-k", "1"]) == 0
    assert f"from {squad_small.name}, score" in capsys.readouterr().out  # the source file of each passage
    for flags, context in (([], "rag"), (["--closed-book"], "closed-book"), (["--oracle"], "oracle")):
        assert main(["eval", str(model_dir), "--data", str(squad_small), "--limit", "4", "--json", "-q", *flags]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["context"] == context and res["questions"] == 4 and 0 <= res["f1"] <= 1
        assert ("hit@2" in res) == (context == "rag")


def test_answer_held_to_the_passages(model_dir, capsys):
    """--constrain spans on a model saved without it: every answer is a stretch of one of its passages."""
    capsys.readouterr()
    questions = ["Who won Super Bowl 50?", "Where is Warsaw?"]
    assert main(["answer", str(model_dir), *questions, "-k", "2", "--num-beams", "2", "--constrain", "spans",
                 "--json"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(answers) == 2
    for a in answers:
        assert a["answer"] and any(squashed(a["answer"]) in squashed(p["text"]) for p in a["passages"]), a


def test_eval_and_answer_errors(model_dir, tmp_path, squad_small, other_bert_dir, capsys):
    capsys.readouterr()
    assert main(["answer", str(model_dir), "  "]) == 2
    assert "question 0 is empty" in _err(capsys)
    assert main(["answer", str(model_dir), "Who won?", "-k", "10000000"]) == 2
    assert "k=10000000 but" in _err(capsys)
    assert main(["eval", str(model_dir), "--data", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: no such file" in _err(capsys)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answers": ["a"]}\n{oops\n')
    assert main(["eval", str(model_dir), "--data", str(bad)]) == 2
    assert "bad.jsonl:2: not valid JSON" in _err(capsys)
    assert main(["index", str(squad_small), "--out", str(tmp_path / "other"), "--encoder", str(other_bert_dir),
                 "-q"]) == 0
    capsys.readouterr()
    assert main(["answer", str(model_dir), "Who won?", "--index", str(tmp_path / "other")]) == 2
    assert "other weights" in _err(capsys)


def test_truncated_model_file_is_named(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = next((broken / "generator").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:2000])
    capsys.readouterr()
    assert main(["answer", str(broken), "Who won?"]) == 2
    assert weights.name in _err(capsys)


def test_opening_and_evaluating_a_model_shows_no_library_chatter(model_dir, squad_small):
    """No transformers progress bars ("Loading weights", "Writing model shards") and no deprecation
    warnings on stderr, from the Python API and from `ragloop eval`; RAG-Token decoding included,
    which steps the decoder with its cache by hand."""
    import subprocess
    import sys

    script = f"""
import warnings
warnings.simplefilter("default")  # show every warning once, as a user's script would
from ragloop import RAG, Retriever, load_qa
from ragloop.evaluation import evaluate_answers
Retriever.from_index({str(model_dir / "index")!r}).search("Who won Super Bowl 50?", k=2)
model = RAG.from_pretrained({str(model_dir)!r})
examples = load_qa({str(squad_small)!r})[:2]
evaluate_answers(model, examples, progress=False)
model.config.mode = "token"
evaluate_answers(model, examples, num_beams=2, progress=False)
"""
    runs = [[sys.executable, "-c", script],
            [sys.executable, "-m", "ragloop", "eval", str(model_dir), "--data", str(squad_small), "--limit", "2"]]
    for cmd in runs:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        for noise in ("Warning", "Loading weights", "Writing model shards", "it/s]"):
            assert noise not in proc.stderr, (cmd[1], proc.stderr)


def test_eval_oracle_without_paragraphs_fails_before_loading_a_model(tmp_path, capsys):
    data = tmp_path / "no-context.jsonl"
    data.write_text(json.dumps({"id": "q1", "question": "Who won?", "answers": ["Denver"]}) + "\n")
    # the model folder does not even exist: the data's problem is found first, without loading anything
    assert main(["eval", str(tmp_path / "no-model"), "--data", str(data), "--oracle"]) == 2
    err = _err(capsys)
    assert "oracle evaluation needs each question's context paragraph" in err and "'q1'" in err
