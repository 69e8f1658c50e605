"""evaluate_answers refuses bad arguments with a RagloopError and always restores the model's mode."""

from types import SimpleNamespace

import pytest

from ragloop import QAExample
from ragloop.errors import RagloopError
from ragloop.evaluation import evaluate_answers


class FakeRAG:
    """The parts of `RAG` that evaluate_answers uses with given passages: answers every question "Paris"."""

    def __init__(self, fail: bool = False):
        self.training, self.fail, self.config = True, fail, SimpleNamespace(n_docs=2)

    def eval(self):
        self.training = False

    def train(self, mode: bool = True):
        self.training = mode

    def generate(self, questions, num_beams=1, passages=None, doc_scores=None):
        if self.fail:
            raise RuntimeError("out of memory")
        return ["Paris" for _ in questions]


def examples(context: str = "Paris is the capital of France.") -> list[QAExample]:
    return [QAExample("q1", "Capital of France?", ["Paris"], context=context, source="dev.json"),
            QAExample("q2", "Where is the Louvre?", ["Paris"], source="dev.json")]


def test_an_unknown_context_is_a_ragloop_error_naming_the_choices():
    with pytest.raises(RagloopError, match=r"context must be one of rag, closed-book, oracle \(got 'open'\)"):
        evaluate_answers(FakeRAG(), examples(), context="open", progress=False)


def test_oracle_without_a_paragraph_names_the_example():
    with pytest.raises(RagloopError, match=r"dev\.json: oracle evaluation needs .* question 'q2' \(example 1\)"):
        evaluate_answers(FakeRAG(), examples(), context="oracle", progress=False)


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_is_refused_not_taken_as_the_default(k):
    with pytest.raises(RagloopError, match=rf"k must be at least 1 \(got {k}\)"):
        evaluate_answers(FakeRAG(), examples(), context="closed-book", k=k, progress=False)


def test_the_training_mode_comes_back_also_when_generation_fails():
    model = FakeRAG(fail=True)
    with pytest.raises(RuntimeError, match="out of memory"):
        evaluate_answers(model, examples(), context="closed-book", progress=False)
    assert model.training
    model = FakeRAG()
    assert evaluate_answers(model, examples(), context="closed-book", progress=False)["em"] == 1.0
    assert model.training
