"""Decoding: token ids out of a generator, for one passage a row or marginalised over k passages.

    >>> from ragloop.generation.decoding import beam_search, sequence_decode, token_beam_search
    >>> batch = gen.build_inputs(questions, passages)            # B questions x K passages each
    >>> beam_search(gen, batch, num_beams=4)                     # [B*K] best beam of each row on its own
    >>> token_beam_search(gen, batch, doc_logprobs, 4, 32)       # [B] RAG-Token: per-step marginal over K
    >>> sequence_decode(gen, batch, doc_logprobs, 4, 32)         # [B] RAG-Sequence: candidates, re-scored

`doc_logprobs` [B, K] is log p(z|x) of each question's passages. Each search takes a `constraint`: one
`constrain.PassageSpans` a question (a row, for `beam_search`) that answers are held to, added to the
log-probs as a mask at every step; None (the default) leaves the search as it was. The searches here
run the encoder once and the decoder step by step through `Generator.decoder_step`, so a generator's
copy head takes part; RAG-Sequence takes its candidates from transformers' `generate` when there is
no copy head (which `generate` knows nothing of). Results are lists of token ids ending in eos unless
`max_new_tokens` cut them; `Generator.decode` turns them into text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from transformers import LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutput

from ragloop._torch import eval_mode
from ragloop.generation.constrain import PassageSpans, SpanProcessor, beam_mask
from ragloop.generation.lm_head import weight_first


class Decodable(Protocol):
    """What decoding needs of a generator (`ragloop.generation.generator.Generator` is one): decoding is
    called by the generator and the readers, and never calls back into them."""

    model: torch.nn.Module  # the seq2seq model: its own `generate` gives RAG-Sequence candidates
    copy_head: torch.nn.Module | None

    @property
    def device(self) -> torch.device: ...
    @property
    def eos_token_id(self) -> int: ...
    @property
    def pad_token_id(self) -> int: ...
    @property
    def decoder_start_token_id(self) -> int: ...

    def __call__(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor, labels: torch.Tensor,
                 encoder_outputs=None) -> torch.Tensor: ...  # log p(gold y_t | x, y<t) [N, T]
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor): ...
    def copy_keys(self, encoder_outputs) -> torch.Tensor | None: ...
    def decoder_step(self, encoder_outputs, attention_mask: torch.Tensor, tokens: torch.Tensor, past=None,
                     input_ids: torch.Tensor | None = None, copy_keys: torch.Tensor | None = None): ...
    def pad_labels(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor: ...
    def modules(self) -> Iterator[torch.nn.Module]: ...  # `eval_mode` switches them to eval and back
    def eval(self): ...


def beam_search(gen: Decodable, inputs: dict, num_beams: int = 1, max_new_tokens: int = 32,
                encoded=None, constraint: Sequence[PassageSpans] | None = None) -> list[list[int]]:
    """The best beam (greedy at num_beams=1) of each row of `inputs` (from `build_inputs`), read on
    its own; the copy head takes part. Give `encoded` (from `encode`) to skip the encoder, and
    `constraint` (one a row) to hold the answers to it. Runs in eval mode (no dropout); call it under
    `torch.no_grad()` (`Generator.generate` does)."""
    rows = inputs["input_ids"].shape[0]
    inputs = {name: t.to(gen.device) for name, t in inputs.items()}
    with eval_mode(gen):
        return token_beam_search(gen, inputs, torch.zeros(rows, 1, device=gen.device), num_beams,
                                 max_new_tokens, encoded=encoded, constraint=constraint)


def token_beam_search(gen: Decodable, inputs: dict, doc_logprobs: torch.Tensor, num_beams: int,
                      max_new_tokens: int, length_penalty: float = 1.0, encoded=None,
                      constraint: Sequence[PassageSpans] | None = None) -> list[list[int]]:
    """Beam search (greedy when num_beams=1) on the RAG-Token marginal
    log Σ_z p(z|x) p(y_t|x,z,y<t): the encoder runs once (or not at all, given `encoded`), the
    decoder once per step for every (question, beam, passage) row, reusing its key/value cache.
    With a `constraint` (one a question), a beam continues only where it allows."""
    batch_size, k = doc_logprobs.shape
    nb = num_beams
    if encoded is None:
        encoded = gen.encode(inputs["input_ids"], inputs["attention_mask"])
    expand = torch.arange(batch_size * k, device=gen.device).view(batch_size, 1, k).expand(-1, nb, -1).reshape(-1)
    hidden = BaseModelOutput(last_hidden_state=encoded.last_hidden_state.index_select(0, expand))
    attention = inputs["attention_mask"].index_select(0, expand)
    source_ids = inputs["input_ids"].index_select(0, expand)
    copy_keys = gen.copy_keys(encoded)  # once per passage row, like the encoder
    copy_keys = None if copy_keys is None else copy_keys.index_select(0, expand)
    prior = doc_logprobs.view(batch_size, 1, k, 1)

    seqs = torch.full((batch_size, nb, 1), gen.decoder_start_token_id, dtype=torch.long, device=gen.device)
    beam_scores = torch.zeros(batch_size, nb, device=gen.device)
    beam_scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
    done = [False] * batch_size
    past = None
    for step in range(max_new_tokens):
        rows = seqs.unsqueeze(2).expand(-1, -1, k, -1).reshape(batch_size * nb * k, -1)
        logprobs, past = gen.decoder_step(hidden, attention, rows if past is None else rows[:, -1:], past,
                                          input_ids=source_ids, copy_keys=copy_keys)
        vocab = logprobs.shape[-1]
        marginal = torch.logsumexp(logprobs.view(batch_size, nb, k, vocab) + prior, dim=2)  # [B, nb, V]
        if constraint is not None:
            marginal = marginal + beam_mask(constraint, seqs, vocab)
        top_scores, top_ids = (beam_scores.unsqueeze(-1) + marginal).view(batch_size, -1).topk(2 * nb, dim=1)
        source, tokens, beam_scores = _advance_beams(gen, top_scores, top_ids, seqs, vocab, step + 1,
                                                     length_penalty, finished, done)
        seqs = torch.cat([seqs.gather(1, source.unsqueeze(-1).expand_as(seqs)), tokens.unsqueeze(-1)], dim=-1)
        if all(done):
            break
        if past is not None and nb > 1:  # greedy keeps every row where it is: nothing to reorder
            if hasattr(past, "reorder_cache"):
                order = (torch.arange(batch_size, device=gen.device).view(-1, 1) * nb + source)  # [B, nb]
                order = (order.unsqueeze(-1) * k + torch.arange(k, device=gen.device)).reshape(-1)
                _reorder_prefix_cache(past, order)
            else:  # a legacy tuple cache: recompute from the full prefix instead
                past = None
    return _best_sequences(seqs, beam_scores, finished, done, length_penalty)


def _advance_beams(gen: Decodable, top_scores: torch.Tensor, top_ids: torch.Tensor, seqs: torch.Tensor, vocab: int,
                   length: int, length_penalty: float, finished: list[list[tuple[float, list[int]]]],
                   done: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of every question's beams from its 2·nb best (beam, token) continuations: a continuation
    ending in eos among the nb best finishes (into `finished`), the nb best others go on; one of
    score -inf (a constraint's mask) never does either. A question is `done` once nb beams finished
    and no live beam can beat them, or when none goes on. Returns (the beam each new beam
    continues [B, nb], its new token [B, nb], its score [B, nb])."""
    batch_size, nb = seqs.shape[:2]
    eos = gen.eos_token_id
    source = torch.arange(nb, device=gen.device).repeat(batch_size, 1)
    tokens = torch.full((batch_size, nb), gen.pad_token_id, dtype=torch.long, device=gen.device)
    new_scores = torch.full((batch_size, nb), float("-inf"), device=gen.device)
    for b in range(batch_size):
        if done[b]:
            continue
        j = 0
        for rank, (score, flat) in enumerate(zip(top_scores[b].tolist(), top_ids[b].tolist())):
            if score == float("-inf"):  # the rest are no better: nothing a constraint allows
                break
            beam, token = divmod(flat, vocab)
            if token == eos:
                if rank < nb:
                    finished[b].append((score / length**length_penalty, seqs[b, beam, 1:].tolist() + [eos]))
                continue
            source[b, j], tokens[b, j], new_scores[b, j] = beam, token, score
            j += 1
            if j == nb:
                break
        if j == 0:  # no beam goes on (a constraint allowed only eos): what finished is all there is
            done[b] = True
        elif len(finished[b]) >= nb:
            best_live = new_scores[b].max().item() / length**length_penalty
            done[b] = best_live <= min(s for s, _ in finished[b])
    return source, tokens, new_scores


def _best_sequences(seqs: torch.Tensor, beam_scores: torch.Tensor, finished: list[list[tuple[float, list[int]]]],
                    done: list[bool], length_penalty: float) -> list[list[int]]:
    """Each question's best finished beam, its live beams counted as finished where the search ran out
    of steps before it was done ([] where no beam ever lived)."""
    results = []
    for b in range(len(finished)):
        if not done[b]:
            length = seqs.shape[-1] - 1
            finished[b].extend((s / length**length_penalty, seqs[b, i, 1:].tolist())
                               for i, s in enumerate(beam_scores[b].tolist()) if s > float("-inf"))
        results.append(max(finished[b], key=lambda item: item[0])[1] if finished[b] else [])
    return results


def _reorder_prefix_cache(past, order: torch.Tensor) -> None:
    """Move the decoder cache's rows to the beams they continue in. Only the self-attention part
    depends on the prefix: row (question, beam, passage) cross-attends to passage (question,
    passage) whichever beam it holds, so an encoder-decoder cache's cross-attention keys and values
    (the passage length long, against at most max_new_tokens for the prefix) stay where they are."""
    self_attention = getattr(past, "self_attention_cache", None)
    (past if self_attention is None else self_attention).reorder_cache(order)


def sequence_decode(gen: Decodable, inputs: dict, doc_logprobs: torch.Tensor, num_beams: int,
                    max_new_tokens: int, rescore_batch_size: int = 64,
                    constraint: Sequence[PassageSpans] | None = None) -> list[list[int]]:
    """RAG-Sequence ("thorough") decoding: beam (or greedy) candidates from each passage, each
    candidate re-scored as log Σ_z p(z|x) p(y|x,z) over all k passages, `rescore_batch_size`
    generator rows a forward; the best one wins. Greedy candidates bring log p(y|x,z) of the passage
    that wrote them from the search, so only the other passages' terms take a forward. With a
    `constraint` (one a question), every passage's candidates are written under its question's."""
    batch_size, k = doc_logprobs.shape
    encoded = gen.encode(inputs["input_ids"], inputs["attention_mask"])  # once, for generating and re-scoring
    per_question, known = _sequence_candidates(gen, inputs, encoded, batch_size, k, num_beams, max_new_tokens,
                                               constraint)
    # a question whose passages all gave the same candidate needs no re-scoring
    pairs = [(b, c) for b in range(batch_size) if len(per_question[b]) > 1 for c in per_question[b]]
    scores = _rescore(gen, inputs, encoded, doc_logprobs, pairs, rescore_batch_size, known)
    best: list[list[int]] = []
    for b in range(batch_size):
        idx = [i for i, (owner, _) in enumerate(pairs) if owner == b]
        best.append(list(pairs[max(idx, key=lambda i: scores[i].item())][1]) if idx else list(per_question[b][0]))
    return best


def _sequence_candidates(gen: Decodable, inputs: dict, encoded, batch_size: int, k: int, num_beams: int,
                         max_new_tokens: int, constraint: Sequence[PassageSpans] | None = None
                         ) -> tuple[list[list[tuple[int, ...]]], dict[int, tuple[tuple[int, ...], float]]]:
    """Each question's distinct candidates, in the order its passages gave them, and for greedy
    candidates from `generate` each row's own (candidate, log p(candidate|x,z)) by row b*k + z. Under a
    `constraint`, a candidate it does not accept is dropped (transformers' `generate` fills its beams
    up with such where the constraint allows fewer); a question left with none gets the empty answer."""
    row_spans = None if constraint is None else [constraint[row // k] for row in range(batch_size * k)]
    known: dict[int, tuple[tuple[int, ...], float]] = {}
    if gen.copy_head is None:
        processors = None if row_spans is None else LogitsProcessorList([SpanProcessor(row_spans, num_beams)])
        with weight_first(gen.model):
            out = gen.model.generate(encoder_outputs=encoded, attention_mask=inputs["attention_mask"],
                                     num_beams=num_beams, num_return_sequences=num_beams,
                                     max_new_tokens=max_new_tokens, do_sample=False, logits_processor=processors,
                                     return_dict_in_generate=True, output_logits=num_beams == 1)
        candidates, per_row = out.sequences[:, 1:].tolist(), k * num_beams  # drop the decoder start token
        if num_beams == 1:
            known = _own_scores(out.logits, candidates, gen.eos_token_id)
    else:  # transformers' generate knows nothing of the copy head: the best beam of each passage
        with torch.no_grad():
            candidates = beam_search(gen, inputs, num_beams, max_new_tokens, encoded=encoded, constraint=row_spans)
            per_row = k
    per_question: list[list[tuple[int, ...]]] = [[] for _ in range(batch_size)]
    for i, row in enumerate(candidates):
        cand = tuple(cut_at_eos(row, gen.eos_token_id))
        bucket = per_question[i // per_row]
        if cand not in bucket and (constraint is None or constraint[i // per_row].accepts(cand)):
            bucket.append(cand)
    return [bucket or [(gen.eos_token_id,)] for bucket in per_question], known


def _own_scores(logits: Sequence[torch.Tensor], candidates: list[list[int]], eos: int
                ) -> dict[int, tuple[tuple[int, ...], float]]:
    """Row -> (its greedy candidate, log p(candidate|x,z)) from `generate`'s raw logits (one [rows, V]
    a step): the same log-probs the re-scoring forward would compute, to rounding."""
    ids = torch.tensor(candidates, device=logits[0].device)[:, : len(logits)]
    steps = torch.stack([torch.log_softmax(step.float(), dim=-1).gather(-1, ids[:, t : t + 1]).squeeze(-1)
                         for t, step in enumerate(logits)], dim=1)  # [rows, steps]
    known = {}
    for row, tokens in enumerate(candidates):
        cand = tuple(cut_at_eos(tokens, eos))
        known[row] = (cand, float(steps[row, : len(cand)].sum()))
    return known


def _rescore(gen: Decodable, inputs: dict, encoded, doc_logprobs: torch.Tensor,
             pairs: list[tuple[int, tuple[int, ...]]], batch_size: int,
             known: dict[int, tuple[tuple[int, ...], float]] | None = None) -> torch.Tensor:
    """log Σ_z p(z|x) p(y|x,z) of each (question, candidate) pair [P], reusing the encoder's states; a
    term of `known` (row b*k + z -> (candidate, log p)) is taken as it is, the others `batch_size`
    generator rows a forward."""
    k = doc_logprobs.shape[1]
    known = known or {}
    seq = torch.zeros(len(pairs), k, device=gen.device)
    todo = []  # (pair, row) whose log p(y|x,z) needs a forward
    for p, (b, cand) in enumerate(pairs):
        for z in range(k):
            own = known.get(b * k + z)
            if own is not None and own[0] == cand:
                seq[p, z] = own[1]
            else:
                todo.append((p, b * k + z))
    for start in range(0, len(todo), max(1, batch_size)):
        chunk = todo[start : start + max(1, batch_size)]
        rows = torch.tensor([r for _, r in chunk], device=gen.device)
        labels = gen.pad_labels([pairs[p][1] for p, _ in chunk]).to(gen.device)
        hidden = BaseModelOutput(last_hidden_state=encoded.last_hidden_state.index_select(0, rows))
        got = gen(inputs["input_ids"].index_select(0, rows), inputs["attention_mask"].index_select(0, rows),
                  labels, encoder_outputs=hidden).sum(-1)
        seq[[p for p, _ in chunk], [r % k for _, r in chunk]] = got
    owners = torch.tensor([b for b, _ in pairs], device=gen.device, dtype=torch.long)
    return torch.logsumexp(doc_logprobs[owners] + seq, dim=1)


def cut_at_eos(tokens: list[int], eos: int) -> list[int]:
    """`tokens` up to and including the first eos (all of them when there is none)."""
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
