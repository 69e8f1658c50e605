"""The field's file formats: SQuAD predictions JSON and TREC run lines, as the usual tools read them."""

import json

import pytest

from ragloop import Passage, RagloopError
from ragloop.evaluation.files import trec_lines, write_predictions, write_trec_run
from ragloop.retrieval.retriever import Hit


def _hits(*ids_scores):
    return [Hit(Passage(pid, "T", "text"), score, row) for row, (pid, score) in enumerate(ids_scores)]


def test_predictions_are_one_json_object_of_question_ids(tmp_path):
    write_predictions(tmp_path / "out" / "preds.json", {"q1": "Denver Broncos", "q2": ""})
    assert json.loads((tmp_path / "out" / "preds.json").read_text()) == {"q1": "Denver Broncos", "q2": ""}


def test_trec_run_lines(tmp_path):
    rankings = {"q1": _hits(("p3", 2.5), ("p1", 0.1234567)), "q2": _hits(("p1", -1.0)), "q3": []}
    assert trec_lines(rankings, "ragloop-bm25") == ["q1 Q0 p3 1 2.5 ragloop-bm25", "q1 Q0 p1 2 0.1234567 ragloop-bm25",
                                                    "q2 Q0 p1 1 -1.0 ragloop-bm25"]
    write_trec_run(tmp_path / "run.txt", rankings, "tag")
    assert (tmp_path / "run.txt").read_text().splitlines() == [line.replace("ragloop-bm25", "tag")
                                                              for line in trec_lines(rankings, "ragloop-bm25")]


@pytest.mark.parametrize(("rankings", "tag", "message"), [
    ({"q 1": _hits(("p", 1.0))}, "t", "question id .*'q 1'"),
    ({"q1": _hits(("p\t2", 1.0))}, "t", "passage id .*'p\\\\t2'"),
    ({"q1": _hits(("p", 1.0))}, "my run", "run tag .*'my run'"),
    ({"": _hits(("p", 1.0))}, "t", "question id .*''"),
])
def test_a_column_with_white_space_is_refused(rankings, tag, message):
    with pytest.raises(RagloopError, match=message):
        trec_lines(rankings, tag)
