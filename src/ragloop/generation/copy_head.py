"""The copy head: a pointer-generator output that lets a generator answer with words of the passage.

    >>> from ragloop.generation import CopyHead, Generator
    >>> gen = Generator(model, tokenizer, copy_head=CopyHead(d_model))        # any seq2seq generator
    >>> gen = Generator.from_pretrained("bundled:minilm-bert2bert")            # has one already
    >>> gen.copy_head.gold(logits, decoder_states, keys, source_ids, copyable, labels)   # log p(gold) [N, T]

Its output mixes the vocabulary softmax with a copy distribution over the source tokens, so a
warm-started BERT2BERT can answer from the passage before its fresh cross-attention has learnt to
read. The generator saves it as `copy_head.safetensors` next to the model (`save_copy_head`,
`load_copy_head`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ragloop.errors import RagloopError, first_line

COPY_HEAD_FILE = "copy_head.safetensors"


class CopyHead(torch.nn.Module):
    """A pointer-generator output (See et al. 2017): p(y_t) = g p_vocab(y_t) + (1 - g) p_copy(y_t),
    where p_copy puts the weight of one attention head, from the decoder's last state over the
    encoder's last states, on the source tokens, and the gate g is learnt from the decoder state.
    A row with nothing to copy (no source token but padding and special tokens) takes g = 1.

    A warm-started BERT2BERT has to learn reading through fresh cross-attention, which a few hundred
    CPU steps do not teach it: it answers from the question alone. With this head it learns to copy
    the answer from the passage in the same budget (`python -m bench.experiments --only warm-start`).
    Query and key start as the identity when encoder and decoder states have one size (copy the source
    token most like the decoder state), the gate at g = sigmoid(-1) (mostly copying)."""

    def __init__(self, hidden_size: int, encoder_hidden_size: int | None = None) -> None:
        super().__init__()
        encoder_hidden_size = encoder_hidden_size or hidden_size
        self.hidden_size = hidden_size
        self.query = torch.nn.Linear(hidden_size, hidden_size)
        self.key = torch.nn.Linear(encoder_hidden_size, hidden_size)
        self.gate = torch.nn.Linear(hidden_size, 1)
        with torch.no_grad():
            for layer in (self.query, self.key):
                if layer.in_features == layer.out_features:
                    layer.weight.copy_(torch.eye(hidden_size))
                    layer.bias.zero_()
            self.gate.weight.zero_()
            self.gate.bias.fill_(-1.0)

    def keys(self, encoder_states: torch.Tensor) -> torch.Tensor:
        """The attention keys [N, S, H] of the encoder's last states, once per encoding."""
        with torch.autocast(device_type=encoder_states.device.type, enabled=False):
            return self.key(encoder_states.to(self.key.weight.dtype)).float()

    def _attention(self, decoder_states: torch.Tensor, keys: torch.Tensor, copyable: torch.Tensor):
        """(copy attention [N, T, S], gate logit [N, T, 1], whether each row can copy [N, 1, 1])."""
        dec = decoder_states.to(self.query.weight.dtype)
        scores = torch.einsum("nth,nsh->nts", self.query(dec).float(), keys) / self.hidden_size**0.5
        attention = torch.softmax(scores.masked_fill(~copyable[:, None, :], torch.finfo(scores.dtype).min), -1)
        return attention, self.gate(dec).float(), copyable.any(-1)[:, None, None]

    def forward(self, logits: torch.Tensor, decoder_states: torch.Tensor, keys: torch.Tensor,
                source_ids: torch.Tensor, copyable: torch.Tensor) -> torch.Tensor:
        """log p(y_t) over the vocabulary, [N, T, V] in float32, from the decoder's `logits` [N, T, V]
        and last states [N, T, H], the `keys` of the encoder states [N, S, H], the source token ids
        [N, S] and which source positions may be copied [N, S] (not padding, not special tokens)."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            attention, gate_logit, can_copy = self._attention(decoder_states, keys, copyable)
            p_copy = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
            p_copy.scatter_add_(-1, source_ids[:, None, :].expand(-1, logits.shape[1], -1), attention)
            gate = torch.where(can_copy, torch.sigmoid(gate_logit), 1.0)
            p = gate * torch.softmax(logits.float(), dim=-1) + (1 - gate) * p_copy
            return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))

    def gold(self, logits: torch.Tensor, decoder_states: torch.Tensor, keys: torch.Tensor,
             source_ids: torch.Tensor, copyable: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(labels_t) [N, T] in float32, as `forward` but for the gold tokens only and in log
        space: training never holds more than one [N, T, V] tensor (the vocabulary's log-softmax)."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            attention, gate_logit, can_copy = self._attention(decoder_states, keys, copyable)
            vocab = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            p_copy = (attention * (source_ids[:, None, :] == labels[:, :, None])).sum(-1)
            log_copy = torch.where(p_copy > 0, p_copy.clamp_min(torch.finfo(p_copy.dtype).tiny).log(),
                                   float("-inf"))
            can_copy = can_copy.squeeze(-1)
            log_gate = torch.where(can_copy, torch.nn.functional.logsigmoid(gate_logit.squeeze(-1)), 0.0)
            log_rest = torch.where(can_copy, torch.nn.functional.logsigmoid(-gate_logit.squeeze(-1)), float("-inf"))
            return torch.logaddexp(log_gate + vocab, log_rest + log_copy)

    def copied_from(self, logits: torch.Tensor, decoder_states: torch.Tensor, keys: torch.Tensor,
                    source_ids: torch.Tensor, copyable: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Where each gold token came from, [N, T] long: the source position holding that token which
        the copy attention weighs most, where copying gave the token more of its probability than the
        vocabulary did ((1 - g) p_copy > g p_vocab); -1 where it did not (or the token is not in the
        source). Arguments as `gold`."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            attention, gate_logit, can_copy = self._attention(decoder_states, keys, copyable)
            weights = attention * (source_ids[:, None, :] == labels[:, :, None])
            gate = torch.where(can_copy, torch.sigmoid(gate_logit), 1.0).squeeze(-1)
            vocab = torch.softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            copied = (1 - gate) * weights.sum(-1) > gate * vocab
            return torch.where(copied, weights.argmax(-1), -1)


def save_copy_head(head: CopyHead, path: Path) -> None:
    """Write the head's weights to `path / COPY_HEAD_FILE`."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(path / COPY_HEAD_FILE))


def load_copy_head(path: Path) -> CopyHead:
    """The head saved in folder `path`, its sizes read from the weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    f = path / COPY_HEAD_FILE
    try:
        state = load_file(str(f))
        hidden_size, encoder_hidden_size = state["key.weight"].shape
        head = CopyHead(hidden_size, encoder_hidden_size)
        head.load_state_dict(state)
    except (OSError, SafetensorError, RuntimeError, KeyError, ValueError) as e:  # missing, truncated, foreign
        raise RagloopError(f"{f}: cannot load the generator's copy head ({first_line(e)})") from None
    return head
