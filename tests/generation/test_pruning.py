"""Greedy RAG-Token with passages pruned (pruning.py) against the full search: the same token ids, for
many random questions, passages and p(z|x), peaked and flat, confident and unsure models, the
fallback included."""

from __future__ import annotations

import random

import pytest
import torch

from ragloop.generation import Generator
from ragloop.generation.constrain import answer_constraint
from ragloop.generation.decoding import token_beam_search
from ragloop.generation.pruning import PruneStats, greedy_token_decode

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ["Which NFL team represented the AFC at Super Bowl 50?", "Where did Super Bowl 50 take place?",
             "Who won?", "What colour was used to emphasize the 50th anniversary?", "when", "How many points?"]
STEPS = 8


class Sharpened:
    """A generator whose next-token distributions are softmax(factor · log p): factor > 1 makes a
    confident model (wide margins, pruning pays), 1 leaves the tiny random one unsure."""

    def __init__(self, gen: Generator, factor: float) -> None:
        self.gen, self.factor = gen, factor

    def __getattr__(self, name):
        return getattr(self.gen, name)

    def decoder_step(self, *args, **kwargs):
        logprobs, past = self.gen.decoder_step(*args, **kwargs)
        return torch.log_softmax(self.factor * logprobs, dim=-1), past


class Uncached(Sharpened):
    """No cache to take rows out of: every change of rows reruns the prefix."""

    def decoder_step(self, *args, **kwargs):
        return super().decoder_step(*args, **kwargs)[0], None


@pytest.fixture(scope="module")
def generators(tiny_t5_dir, tiny_bert_dir) -> dict[str, Generator]:
    torch.manual_seed(0)
    copier = Generator.from_encoder_decoder(str(tiny_bert_dir), str(tiny_bert_dir), copy=True)
    with torch.no_grad():
        for p in copier.copy_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return {"t5": Generator.from_pretrained(str(tiny_t5_dir)), "copier": copier.eval()}


def _case(rng: random.Random, passages: list, peaked: bool):
    """Random questions (1-3), k (1-4) random passages each, and a peaked or flat p(z|x)."""
    batch, k = rng.randint(1, 3), rng.randint(1, 4)
    questions = [rng.choice(QUESTIONS) for _ in range(batch)]
    chosen = [rng.sample(passages, k) for _ in range(batch)]
    scale = 6.0 if peaked else 0.3
    scores = torch.tensor([[rng.gauss(0, 1) * scale for _ in range(k)] for _ in range(batch)])
    return questions, chosen, torch.log_softmax(scores, dim=-1)


def _both(gen, inputs, doc_logprobs, constraint=None, **prune) -> tuple[list, list, PruneStats]:
    stats = PruneStats()
    with torch.no_grad():
        full = token_beam_search(gen, inputs, doc_logprobs, 1, STEPS, constraint=constraint)
        pruned = greedy_token_decode(gen, inputs, doc_logprobs, STEPS, constraint, stats=stats, **prune)
    return full, pruned, stats


@pytest.mark.parametrize("which", ["t5", "copier"])
@pytest.mark.parametrize("factor", [1.0, 40.0])
def test_pruned_greedy_equals_full_search(generators, passages, which, factor):
    """Over many random cases the pruned search writes the full search's answer token for token; a
    confident model prunes passages, and forcing pruning on (no margin guard) exercises the fallback."""
    gen = Sharpened(generators[which], factor)
    rng = random.Random(f"{which}-{factor}")
    totals = PruneStats()
    for case in range(8):
        questions, chosen, doc_logprobs = _case(rng, passages, peaked=case % 2 == 0)
        inputs = gen.build_inputs(questions, chosen)
        for prune in ({"prune_mass": 0.0}, {"prune_mass": 0.5}, {"prune_mass": 0.9, "margin_share": float("inf")}):
            full, pruned, stats = _both(gen, inputs, doc_logprobs, **prune)
            assert pruned == full, (case, prune)
            if prune["prune_mass"] == 0:
                assert stats.pruned_rows == 0 and stats.fallbacks == 0
            totals.pruned_rows += stats.pruned_rows
            totals.fallbacks += stats.fallbacks
    assert totals.pruned_rows > 0
    assert totals.fallbacks > 0


def test_confident_model_with_peaked_retrieval_decodes_fewer_rows(generators, passages):
    """The point of it: with one passage trusted most and a confident model, the other rows stop after
    step 0 and the answer is still the full search's."""
    gen = Sharpened(generators["t5"], 40.0)
    inputs = gen.build_inputs(QUESTIONS[:2], [passages[:4], passages[4:8]])
    doc_logprobs = torch.log_softmax(torch.tensor([[8.0, 1.0, 0.5, 0.0], [0.0, 9.0, 1.0, 1.0]]), dim=-1)
    full, pruned, stats = _both(gen, inputs, doc_logprobs, prune_mass=0.1)
    assert pruned == full
    assert stats.pruned_rows == 6 and stats.fallbacks == 0
    steps = max(len(a) for a in full)
    assert stats.row_steps < 8 * steps


def test_fallback_reruns_the_prefix_and_keeps_the_answer(generators, passages):
    """An unsure model with passages forced out fails the margin test: the question falls back to all
    its passages (cached and uncached decoder alike) and answers as the full search does."""
    for wrap in (Sharpened, Uncached):
        gen = wrap(generators["t5"], 1.0)
        inputs = gen.build_inputs(QUESTIONS[:2], [passages[:3], passages[3:6]])
        doc_logprobs = torch.log_softmax(torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.5, 2.0]]), dim=-1)
        full, pruned, stats = _both(gen, inputs, doc_logprobs, prune_mass=0.9, margin_share=float("inf"))
        assert pruned == full
        assert stats.pruned_rows > 0 and stats.fallbacks == 2


@pytest.mark.parametrize("which", ["t5", "copier"])
def test_pruned_greedy_under_a_constraint(generators, passages, which):
    """Answers held to the passages' spans: the pruned search still writes the full search's answer."""
    rng = random.Random(which)
    for factor in (1.0, 40.0):
        gen = Sharpened(generators[which], factor)
        for case in range(4):
            questions, chosen, doc_logprobs = _case(rng, passages, peaked=case % 2 == 0)
            inputs = gen.build_inputs(questions, chosen)
            constraint = answer_constraint(gen, inputs, doc_logprobs.shape[1], "spans")
            for prune in ({"prune_mass": 0.5}, {"prune_mass": 0.9, "margin_share": float("inf")}):
                full, pruned, _ = _both(gen, inputs, doc_logprobs, constraint, **prune)
                assert pruned == full


def test_early_eos_finishes_questions_apart(generators, passages):
    """With an eos the model writes early, questions finish at different steps and drop their rows;
    the answers match the full search, each ending in eos where it stopped."""
    t5 = generators["t5"]
    gen = Sharpened(t5, 40.0)
    inputs = gen.build_inputs(QUESTIONS[:3], [passages[:3], passages[3:6], passages[6:9]])
    doc_logprobs = torch.log_softmax(torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 4.0], [1.0, 1.0, 1.0]]), dim=-1)
    with torch.no_grad():
        first = token_beam_search(gen, inputs, doc_logprobs, 1, 4)
    saved = t5.model.config.eos_token_id, t5.model.generation_config.eos_token_id
    t5.model.config.eos_token_id = t5.model.generation_config.eos_token_id = first[0][1]
    try:
        full, pruned, _ = _both(gen, inputs, doc_logprobs, prune_mass=0.5)
    finally:
        t5.model.config.eos_token_id, t5.model.generation_config.eos_token_id = saved
    assert pruned == full
    assert full[0][-1] == first[0][1] and len(full[0]) <= 2
