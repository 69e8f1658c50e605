"""The span reader: its marginal loss against a hand computation, gold spans at the right offsets, the
retriever's gradient only through p(z|x), answers that are spans of the passages, save and load."""

from __future__ import annotations

import math

import pytest
import torch

from ragloop.data.corpus import Passage, chunk_words
from ragloop.generation.extractive import (
    SpanReader,
    _choose,
    answer_char_spans,
    best_spans,
    gold_span_mask,
    passage_logprobs,
    span_marginal_nll,
)
from ragloop.model import RAG, RAGConfig

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTION = "Who wrote Hamlet?"
TEXTS = ["Hamlet was written by William Shakespeare around 1600. Shakespeare also wrote Macbeth.",
         "The Globe theatre in London staged many plays."]


@pytest.fixture(scope="module")
def reader(tiny_bert_dir) -> SpanReader:
    torch.manual_seed(0)
    return SpanReader.from_pretrained(tiny_bert_dir)


def passages(texts=TEXTS) -> list[Passage]:
    return [Passage(id=f"p{i}", title="", text=t) for i, t in enumerate(texts)]


def test_loss_is_the_marginal_over_passages_and_gold_spans_by_hand():
    doc = torch.log(torch.tensor([[0.7, 0.3]]))
    select = torch.tensor([[0.0, 1.0]])
    start = torch.tensor([[[1.0, 2.0, 0.0], [0.5, 0.0, 0.0]]])
    end = torch.tensor([[[0.0, 1.0, 3.0], [0.0, 0.0, 2.0]]])
    gold = torch.zeros(1, 2, 3, 3, dtype=torch.bool)
    gold[0, 0, 1, 2] = gold[0, 0, 0, 2] = gold[0, 1, 0, 2] = True  # the answer twice in z0, once in z1

    def softmax(xs):
        return [math.exp(x) / sum(math.exp(y) for y in xs) for x in xs]

    pz = softmax([math.log(0.7) + 0.0, math.log(0.3) + 1.0])
    s0, e0 = softmax([1.0, 2.0, 0.0]), softmax([0.0, 1.0, 3.0])
    s1, e1 = softmax([0.5, 0.0, 0.0]), softmax([0.0, 0.0, 2.0])
    expected = -math.log(pz[0] * (s0[1] * e0[2] + s0[0] * e0[2]) + pz[1] * s1[0] * e1[2])
    assert span_marginal_nll(doc, select, start, end, gold).item() == pytest.approx(expected, rel=1e-5)


def test_a_question_without_a_gold_span_costs_nothing_and_trains_nothing():
    start = torch.randn(1, 2, 3, requires_grad=True)
    loss = span_marginal_nll(torch.zeros(1, 2), torch.zeros(1, 2), start, torch.randn(1, 2, 3),
                             torch.zeros(1, 2, 3, 3, dtype=torch.bool))
    loss.sum().backward()
    assert loss.item() == 0.0 and torch.all(start.grad == 0)


def test_answer_spans_are_found_at_their_character_offsets():
    text = TEXTS[0]
    assert answer_char_spans(text, "Shakespeare") == [(30, 41), (55, 66)]  # it occurs twice
    assert answer_char_spans(text, "william shakespeare") == [(22, 41)]  # case only as a fallback
    assert answer_char_spans(text, "Marlowe") == [] and answer_char_spans(text, "  ") == []


def test_gold_spans_cover_each_occurrence_and_none_across_a_chunk_boundary(reader):
    ps = passages()
    inputs = reader.build_inputs([QUESTION], [ps])
    gold = gold_span_mask(["Shakespeare"], [ps], inputs, 16)
    offsets = inputs["offsets"][0].tolist()
    found = [(offsets[i][0], offsets[j][1]) for i, j in gold[0, 0].nonzero().tolist()]
    assert sorted(found) == [(30, 41), (55, 66)] and not gold[0, 1].any()

    chunks = chunk_words(" ".join(["filler"] * 9 + ["William", "Shakespeare"] + ["more"] * 9), size=10)
    cut = passages(chunks)  # "William" ends the first chunk, "Shakespeare" starts the second
    inputs = reader.build_inputs([QUESTION], [cut])
    assert not gold_span_mask(["William Shakespeare"], [cut], inputs, 16).any()


def test_best_spans_stay_in_the_passage_and_under_the_length_limit():
    start = torch.tensor([[-1e4, 0.0, 5.0, 0.0, -1e4]])
    end = torch.tensor([[-1e4, 8.0, 0.0, 4.0, -1e4]])  # the best end comes before the best start
    spans = best_spans(start, end, max_tokens=2, top=3)[0]
    assert spans[0][1:] == (2, 3)
    assert all(1 <= i <= j <= 3 and j - i < 2 for _, i, j in spans)


def test_the_same_answer_found_twice_adds_up():
    one_strong = (math.log(0.4), 0, "x Paris y", 2, 7)
    twice = [(math.log(0.3), 0, "in London", 3, 9), (math.log(0.3), 1, "London!", 0, 6)]
    got = _choose([one_strong, *twice], 2)
    assert got.text == "London"
    assert got.copied == [{"start": 3, "end": 9, "text": "London"}, {"start": 0, "end": 6, "text": "London"}]


def test_answers_are_spans_of_their_passages(index, tiny_bert_dir):
    torch.manual_seed(0)
    rag = RAG.from_index(index, generator=SpanReader.from_pretrained(tiny_bert_dir),
                         config=RAGConfig(n_docs=3, mode="span", max_target_length=8))
    for ans in rag.answer(["What is the capital of Poland?", "Who won Super Bowl 50?"]):
        spans = [(p["text"], p["copied"]) for p in ans.passages if p["copied"] is not None]
        assert ans.answer and spans
        assert all(text[c["start"]:c["end"]] == c["text"] for text, c in spans)
        assert any(c["text"] == ans.answer for _, c in spans)
    assert rag.generate(["What is the capital of Poland?"]) == [rag.answer("What is the capital of Poland?").answer]


def test_the_question_encoder_learns_only_through_p_z_given_x(index, tiny_bert_dir):
    torch.manual_seed(0)
    rag = RAG.from_index(index, generator=SpanReader.from_pretrained(tiny_bert_dir),
                         config=RAGConfig(n_docs=len(index), mode="span")).train()
    out = rag(["What is the capital of Poland?"], ["Warsaw"])
    d_scores, = torch.autograd.grad(out.loss, out.doc_scores, retain_graph=True)
    out.loss.backward(retain_graph=True)  # the scores' own graph is walked again below
    through_loss = [p.grad.clone() for p in rag.question_encoder.parameters() if p.grad is not None]
    assert through_loss and any(g.abs().sum() > 0 for g in through_loss)
    rag.zero_grad()
    out.doc_scores.backward(d_scores)  # the same gradient, sent in through the scores alone
    through_scores = [p.grad for p in rag.question_encoder.parameters() if p.grad is not None]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(through_loss, through_scores))


@pytest.mark.own_copy
def test_a_saved_span_reader_loads_back_and_answers_the_same(index, tiny_bert_dir, tmp_path):
    torch.manual_seed(0)
    rag = RAG.from_index(index, generator=SpanReader.from_pretrained(tiny_bert_dir),
                         config=RAGConfig(n_docs=2, mode="span"))
    with torch.no_grad():
        rag.generator.span_head.bias.fill_(0.25)  # not a fresh head's zeros: the heads are saved too
    rag.save_pretrained(tmp_path / "rag")
    again = RAG.from_pretrained(tmp_path / "rag")
    assert isinstance(again.generator, SpanReader) and not again.generator.fresh_heads
    assert torch.equal(again.generator.span_head.bias, rag.generator.span_head.bias)
    question = "Which river flows through Warsaw?"
    assert again.answer(question).to_dict() == rag.answer(question).to_dict()


def test_encoding_only_the_gold_passages_with_gradient_gives_the_full_loss(reader):
    questions = ["Who wrote Hamlet?", "Where is the Globe?", "What is the capital of Mars?"]
    answers = ["Shakespeare", "London", "nowhere"]  # the third question's passages do not hold its answer
    ps = [passages(), passages(), passages()]
    doc = torch.log_softmax(torch.randn(3, 2), dim=-1)
    inputs = reader.build_inputs(questions, ps)
    start, end, select = reader(inputs)  # every row encoded, as the loss would be computed naively
    gold = gold_span_mask(answers, ps, inputs, reader.max_target_length)
    full = span_marginal_nll(doc, select.view(3, 2), start.view(3, 2, -1), end.view(3, 2, -1), gold)
    fast = reader.loss(questions, ps, answers, doc)
    assert fast[2].item() == 0.0 and full[0] > 0 and full[1] > 0
    assert torch.allclose(fast, full, atol=1e-5)


def test_spans_start_and_end_on_word_boundaries(reader):
    inputs = reader.build_inputs([QUESTION], [passages(["The canopies glow."])])
    offsets, text = inputs["offsets"][0].tolist(), "The canopies glow."
    words = lambda mask: [text[s:e] for (s, e), m in zip(offsets, mask[0].tolist()) if m]  # noqa: E731
    assert words(inputs["start_mask"]) == ["The", "can", "glow", "."]  # "canopies" is can ##op ##ies
    assert words(inputs["end_mask"]) == ["The", "ies", "glow", "."]


def test_passage_scores_rank_as_answering_weighs_and_do_not_depend_on_the_other_passages(reader):
    """The reader as a ranker (DPR's passage selection): its scores are the reader's part of p(z|x), so
    adding the retriever's log p(z|x) and normalising gives answering's `passage_logprobs`; and a
    passage scores the same alone as among others, so a reranker may score pairs one by one."""
    doc = torch.log_softmax(torch.randn(1, 2), dim=-1)
    inputs = reader.build_inputs([QUESTION], [passages()])
    start, end, select = reader(inputs)
    together = reader.passage_scores([QUESTION], [passages()])
    assert together.shape == (1, 2)
    assert torch.allclose(torch.log_softmax(doc + together, dim=-1),
                          passage_logprobs(doc, select.view(1, 2), start.view(1, 2, -1), end.view(1, 2, -1)), atol=1e-5)
    alone = torch.cat([reader.passage_scores([QUESTION], [[p]]) for p in passages()], dim=1)
    assert torch.allclose(alone, together, atol=1e-4)
