"""Greedy RAG-Token decoding that leaves out the passages whose p(z|x) cannot change the answer.

    >>> from ragloop.generation.pruning import PruneStats, greedy_token_decode
    >>> greedy_token_decode(gen, inputs, doc_logprobs, 32)                  # [B] ids, as token_beam_search(.., 1, 32)
    >>> greedy_token_decode(gen, inputs, doc_logprobs, 32, prune_mass=0.0)  # every passage at every step
    >>> stats = PruneStats(); greedy_token_decode(gen, inputs, doc_logprobs, 32, stats=stats); stats.fallbacks

`inputs` and `doc_logprobs` [B, K] as for `decoding.token_beam_search`; the answer is the one its greedy
search (num_beams=1) gives, token for token.

Why it is exact. Greedy RAG-Token writes, at each step, argmax_y m(y) with the marginal
m(y) = Σ_z p(z|x) p(y|x,z,y<t) over all K passages (under a constraint, over the tokens it allows).
Keep passages K' and leave out the others, of mass eps = Σ_{z∉K'} p(z|x). Every p(y|x,z,y<t) lies in
[0, 1], so with m'(y) = Σ_{z∈K'} p(z|x) p(y|x,z,y<t):

    m'(y) <= m(y) <= m'(y) + eps          for every token y.

Let a = argmax m'. If m'(a) - m'(b) > eps for every b != a (the margin test: top-1 minus top-2 of m'),
then m(a) >= m'(a) > m'(b) + eps >= m(b): a is also the argmax of the full marginal, and the search
writes the same token. By induction over the steps (the prefix y<t is then the same too) the whole
answer is the same as over all K passages, its stopping at eos included (greedy stops exactly when
eos is the argmax). Where a step fails the test, that question's left-out passages are brought in: the
decoder reruns over the prefix for every row still decoding (no cache to catch up), and that step and
the rest of the question's answer use all K passages. The test carries a margin for rounding
(`SLACK`): the full search computes m in float32 too, so a margin within rounding of eps falls back.

Which passages to leave out: the step before any pruning (step 0) runs every passage, which gives
the exact full marginal and its margin. Then the lowest-p(z|x) passages go, as long as their total
mass stays within `prune_mass` and within `margin_share` times step 0's margin (a margin that small
would fail the test at the next steps anyway, and each failure costs a rerun over the prefix). So a
model whose next-token distributions are flat (an untrained one) prunes nothing and pays only for a
top-2 per step; a confident one drops the passages the retriever barely trusts. A question whose
answer is finished drops all its rows. Without a cache that rows can be taken out of (a legacy tuple
cache), every change of rows reruns the prefix; the answer is the same.

RAG-Sequence ("thorough": a greedy candidate from every passage, the best by
s(y) = Σ_z p(z|x) p(y|x,z) over all K) is not pruned. The bound that would allow it: with candidates C
from the kept passages K' and their terms computed, each c in C has
s'(c) <= s(c) <= s'(c) + eps (s' over K'); a candidate y' that a left-out passage would add (y' not in C)
has s(y') <= eps + Σ_{z∈K'} p(z|x) (1 - Σ_{c∈C} p(c|x,z)), since p(y'|x,z) can take at most the mass z
leaves outside C. So if max s' beats every other candidate's s' + eps and that bound, the answer is
exact without decoding or re-scoring the left-out passages. Unlike RAG-Token's, the test comes only
after the kept passages' candidates are decoded and cross-scored (all of the work but the left-out
rows), and it needs the candidates to hold most of each passage's sequence probability, which
sequence probabilities (products over tokens) rarely do; not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutput

from ragloop.constants import PRUNE_MASS
from ragloop.generation.constrain import PassageSpans, beam_mask
from ragloop.generation.decoding import Decodable

MARGIN_SHARE = 0.5  # left-out mass at most this share of step 0's top-1 minus top-2 marginal
SLACK = 1e-4  # the margin test's allowance for float32 rounding (probabilities, so absolute)


@dataclass
class PruneStats:
    """What a `greedy_token_decode` call did: passage rows left out at step 0, questions that fell back
    to all passages, decoder row-steps run (rows × steps, reruns included)."""

    pruned_rows: int = 0
    fallbacks: int = 0
    row_steps: int = 0


class _Rows:
    """The (question, passage) rows still decoding, with their encoder states, mask and source ids."""

    def __init__(self, gen: Decodable, inputs: dict, encoded, active: torch.Tensor) -> None:
        self.gen, self.inputs, self.encoded, self.active = gen, inputs, encoded, active
        self.copy_keys = gen.copy_keys(encoded)
        self._select()

    def _select(self) -> None:
        idx = self.active
        self.hidden = BaseModelOutput(last_hidden_state=self.encoded.last_hidden_state.index_select(0, idx))
        self.attention = self.inputs["attention_mask"].index_select(0, idx)
        self.source_ids = self.inputs["input_ids"].index_select(0, idx)
        self.keys = None if self.copy_keys is None else self.copy_keys.index_select(0, idx)

    def set(self, active: torch.Tensor, past):
        """Decode `active` rows from now on; returns the cache cut to them (None: rerun the prefix)."""
        if torch.equal(active, self.active):
            return past
        keep = torch.isin(self.active, active)
        subset = bool(torch.isin(active, self.active).all())  # rows only left, none came in
        self.active = active
        self._select()
        if past is None or not subset or not hasattr(past, "reorder_cache"):
            return None
        past.reorder_cache(keep.nonzero().squeeze(-1))
        return past

    def step(self, seqs: torch.Tensor, past, k: int):
        """log p(y_t|x,z,y<t) [rows, V] of the active rows, and the cache."""
        rows = seqs.index_select(0, self.active // k)
        return self.gen.decoder_step(self.hidden, self.attention, rows if past is None else rows[:, -1:], past,
                                     input_ids=self.source_ids, copy_keys=self.keys)


def greedy_token_decode(gen: Decodable, inputs: dict, doc_logprobs: torch.Tensor, max_new_tokens: int,
                        constraint: Sequence[PassageSpans] | None = None, prune_mass: float = PRUNE_MASS,
                        margin_share: float = MARGIN_SHARE, encoded=None,
                        stats: PruneStats | None = None) -> list[list[int]]:
    """Greedy RAG-Token answers [B], the same as `token_beam_search(..., num_beams=1)`, decoding only
    the passages the margin test (module docstring) shows cannot change them. `prune_mass` 0 decodes
    every passage; `stats` (a `PruneStats`) is filled in. Call under `torch.no_grad()`, in eval mode."""
    batch_size, k = doc_logprobs.shape
    stats = stats if stats is not None else PruneStats()
    if encoded is None:
        encoded = gen.encode(inputs["input_ids"], inputs["attention_mask"])
    rows = _Rows(gen, inputs, encoded, torch.arange(batch_size * k, device=gen.device))
    seqs = torch.full((batch_size, 1), gen.decoder_start_token_id, dtype=torch.long, device=gen.device)
    kept = torch.ones(batch_size, k, dtype=torch.bool, device=gen.device)
    eps = torch.zeros(batch_size, device=gen.device)  # the p(z|x) each question leaves out
    results: list[list[int] | None] = [None] * batch_size
    past, step = None, 0
    while step < max_new_tokens:
        logprobs, past = rows.step(seqs, past, k)
        stats.row_steps += logprobs.shape[0]
        marginal = _marginal(logprobs, rows.active, doc_logprobs)
        if constraint is not None:
            marginal = marginal + beam_mask(constraint, seqs.unsqueeze(1), marginal.shape[-1]).squeeze(1)
        top = marginal.topk(2, dim=-1)
        failed = _failed(top.values, eps, results)
        if failed:  # bring those questions' passages back and rerun this step over the prefix
            kept[failed] = True
            eps[failed] = 0.0
            stats.fallbacks += len(failed)
            past = rows.set(_active(kept, results), None)
            continue
        if step == 0 and prune_mass > 0:  # step 0 ran every passage: its marginal is exact
            eps = _prune(kept, doc_logprobs, top.values.exp(), prune_mass, margin_share, results)
            stats.pruned_rows += int((~kept).sum())
        tokens = top.indices[:, 0]
        _advance(gen, seqs, tokens, top.values[:, 0], results)
        seqs = torch.cat([seqs, tokens.unsqueeze(-1)], dim=-1)
        step += 1
        if all(r is not None for r in results):
            break
        past = rows.set(_active(kept, results), past)
    return [seqs[b, 1:].tolist() if r is None else r for b, r in enumerate(results)]


def _marginal(logprobs: torch.Tensor, active: torch.Tensor, doc_logprobs: torch.Tensor) -> torch.Tensor:
    """log m'(y) [B, V]: log Σ_z p(z|x) p(y|x,z,y<t) over each question's active rows (others -inf)."""
    batch_size, k = doc_logprobs.shape
    full = logprobs.new_full((batch_size * k, logprobs.shape[-1]), float("-inf"))
    full.index_copy_(0, active, logprobs)
    return torch.logsumexp(full.view(batch_size, k, -1) + doc_logprobs.view(batch_size, k, 1), dim=1)


def _prune(kept: torch.Tensor, doc_logprobs: torch.Tensor, top2: torch.Tensor, prune_mass: float,
           margin_share: float, results: list) -> torch.Tensor:
    """Leave out each unfinished question's lowest-p(z|x) passages, their mass within `prune_mass` and
    `margin_share` × its full marginal's top-1 minus top-2 (`top2` [B, 2], probabilities); at least one
    passage stays. Updates `kept` [B, K]; returns the mass left out [B]."""
    probs = doc_logprobs.exp()
    budget = torch.minimum(torch.full_like(top2[:, 0], prune_mass), margin_share * (top2[:, 0] - top2[:, 1]))
    order = probs.argsort(dim=1)  # lowest first
    cumulative = probs.gather(1, order).cumsum(dim=1)
    leave = cumulative <= budget.unsqueeze(1)
    leave[:, -1] = False
    for b, r in enumerate(results):
        if r is None:
            kept[b, order[b][leave[b]]] = False
    return (probs * ~kept).sum(dim=1)


def _failed(top2: torch.Tensor, eps: torch.Tensor, results: list) -> list[int]:
    """The unfinished questions with passages left out whose margin m'(a) - m'(b) is not > eps + SLACK
    (`top2` [B, 2]: log m' of the two best tokens; a single token allowed by a constraint passes)."""
    probs = top2.exp()
    fails = (eps > 0) & (top2[:, 1] > float("-inf")) & ~(probs[:, 0] - probs[:, 1] > eps + SLACK)
    return [b for b in fails.nonzero().flatten().tolist() if results[b] is None]


def _active(kept: torch.Tensor, results: list) -> torch.Tensor:
    """The row numbers (b * K + z) of the kept passages of unfinished questions."""
    live = torch.tensor([r is None for r in results], device=kept.device)
    return (kept & live.unsqueeze(1)).flatten().nonzero().squeeze(-1)


def _advance(gen: Decodable, seqs: torch.Tensor, tokens: torch.Tensor, scores: torch.Tensor,
             results: list) -> None:
    """Finish the questions whose argmax is eos (the answer ends with it) or whose every token is
    -inf (a constraint allowed nothing: the empty answer), as the greedy beam search does."""
    eos = gen.eos_token_id
    for b, (token, score) in enumerate(zip(tokens.tolist(), scores.tolist())):
        if results[b] is not None:
            continue
        if score == float("-inf"):
            results[b] = []
        elif token == eos:
            results[b] = seqs[b, 1:].tolist() + [eos]
