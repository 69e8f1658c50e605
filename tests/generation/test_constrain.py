"""Answers held to the passages (generation/constrain.py, `RAGConfig.constrain = "spans"`): which
tokens may follow a prefix, the mask the searches add, the passage text read from the inputs, and a
tiny random model whose every answer, in every reader, greedy and beam, is a stretch of a passage."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import squashed

from ragloop import Encoder, Passage, RagloopError
from ragloop.generation import Generator
from ragloop.generation.constrain import PassageSpans, answer_constraint, beam_mask, span_mask
from ragloop.model import RAG, RAGConfig

QUESTIONS = ["Which NFL team represented the AFC at Super Bowl 50?", "Where did Super Bowl 50 take place?"]
PASSAGES = [
    [Passage("a", "Weather", "It rained in Oregon for most of the week."),
     Passage("b", "Super Bowl 50", "The Denver Broncos won Super Bowl 50 against the Carolina Panthers."),
     Passage("c", "Football", "The game was watched by many people.")],
    [Passage("d", "Stadium", "Levi's Stadium is in Santa Clara, California."),
     Passage("e", "Halftime", "Beyoncé and Coldplay performed at half-time of the game, 1,000 fans sang."),
     Passage("f", "Teams", "Two teams played.")],
]
EOS = 9


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def copier(tiny_bert_dir) -> Generator:
    """A tiny BERT2BERT with a copy head whose weights moved off its identity start."""
    torch.manual_seed(0)
    gen = Generator.from_encoder_decoder(str(tiny_bert_dir), str(tiny_bert_dir), copy=True)
    with torch.no_grad():
        for p in gen.copy_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gen.model.eval()
    return gen


def make_rag(index, tiny_bert_dir, generator, **config) -> RAG:
    return RAG(index, Encoder.from_pretrained(str(tiny_bert_dir)), generator, RAGConfig(**config))


def contiguous_in(tokens: list[int], run: list[int]) -> bool:
    return any(run[i : i + len(tokens)] == tokens for i in range(len(run) - len(tokens) + 1))


# -- which tokens may follow ------------------------------------------------------------------------


def test_an_answer_is_any_stretch_of_a_run_then_eos():
    spans = PassageSpans([[1, 2, 3], [2, 4], []], EOS, no_start={3})
    assert spans.allowed([]) == {1, 2, 4}  # any token but a continuation begins; never eos at once
    assert spans.allowed([2]) == {3, 4, EOS}  # what follows each occurrence, and the end
    assert spans.allowed([1, 2]) == {3, EOS}
    assert spans.allowed([2, 3]) == {EOS}  # the end of one passage does not run into the next
    assert spans.allowed([3]) == set()  # 3 may not begin an answer
    assert spans.allowed([1, 3]) == set() and spans.allowed([5]) == set()  # no stretch of any passage
    assert spans.accepts([1, 2, 3, EOS]) and spans.accepts([2, 4]) and spans.accepts([4, EOS])  # cut short too
    assert not spans.accepts([EOS]) and not spans.accepts([1, 2, 4]) and not spans.accepts([3, EOS])
    assert not spans.accepts([])  # a search writes at least one token
    assert spans.ends([2]) == [2, 5] and spans.ends([2, 4]) == [6]  # positions after each occurrence


def test_passages_without_text_only_end():
    assert PassageSpans([], EOS).allowed([]) == {EOS}
    assert PassageSpans([[7]], EOS, no_start={7}).allowed([]) == {EOS}


def test_the_mask_is_zero_where_allowed_and_minus_infinity_elsewhere():
    spans = PassageSpans([[1, 2, 3], [12]], EOS)  # 12 is past a vocabulary of 10: never masked in
    mask = span_mask([spans, spans, spans], [[], [1], [1, 3]], 10)
    assert mask.shape == (3, 10) and mask.dtype == torch.float32
    for row, allowed in enumerate([{1, 2, 3}, {2, EOS}, set()]):
        assert {i for i in range(10) if mask[row, i] == 0} == allowed
        assert all(mask[row, i] == float("-inf") for i in range(10) if i not in allowed)
    other = PassageSpans([[5, 6]], EOS)
    seqs = torch.tensor([[[0, 1], [0, 2]], [[0, 5], [0, 1]]])  # [B=2, nb=2, start + one token]
    by_beam = beam_mask([spans, other], seqs, 10)
    assert by_beam.shape == (2, 2, 10)
    assert torch.equal(by_beam.view(4, 10), span_mask([spans, spans, other, other], [[1], [2], [5], [1]], 10))


# -- the passage text, from the generator's inputs ----------------------------------------------------


def test_the_constraint_reads_each_question_s_passage_text_from_its_inputs(t5):
    tok = t5.tokenizer
    passages = [[Passage("x", "Zebra Quartz", "alpha beta [SEP] gamma godárd"), Passage("y", "Yak", "delta")],
                [Passage("z", "Wolf", "epsilon zeta eta theta iota kappa lambda")]]
    inputs = t5.build_inputs(["who sang opera?", "what about it?"], [passages[0], [passages[1][0]] * 2])
    first, second = answer_constraint(t5, inputs, 2, "spans")
    ids = {w: tok.convert_tokens_to_ids(w) for w in ("alpha", "beta", "gamma", "god", "##ard", "delta", "epsilon")}
    assert first.allowed([]) == {ids[w] for w in ("alpha", "beta", "gamma", "god", "delta")}  # text only: no
    # question or title word, no special token, no "##ard" (a continuation), nothing of the other question
    assert first.allowed([ids["beta"]]) == {t5.eos_token_id}  # [SEP] in the text cuts it
    assert first.allowed([ids["god"]]) == {ids["##ard"], t5.eos_token_id}
    assert ids["epsilon"] in second.allowed([]) and ids["alpha"] not in second.allowed([])
    assert answer_constraint(t5, inputs, 2, None) is None
    with pytest.raises(RagloopError, match="constrain: 'words' is not one of spans"):
        answer_constraint(t5, inputs, 2, "words")

    short = Generator(t5.model, tok, max_source_length=16)  # the row is cut inside the second passage's text
    (cut,) = answer_constraint(short, short.build_inputs(["what about it?"], [passages[1]]), 1, "spans")
    words = tok.convert_ids_to_tokens(sorted(cut.allowed([])))
    assert words and set(words) < set(passages[1][0].text.split())  # only what was read


# -- the test: a tiny random model answers only with stretches of its passages ---------------


@pytest.mark.parametrize("which", ["t5", "copier"])  # transformers' generate, and our search with a copy head
@pytest.mark.parametrize("mode", ["sequence", "token", "fid"])
def test_every_constrained_answer_is_a_stretch_of_one_of_its_passages(index, tiny_bert_dir, which, mode, request):
    gen: Generator = request.getfixturevalue(which)
    rag = make_rag(index, tiny_bert_dir, gen, n_docs=3, mode=mode, constrain="spans").eval()
    free = make_rag(index, tiny_bert_dir, gen, n_docs=3, mode=mode).eval()
    ctx = rag._contexts(QUESTIONS, PASSAGES, None)
    runs = [[gen.tokenizer(" " + p.text, add_special_tokens=False)["input_ids"] for p in ps] for ps in PASSAGES]
    escaped = 0
    with torch.no_grad():
        for num_beams in (1, 2, 3):
            ids = rag._generate_ids(QUESTIONS, ctx, num_beams, 8)
            texts = gen.decode(ids)
            assert rag.generate(QUESTIONS, num_beams=num_beams, max_new_tokens=8, passages=PASSAGES) == texts
            for b, (answer, text) in enumerate(zip(ids, texts)):
                tokens = [t for t in answer if t != gen.eos_token_id]
                assert tokens and text, (num_beams, answer)  # never eos first
                assert any(contiguous_in(tokens, run) for run in runs[b]), (num_beams, answer)
                assert any(squashed(text) in squashed(p.text) for p in PASSAGES[b]), (num_beams, text)
            escaped += sum(not any(squashed(text) in squashed(p.text) for p in ps)
                           for text, ps in zip(free.generate(QUESTIONS, num_beams=num_beams, max_new_tokens=8,
                                                             passages=PASSAGES), PASSAGES))
    assert escaped  # unconstrained, the random model does write what no passage holds


def test_constrain_is_saved_with_the_model(index, tiny_bert_dir, t5, tmp_path):
    rag = make_rag(index, tiny_bert_dir, t5, n_docs=2, mode="token", constrain="spans").eval()
    with torch.no_grad():
        answers = rag.generate(QUESTIONS, num_beams=2, max_new_tokens=5)
    rag.save_pretrained(tmp_path / "rag")
    assert json.loads((tmp_path / "rag" / "rag_config.json").read_text())["config"]["constrain"] == "spans"
    loaded = RAG.from_pretrained(tmp_path / "rag").eval()
    assert loaded.config == rag.config
    with torch.no_grad():
        assert loaded.generate(QUESTIONS, num_beams=2, max_new_tokens=5) == answers
