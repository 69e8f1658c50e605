"""The decoders' shortcuts against straightforward references on tiny models: the same token ids."""

from __future__ import annotations

import pytest
import torch

from ragloop.generation import Generator
from ragloop.generation.decoding import token_beam_search

QUESTIONS = ["Which NFL team represented the AFC at Super Bowl 50?", "Where did Super Bowl 50 take place?"]
K = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def generators(tiny_t5_dir, tiny_bert_dir) -> dict[str, Generator]:
    torch.manual_seed(0)
    copier = Generator.from_encoder_decoder(str(tiny_bert_dir), str(tiny_bert_dir), copy=True)
    with torch.no_grad():  # a trained-looking copy head, not its identity start
        for p in copier.copy_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return {"t5": Generator.from_pretrained(str(tiny_t5_dir)),
            "bert2bert": Generator.from_encoder_decoder(str(tiny_bert_dir), str(tiny_bert_dir)),
            "copier": copier}


@pytest.fixture(scope="module")
def passages(passages):
    """Two questions' K passages each, from the shared `passages` (conftest.py)."""
    return [passages[0:K], passages[K : 2 * K]]


class Uncached:
    """A generator whose decoder step hands back no cache, so the search recomputes every step from
    the whole prefix: nothing is reordered or reused."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen

    def __getattr__(self, name):
        return getattr(self.gen, name)

    def decoder_step(self, *args, **kwargs):
        logprobs, _ = self.gen.decoder_step(*args, **kwargs)
        return logprobs, None


def _eos_settings(gen: Generator, inputs: dict, doc_logprobs: torch.Tensor):
    """The real eos, then a token greedy decoding emits second (so hypotheses end early)."""
    yield gen.eos_token_id
    yield token_beam_search(gen, inputs, doc_logprobs, 1, 4)[0][1]


def _set_eos(gen: Generator, eos: int) -> None:
    gen.model.config.eos_token_id = gen.model.generation_config.eos_token_id = eos


@pytest.mark.parametrize("which", ["t5", "bert2bert", "copier"])
@pytest.mark.parametrize("num_beams", [1, 4])
def test_token_search_with_cache_equals_recomputing_every_step(generators, passages, which, num_beams):
    """RAG-Token beam search (greedy at 1 beam) reuses the decoder cache, moving only its
    self-attention rows between beams (greedy: none); recomputing every step from the prefix gives
    the same ids, with the real eos and with one that ends hypotheses early."""
    gen = generators[which]
    inputs = gen.build_inputs(QUESTIONS, passages)
    doc_logprobs = torch.log_softmax(torch.tensor([[0.5, 0.0, -1.0], [-0.3, 1.0, 0.2]]), dim=-1)
    saved = gen.model.config.eos_token_id, gen.model.generation_config.eos_token_id
    try:
        with torch.no_grad():
            for eos in list(_eos_settings(gen, inputs, doc_logprobs)):
                _set_eos(gen, eos)
                got = token_beam_search(gen, inputs, doc_logprobs, num_beams, 12)
                assert got == token_beam_search(Uncached(gen), inputs, doc_logprobs, num_beams, 12)
                assert all(len(ids) <= 12 for ids in got)
    finally:
        gen.model.config.eos_token_id, gen.model.generation_config.eos_token_id = saved


@pytest.mark.parametrize("constrain", [None, "spans"])
def test_greedy_sequence_rescoring_reuses_each_passages_own_score(generators, passages, constrain):
    """RAG-Sequence greedy: a candidate's log p(y|x,z) in the passage that wrote it comes from the
    search, the other passages' from a forward; the scores are those of a forward over every
    (candidate, passage) pair, to rounding (candidates of the passages and one none of them wrote),
    and the answers are the same."""
    from ragloop.generation.constrain import answer_constraint
    from ragloop.generation.decoding import _rescore, _sequence_candidates, sequence_decode

    gen = generators["t5"]
    pool = [p for ps in passages for p in ps]
    other = tuple(gen.tokenizer("Santa Clara", add_special_tokens=False)["input_ids"]) + (gen.eos_token_id,)
    for seed in range(3):
        torch.manual_seed(seed)
        chosen = [[pool[i] for i in torch.randperm(len(pool))[:4].tolist()] for _ in QUESTIONS]
        inputs = gen.build_inputs(QUESTIONS, chosen)
        doc_logprobs = torch.log_softmax(torch.randn(len(QUESTIONS), 4) * 2, dim=-1)
        constraint = answer_constraint(gen, inputs, 4, constrain)
        with torch.no_grad():
            encoded = gen.encode(inputs["input_ids"], inputs["attention_mask"])
            per_question, known = _sequence_candidates(gen, inputs, encoded, len(QUESTIONS), 4, 1, 6, constraint)
            pairs = [(b, c) for b in range(len(QUESTIONS)) for c in [*per_question[b], other]]
            reused = _rescore(gen, inputs, encoded, doc_logprobs, pairs, 64, known)
            forward = _rescore(gen, inputs, encoded, doc_logprobs, pairs, 5)
            got = sequence_decode(gen, inputs, doc_logprobs, 1, 6, constraint=constraint)
        assert sorted(known) == list(range(len(QUESTIONS) * 4))
        assert any(own in per_question[row // 4] for row, (own, _) in known.items())
        torch.testing.assert_close(reused, forward, rtol=1e-4, atol=1e-4)
        want = []
        for b in range(len(QUESTIONS)):
            idx = [i for i, (owner, c) in enumerate(pairs) if owner == b and c != other]
            want.append(list(pairs[max(idx, key=lambda i: forward[i].item())][1]))
        assert got == want
