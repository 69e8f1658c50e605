"""A cross-encoder reranker: rescores a first stage's passages by reading question and passage together.

    >>> from ragloop.retrieval.rerank import Reranker
    >>> reranker = Reranker.from_pretrained("cross-encoder/ms-marco-MiniLM-L-6-v2")   # or a local folder,
    >>> reranker = Reranker.from_pretrained("runs/reranker")                          # e.g. `ragloop train-reranker`
    >>> scores = reranker.score(["who wrote hamlet?"], [[passage_a, passage_b, passage_c]])
    >>> scores[0]                              # one float32 array per question, higher = more relevant
    array([ 7.1, -3.2,  0.4], dtype=float32)
    >>> best_first = np.argsort(-scores[0], kind="stable")
    >>> reranker.save_pretrained("runs/my-reranker")

As sentence-transformers' CrossEncoder is called, on plain (question, text) pairs:

    >>> reranker.predict([("who wrote hamlet?", "Hamlet is a tragedy by Shakespeare."), ...])  # [N] float32
    >>> reranker.rank("who wrote hamlet?", texts, top_k=3, return_documents=True)
    [{'corpus_id': 0, 'score': 7.1, 'text': 'Hamlet is ...'}, ...]                               # best first

A folder written by ragloop may also hold, per first-stage mode, a fitted combination of the
reranker's score with the first stage's rank and score (`reranker.combinations`, rerank_fusion.py),
which `Retriever` applies; `reranker.quantize("int8")` makes it int8 for inference (quantize.py).

Any Hugging Face sequence-classification model serves (`AutoModelForSequenceClassification`): with
one label the score is its logit; with two, the logit of "relevant" (label 1) minus that of "not
relevant" (label 0), the log-odds. The model reads "[CLS] question [SEP] title text [SEP]": the
passage side is `bm25_text(passage)`, the same "title text" string the BM25 index searches, so a
passage reads the same to every stage. `ragloop train-reranker` trains one from the bundled MiniLM.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ragloop.checks import whole
from ragloop.data.corpus import Passage
from ragloop.errors import RagloopError
from ragloop.io import atomic_dir, atomic_write_json
from ragloop.manifest import only_replace
from ragloop.quantize import quantization, quantize_linear, refuse_quantized
from ragloop.quiet import bar_disabled, quiet_transformers
from ragloop.retrieval.encoders import resolve_source
from ragloop.retrieval.folder import bm25_text
from ragloop.retrieval.rerank_fusion import Combination, entries, read_combinations

log = logging.getLogger(__name__)

SETTINGS_FILE = "ragloop_reranker.json"  # written beside the HF files; marks a folder ragloop may replace
FORMAT = "ragloop-reranker"
DEFAULT_MAX_LENGTH = 256  # tokens per pair for a model whose folder does not say what it was trained on


def passage_text(passage: Passage | str) -> str:
    """What the cross-encoder reads for a passage (a plain string is taken as it is)."""
    return passage if isinstance(passage, str) else bm25_text(passage)


def relevance(logits: torch.Tensor) -> torch.Tensor:
    """One relevance score per row of a classifier's logits [N, 1] or [N, 2] (differentiable)."""
    if logits.shape[-1] == 1:
        return logits[..., 0]
    return logits[..., 1] - logits[..., 0]


class Reranker:
    """A cross-encoder (HF model + tokenizer) that scores (question, passage) pairs; see the module doc."""

    def __init__(self, model: torch.nn.Module, tokenizer, name: str = "", max_length: int = 256,
                 batch_size: int = 32) -> None:
        labels = model.config.num_labels
        if labels not in (1, 2):
            raise RagloopError(f"reranker {name or type(model).__name__!r} has {labels} output labels; a reranker "
                               "needs 1 (a relevance logit) or 2 (not relevant / relevant)")
        if max_length < 1 or batch_size < 1:
            raise RagloopError(f"reranker max_length and batch_size must be at least 1 (got {max_length}, "
                               f"{batch_size})")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        limit = min(getattr(tokenizer, "model_max_length", max_length) or max_length,
                    getattr(model.config, "max_position_embeddings", max_length) or max_length)
        self.max_length = min(max_length, limit)
        self.fresh_parameters: list[str] = []  # weights new to the checkpoint (`for_training` fills it)
        self.batch_size = batch_size
        self.combinations: dict[str, Combination] = {}  # per first-stage mode; `from_pretrained` reads them

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, max_length: int | None = None, batch_size: int = 32,
                        device=None) -> Reranker:
        """Load a cross-encoder by hub name or local folder onto `device` (default: CUDA if there is
        one), in eval mode, with the combinations its ragloop_reranker.json holds. `max_length` None: the
        length the folder says it was trained on, else 256. A folder whose weights have no classification
        head is an error, not a reranker with a random head."""
        settings = _saved_settings(name_or_path)
        if max_length is None:
            max_length = whole(settings.get("max_length"), f"{os.fspath(name_or_path)}/{SETTINGS_FILE}: max_length",
                               low=1, optional=True) or DEFAULT_MAX_LENGTH
        model, tokenizer, missing = _load(name_or_path, fresh_head=False)
        if missing:
            arch = ", ".join(model.config.architectures or [model.config.model_type])
            raise RagloopError(
                f"reranker {os.fspath(name_or_path)!r} is a {arch} without a sequence-classification head "
                f"({', '.join(missing[:4])} would be random); give a cross-encoder, or train one from it with "
                f"`ragloop train-reranker --model {os.fspath(name_or_path)}`")
        reranker = cls._placed(model, tokenizer, name_or_path, max_length, batch_size, device)
        reranker.combinations = read_combinations(settings.get("combination"), f"{os.fspath(name_or_path)}/"
                                                  f"{SETTINGS_FILE}")
        return reranker

    @classmethod
    def for_training(cls, name_or_path: str | os.PathLike, max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 32,
                     device=None) -> Reranker:
        """A cross-encoder to fine-tune: a model with a sequence-classification head keeps it; a plain
        encoder (the bundled MiniLM, `bert-base-uncased`) gets a fresh one-label head."""
        model, tokenizer, missing = _load(name_or_path, fresh_head=True)
        if missing:
            log.info("%s: new classification head (%s)", os.fspath(name_or_path), ", ".join(missing))
        reranker = cls._placed(model, tokenizer, name_or_path, max_length, batch_size, device)
        reranker.fresh_parameters = missing  # what the trainer gives the head's learning rate
        return reranker

    @classmethod
    def _placed(cls, model, tokenizer, name_or_path, max_length, batch_size, device) -> Reranker:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device).eval()
        return cls(model, tokenizer, name=os.fspath(name_or_path), max_length=max_length, batch_size=batch_size)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a Hugging Face folder (model, tokenizer, and ragloop's settings) atomically."""
        with atomic_dir(path, may_replace=only_replace(SETTINGS_FILE, "reranker folder")) as tmp:
            self.write_files(tmp)
        log.info("saved reranker -> %s", path)

    @quiet_transformers()  # no "Writing model shards" bar in output meant for a pipe
    def write_files(self, folder: Path) -> None:
        """Write the files `save_pretrained` writes into an existing folder, not atomically: for writers that
        own the folder and add files of their own (a RAG folder, a trainer's atomic output)."""
        refuse_quantized(self.model, "save", f"reranker {self.name!r}")
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        atomic_write_json(Path(folder) / SETTINGS_FILE, self.settings())

    def settings(self) -> dict:
        """What ragloop_reranker.json holds: the format, max length, source, and the combinations if any."""
        out = {"format": FORMAT, "max_length": self.max_length, "source": self.name}
        if self.combinations:
            out["combination"] = entries(self.combinations)
        return out

    def combination(self, mode: str) -> Combination | None:
        """The saved combination for first-stage `mode`, or None (the cross-encoder's order alone)."""
        return self.combinations.get(mode)

    def quantize(self, mode: str | None = "int8") -> Reranker:
        """Quantize for inference (quantize.py: "int8" dynamic on CPU, bf16/fp16 weights on CUDA; None does
        nothing). The classification head stays float32: one small layer that makes the score. Returns self."""
        head = getattr(self.model, "classifier", None)
        skip = (head,) if isinstance(head, torch.nn.Module) else ()
        quantize_linear(self.model, mode, skip=skip, what=f"reranker {self.name!r}")
        return self

    @property
    def quantization(self) -> str | None:
        """What `quantize` applied ("int8", "bf16", "fp16"), or None at full precision."""
        return quantization(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, questions: list[str], texts: list[str]) -> dict:
        """Token ids of (question, passage text) pairs, unpadded, truncated to `max_length` (longest first)."""
        return self.tokenizer(questions, texts, truncation=True, max_length=self.max_length)

    def score(self, questions: list[str], passages: list[list[Passage]], progress: bool | None = False
              ) -> list[np.ndarray]:
        """Relevance of each question's passages: one float32 array per question, in the passages' order.

        All pairs are batched together across questions, longest first so a batch pads little; a passage
        may also be given as its text. `progress` None shows a bar only on a terminal."""
        if len(questions) != len(passages):
            raise ValueError(f"{len(questions)} questions but {len(passages)} passage lists")
        counts = [len(ps) for ps in passages]
        pair_questions = [q for q, n in zip(questions, counts) for _ in range(n)]
        flat = self._scored(pair_questions, [passage_text(p) for ps in passages for p in ps], progress)
        return [a.copy() for a in np.split(flat, np.cumsum(counts)[:-1])] if questions else []

    def predict(self, pairs, batch_size: int | None = None, show_progress_bar: bool | None = False):
        """sentence-transformers' `CrossEncoder.predict`: a float32 array with the relevance of each (question,
        passage text) pair, in the pairs' order, scored `batch_size` pairs at a time (default: the reranker's);
        one pair gives one float. With two labels a score is the log-odds of "relevant", not the two logits."""
        single = isinstance(pairs, (tuple, list)) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs)
        pairs = [pairs] if single else list(pairs)
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise RagloopError(f"pair {i} must be a (question, passage text) pair of strings (got {pair!r:.80})")
        scores = self._scored([q for q, _ in pairs], [t for _, t in pairs], show_progress_bar, batch_size)
        return float(scores[0]) if single else scores

    def rank(self, query: str, documents: list, top_k: int | None = None, return_documents: bool = False,
             batch_size: int | None = None, show_progress_bar: bool | None = False) -> list[dict]:
        """sentence-transformers' `CrossEncoder.rank`: [{"corpus_id": position in `documents`, "score"}, ...]
        best first (ties in the documents' order), the best `top_k` (None: all); `return_documents` adds
        "text". A document is a text or a `Passage` (scored as the retriever scores it: title and text)."""
        top_k = whole(top_k, "top_k", low=1, optional=True)
        if not isinstance(query, str):
            raise RagloopError(f"query must be a string (got {type(query).__name__})")
        documents = list(documents)
        scores = self._scored([query] * len(documents), [passage_text(d) for d in documents], show_progress_bar,
                              batch_size)
        ranked = []
        for i in np.argsort(-scores, kind="stable")[:top_k]:
            entry = {"corpus_id": int(i), "score": float(scores[i])}
            if return_documents:
                entry["text"] = documents[i] if isinstance(documents[i], str) else documents[i].text
            ranked.append(entry)
        return ranked

    def _scored(self, questions: list[str], texts: list[str], progress: bool | None,
                batch_size: int | None = None) -> np.ndarray:
        """Float32 relevance of each (question, text) pair, in eval mode (the model's own mode put back after)."""
        batch_size = whole(batch_size, "batch_size", low=1, optional=True)
        out = np.empty(len(texts), dtype=np.float32)
        if texts:
            was_training = self.model.training
            self.model.eval()
            try:
                self._score_pairs(questions, texts, out, progress, batch_size or self.batch_size)
            finally:
                self.model.train(was_training)
        return out

    @torch.inference_mode()
    def _score_pairs(self, questions: list[str], texts: list[str], out: np.ndarray, progress: bool | None,
                     batch_size: int) -> None:
        enc = self.tokenize(questions, texts)
        lengths = np.fromiter((len(ids) for ids in enc["input_ids"]), dtype=np.int64, count=len(texts))
        order = np.argsort(-lengths, kind="stable")
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        device = self.device
        disable = bar_disabled(progress)
        with tqdm(total=len(texts), desc="reranking", unit="pair", disable=disable) as bar:
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                batch = self.tokenizer.pad({k: [enc[k][i] for i in idx] for k in keys}, return_tensors="pt")
                logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits
                out[idx] = relevance(logits.float()).cpu().numpy()
                bar.update(len(idx))


def _saved_settings(name_or_path: str | os.PathLike) -> dict:
    """ragloop_reranker.json of a local folder, or {} (a hub name, a folder ragloop did not write)."""
    path = Path(resolve_source(os.fspath(name_or_path))) / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RagloopError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(settings, dict):
        raise RagloopError(f"{path}: not a ragloop reranker settings file (a JSON object)")
    return settings


@quiet_transformers()  # no "Loading weights" bar, as for the encoders and the generator
def _load(name_or_path: str | os.PathLike, fresh_head: bool) -> tuple[torch.nn.Module, object, list[str]]:
    """(model, tokenizer, names of weights the checkpoint lacked). With `fresh_head`, a model whose config
    names no sequence-classification architecture is given a one-label head."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    name = os.fspath(name_or_path)
    source = resolve_source(name)
    path = Path(source)
    # a hub name is "name" or "org/name"; anything else that is not there is a missing folder
    looks_local = isinstance(name_or_path, os.PathLike) or path.is_absolute() or source.startswith((".", "~")) \
        or source.count("/") > 1 or (os.sep != "/" and os.sep in source)
    if looks_local and not path.exists():
        raise RagloopError(f"reranker {name!r}: no such folder")
    if path.is_dir() and not (path / "config.json").is_file():
        raise RagloopError(f"reranker {name!r}: the folder holds no config.json, so it is not a Hugging Face "
                           "model folder (a cross-encoder saved with save_pretrained)")
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        extra = {}
        if fresh_head and not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
            extra["num_labels"] = 1
        model, info = AutoModelForSequenceClassification.from_pretrained(source, output_loading_info=True, **extra)
    except (OSError, ValueError, KeyError) as e:
        raise RagloopError(f"could not load reranker {name!r}: {str(e).strip().splitlines()[0][:200]}") from None
    except RuntimeError as e:  # e.g. a truncated weights file
        raise RagloopError(f"cannot load reranker weights from {name!r} "
                           f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") from None
    return model, tokenizer, sorted(info.get("missing_keys") or [])
