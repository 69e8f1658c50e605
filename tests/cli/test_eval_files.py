"""`ragloop eval --predictions` writes what SQuAD's official evaluate-v1.1.py scores to the same EM/F1, and
`ragloop eval-retrieval --run` writes the rankings it scored as a TREC run."""

import json
import re
import string
from collections import Counter

import pytest

from ragloop import Retriever, load_qa
from ragloop.cli import main
from ragloop.model import RAG

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the official SQuAD v1.1 evaluation (evaluate-v1.1.py), written out from its public definition --------


def official_normalize(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def official_f1(prediction, ground_truth):
    pred, gold = official_normalize(prediction).split(), official_normalize(ground_truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def official_em(prediction, ground_truth):
    return official_normalize(prediction) == official_normalize(ground_truth)


def official_evaluate(dataset, predictions):
    em = f1 = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                truths = [a["text"] for a in qa["answers"]]
                em += max(official_em(predictions[qa["id"]], t) for t in truths)
                f1 += max(official_f1(predictions[qa["id"]], t) for t in truths)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


def _only(dataset, ids):
    """The SQuAD file's articles with only the questions in `ids` (the ones `--limit` evaluated)."""
    return [{"title": a["title"], "paragraphs": [{"context": p["context"],
                                                  "qas": [q for q in p["qas"] if q["id"] in ids]}
                                                 for p in a["paragraphs"]]} for a in dataset]


def test_predictions_score_the_same_with_the_official_script(rag_dir, squad_small, tmp_path, monkeypatch, capsys):
    examples = load_qa(squad_small)[:12]
    # answers of every kind: exact, exact after normalisation, partly right, wrong
    made = {ex.question: [ex.answers[0], f"The {ex.answers[0].upper()}!", f"{ex.answers[0]} and more words",
                          "xyzzy"][i % 4] for i, ex in enumerate(examples)}
    monkeypatch.setattr(RAG, "generate", lambda self, questions, **kw: [made[q] for q in questions])
    preds = tmp_path / "preds.json"
    capsys.readouterr()
    assert main(["eval", str(rag_dir), "--data", str(squad_small), "--limit", "12", "--json", "-q",
                 "--predictions", str(preds)]) == 0
    result = json.loads(capsys.readouterr().out)
    predictions = json.loads(preds.read_text())
    assert predictions == {ex.id: made[ex.question] for ex in examples}
    official = official_evaluate(_only(json.loads(squad_small.read_text())["data"], set(predictions)), predictions)
    assert 0 < official["exact_match"] < 100 and official["exact_match"] < official["f1"] < 100
    assert official["exact_match"] == pytest.approx(100 * result["em"], abs=0.01)
    assert official["f1"] == pytest.approx(100 * result["f1"], abs=0.01)


def test_predictions_of_the_real_model(rag_dir, squad_small, tmp_path):
    assert main(["eval", str(rag_dir), "--data", str(squad_small), "--limit", "2", "--oracle", "-q",
                 "--predictions", str(tmp_path / "p.json")]) == 0
    got = json.loads((tmp_path / "p.json").read_text())
    assert list(got) == [ex.id for ex in load_qa(squad_small)[:2]] and all(isinstance(a, str) for a in got.values())


def test_eval_retrieval_writes_a_trec_run(index, squad_small, tmp_path, capsys):
    run = tmp_path / "bm25.run"
    assert main(["eval-retrieval", str(index.path), "--data", str(squad_small), "--limit", "5", "-k", "1", "3",
                 "--mode", "bm25", "--run", str(run), "-q"]) == 0
    rows = [line.split() for line in run.read_text().splitlines()]
    assert all(len(r) == 6 and r[1] == "Q0" and r[5] == "ragloop-bm25" for r in rows)
    examples = load_qa(squad_small)[:5]
    assert list(dict.fromkeys(r[0] for r in rows)) == [ex.id for ex in examples]
    expected = Retriever(index, mode="bm25").search([ex.question for ex in examples], k=10)
    for ex, hits in zip(examples, expected):
        mine = [r for r in rows if r[0] == ex.id]
        assert [int(r[3]) for r in mine] == list(range(1, len(mine) + 1))  # ranks 1..depth (10: mrr@10's)
        scores = [float(r[4]) for r in mine]
        assert scores == sorted(scores, reverse=True)
        assert [(r[2], float(r[4])) for r in mine] == [(h.passage.id, pytest.approx(h.score)) for h in hits]
    capsys.readouterr()
    assert main(["eval-retrieval", str(index.path), "--data", str(squad_small), "--mode", "all",
                 "--run", str(tmp_path / "all.run")]) == 2
    assert "--run writes the run of one search mode" in capsys.readouterr().err
