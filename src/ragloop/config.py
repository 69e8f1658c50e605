"""Training configuration: one dataclass is the source of truth for defaults, CLI flags and the saved
config. Flags are spelled as in the original `rag_system.py` (`--batch_size`); the dashed spelling
(`--batch-size`) is accepted too.

    >>> cfg = TrainConfig(train_file="train.json", max_steps=100)
    >>> parser = argparse.ArgumentParser(); add_config_args(parser, TrainConfig)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ragloop.constants import (  # noqa: F401  (re-exported: older code imports them from here)
    BUNDLED_GENERATOR,
    DEFAULT_ENCODER,
    DEFAULT_GENERATOR,
    INDEX_CHUNK_SIZE,
    INDEX_REFINE_FACTOR,
    READER_MODES,
)
from ragloop.constants import SEARCH_MODES as MODES


def opt(default: Any, help: str, group: str, choices: list | None = None) -> Any:
    return field(default=default, metadata={"help": help, "group": group, "choices": choices})


@dataclass
class TrainConfig:
    # data
    dataset_name: str = opt("squad", "Hugging Face dataset name (needs the hub); ignored with --train_file", "data")
    train_file: str | None = opt(None, "local SQuAD-style .json/.jsonl/.csv for training", "data")
    validation_file: str | None = opt(None, "local SQuAD-style file for dev F1 (best-model selection)", "data")
    max_train_examples: int | None = opt(None, "use only the first N training questions", "data")
    max_eval_examples: int = opt(200, "dev questions scored at each evaluation", "data")
    # models and retrieval
    question_encoder: str = opt(DEFAULT_ENCODER, "question encoder: name or path (DPR or any HF encoder)", "model")
    passage_encoder: str | None = opt(None, "passage encoder (default: the question encoder's model)", "model")
    generator: str = opt(DEFAULT_GENERATOR, "seq2seq generator: name or path (e.g. t5-base)", "model")
    index: str | None = opt(None, "existing index folder (default: build one from the data's contexts)", "model")
    index_type: str = opt("Flat", "FAISS factory string when building the index", "model")
    n_docs: int = opt(5, "passages retrieved per question (k)", "model")
    rag_mode: str = opt("sequence", "how the generator reads the k passages: " + "; ".join(
        f"{name}: {what}" for name, what in READER_MODES.items()), "model", list(READER_MODES))
    distill_temperature: float = opt(1.0, "--rag_mode fid: temperature of the retriever's target, softmax over "
                                     "passages of the answer's log-likelihood given each one alone / T", "model")
    search_mode: str = opt("dense", "which passages a question reads: dense, BM25 or hybrid first stage (p(z|x) "
                           "always comes from the question encoder)", "model", list(MODES))
    rerank: str | None = opt(None, "cross-encoder (name or path) that reorders the first stage's top "
                             "--rerank_depth before the k are taken", "model")
    rerank_depth: int | None = opt(None, "candidates the reranker rescores (default max(k, 20))", "model")
    max_source_length: int = opt(256, "generator input tokens per (question, passage)", "model")
    max_target_length: int = opt(32, "answer tokens", "model")
    gold_passage_steps: int = opt(0, "first N steps train the generator on each question's own paragraph (k=1, "
                                  "no retrieval): teaches a new generator to read before retrieval noise comes in",
                                  "model")
    train_passage_encoder: bool = opt(False, "also train the passage encoder (re-indexes every --reindex_steps)",
                                      "model")
    reindex_steps: int = opt(500, "with --train_passage_encoder: re-encode the corpus every N steps", "model")
    # optimisation
    batch_size: int = opt(8, "questions per step (per process)", "optimisation")
    learning_rate: float = opt(5e-5, "peak learning rate (AdamW)", "optimisation")
    question_encoder_lr: float | None = opt(None, "peak learning rate of the question encoder (default: "
                                            "--learning_rate; 0 freezes it)", "optimisation")
    new_params_lr: float | None = opt(None, "peak learning rate of generator parameters that a warm start leaves "
                                      "untrained (a BERT2BERT's cross-attention and LM-head transform; default "
                                      "10x --learning_rate)", "optimisation")
    num_epochs: int = opt(3, "passes over the training data", "optimisation")
    warmup_steps: int = opt(500, "linear warmup steps, then linear decay to 0", "optimisation")
    weight_decay: float = opt(0.01, "AdamW weight decay", "optimisation")
    max_grad_norm: float = opt(1.0, "gradient clipping (0: off)", "optimisation")
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step", "optimisation")
    max_steps: int | None = opt(None, "stop after N optimizer steps (overrides --num_epochs)", "optimisation")
    max_train_minutes: float | None = opt(None, "stop after this much training time (a CPU budget), then "
                                          "evaluate and save", "optimisation")
    precision: str = opt("auto", "autocast dtype; auto: bf16 on a GPU that has it, else fp32", "optimisation",
                         ["auto", "bf16", "fp16", "fp32"])
    # run
    output_dir: str = opt("runs/rag", "where checkpoints, the best model and logs go", "run")
    seed: int = opt(42, "seed for data order, dropout and initialisation", "run")
    eval_steps: int = opt(500, "evaluate dev F1 and save a checkpoint every N steps", "run")
    logging_steps: int = opt(10, "every N steps, log the mean loss of those N steps and the learning "
                                      "rate", "run")
    resume: bool = opt(False, "continue the run in --output_dir from its last checkpoint", "run")

    def __post_init__(self) -> None:
        from ragloop.errors import RagloopError

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise RagloopError(f"--{f.name} must be a finite number (got {value})")
        positive = ("n_docs", "batch_size", "gradient_accumulation_steps", "eval_steps", "logging_steps",
                    "max_source_length", "max_target_length", "num_epochs")
        for name in positive:
            if getattr(self, name) < 1:
                raise RagloopError(f"--{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("max_steps", "max_train_examples", "reindex_steps", "gold_passage_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise RagloopError(f"--{name} must not be negative (got {value})")
        if self.distill_temperature <= 0:
            raise RagloopError(f"--distill_temperature must be > 0 (got {self.distill_temperature})")
        if self.learning_rate <= 0 or self.warmup_steps < 0 or self.max_eval_examples < 0:
            raise RagloopError("--learning_rate must be > 0, --warmup_steps and --max_eval_examples >= 0")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("hidden")}

    def save(self, path: str | Path) -> None:
        from ragloop.io import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def finite_float(text: str) -> float:
    """An argparse type: a float flag refuses NaN and infinities (which would train or score as NaN)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number (got {text!r})")
    return value


@dataclass
class RetrieverTrainConfig:
    """`ragloop train-retriever`: see `ragloop.training.retriever_trainer`."""

    # data
    train_file: str | None = opt(None, "SQuAD-style .json/.jsonl/.csv with questions, answers and their "
                                       "context paragraphs (required)", "data")
    validation_file: str | None = opt(None, "SQuAD-style file: dense gold@k over its paragraphs after training",
                                      "data")
    max_train_examples: int | None = opt(None, "use only the first N training questions", "data")
    chunk_words: int = opt(100, "words per passage, as `ragloop index --chunk-words`", "data")
    hard_negatives: int = opt(1, "BM25 hard negatives per question (0: in-batch negatives only)", "data")
    # model
    encoder: str = opt(DEFAULT_ENCODER, "encoder to fine-tune, name or path (a DPR ctx encoder: two towers)",
                       "model")
    question_encoder: str | None = opt(None, "question encoder, if not the same model (DPR: inferred)", "model")
    shared_encoder: bool = opt(True, "one set of weights for questions and passages when --encoder names one "
                                     "model (false: two towers, both starting from it)", "model")
    max_length: int | None = opt(None, "tokens per question or passage (default: the model's own)", "model")
    scale: float | None = opt(None, "similarity scale, 1/temperature (default: 20 for normalised embeddings, "
                                    "1 for dot products)", "model")
    # optimisation
    batch_size: int = opt(32, "questions per step (each brings its positive and hard negatives)", "optimisation")
    learning_rate: float = opt(2e-5, "peak learning rate (AdamW)", "optimisation")
    num_epochs: int = opt(1, "passes over the training questions", "optimisation")
    max_steps: int | None = opt(None, "stop after N steps (overrides --num_epochs)", "optimisation")
    warmup_steps: int = opt(10, "linear warmup steps, then linear decay to 0", "optimisation")
    weight_decay: float = opt(0.01, "AdamW weight decay (matrices only)", "optimisation")
    max_grad_norm: float = opt(1.0, "gradient clipping (0: off)", "optimisation")
    # run
    output_dir: str = opt("runs/retriever", "folder for the trained encoder(s), replaced atomically", "run")
    seed: int = opt(42, "seed for data order and dropout", "run")
    logging_steps: int = opt(10, "log the loss every N steps", "run")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _parse_bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "y", "on")


def add_config_args(parser: argparse.ArgumentParser, cls=TrainConfig) -> None:
    """One argparse group per `group`, one flag per field, defaults from the dataclass."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(cls):
        meta = f.metadata
        if meta.get("hidden"):
            continue
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, bool):
            group.add_argument(*names, dest=f.name, nargs="?", const=True, default=default, type=_parse_bool,
                               help=meta["help"])
            continue
        kind = {int: int, float: finite_float}.get(type(default), str)
        if default is None:  # an optional field: the type comes from the annotation ("int | None")
            ann = str(f.type)
            kind = int if ann.startswith("int") else finite_float if ann.startswith("float") else str
        group.add_argument(*names, dest=f.name, type=kind, default=default, choices=meta.get("choices"),
                           help=f"{meta['help']} (default: {default})")


def config_from_args(args: argparse.Namespace, cls=TrainConfig) -> TrainConfig:
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


EVAL_DEPTH = 20  # BM25 candidates the reranker trainer reranks per validation question


@dataclass
class RerankerTrainConfig:
    """`ragloop train-reranker`: see `ragloop.training.reranker_trainer`."""

    # data
    train_file: str | None = opt(None, "SQuAD-style .json/.jsonl/.csv with questions, answers and their context "
                                       "paragraphs (default: the bundled SQuAD v1.1 train articles)", "data")
    validation_file: str | None = opt(None, f"SQuAD-style file: its questions' BM25 top {EVAL_DEPTH} over its "
                                            "paragraphs, gold@1 / mrr@10 before and after reranking", "data")
    max_train_examples: int | None = opt(None, "use only the first N training questions", "data")
    max_eval_examples: int = opt(200, "validation questions scored (spread over the file)", "data")
    chunk_words: int = opt(100, "words per passage, as `ragloop index --chunk-words`", "data")
    negatives: int = opt(3, "hard negatives per question (group size - 1): half from BM25, half from the dense "
                            "encoder", "data")
    dense_encoder: str = opt(DEFAULT_ENCODER, "encoder that finds the dense hard negatives ('none': BM25 only)",
                             "data")
    # model
    model: str = opt(DEFAULT_ENCODER, "model to start from: an encoder (gets a fresh one-label head) or a "
                                      "cross-encoder, name or path", "model")
    max_length: int = opt(160, "tokens per (question, passage) pair", "model")
    # optimisation
    batch_size: int = opt(8, "questions per step (each brings 1 + --negatives passages)", "optimisation")
    learning_rate: float = opt(1e-4, "peak learning rate (AdamW)", "optimisation")
    head_lr: float | None = opt(None, "peak learning rate of a fresh classification head (default 10x "
                                      "--learning_rate): at the body's rate it barely moves in a CPU budget",
                                "optimisation")
    num_epochs: int = opt(1, "passes over the training questions", "optimisation")
    max_steps: int = opt(200, "stop after N steps (0: --num_epochs passes; the default took 17-20 min on 2 "
                              "CPU cores)", "optimisation")
    warmup_steps: int = opt(20, "linear warmup steps, then linear decay to 0", "optimisation")
    weight_decay: float = opt(0.01, "AdamW weight decay (matrices only)", "optimisation")
    max_grad_norm: float = opt(1.0, "gradient clipping (0: off)", "optimisation")
    precision: str = opt("auto", "autocast dtype; auto: bf16 where the CPU or GPU has it natively, else fp32",
                         "optimisation", ["auto", "bf16", "fp32"])
    # run
    output_dir: str = opt("runs/reranker", "folder for the trained cross-encoder, replaced atomically", "run")
    seed: int = opt(42, "seed for data order, dropout and the new head", "run")
    logging_steps: int = opt(10, "log the loss every N steps", "run")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
