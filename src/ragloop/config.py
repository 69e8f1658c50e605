"""Configs, one dataclass each, the source of truth for defaults, checks, CLI flags and saved files:
`RAGConfig` (the model's settings, saved in its folder), `TrainConfig` (a RAG training run; it holds a
`RAGConfig` as `rag`), `RetrieverTrainConfig` and `RerankerTrainConfig`. Every config checks its values
in `__post_init__` with `ragloop.checks`, so the Python API, the command line (which only parses each
flag's type) and recipe files refuse a bad value with the same message. Flags are spelled as in the
original `rag_system.py` (`--batch_size`); the dashed spelling (`--batch-size`) is accepted too. A leaf:
no torch, so `ragloop --help` stays light.

    >>> cfg = TrainConfig(train_file="train.json", max_steps=100, rag=RAGConfig(n_docs=2, mode="fid"))
    >>> cfg = TrainConfig(train_file="train.json", max_steps=100, n_docs=2, rag_mode="fid")  # the same, by flag
    >>> dataclasses.replace(cfg, n_docs=3).rag.n_docs
    3
    >>> parser = argparse.ArgumentParser(); add_config_args(parser, TrainConfig)
    >>> TrainConfig(batch_size=0)
    Traceback (most recent call last):
    ragloop.checks.ConfigError: --batch_size must be at least 1 (got 0)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from ragloop.checks import ConfigError, choice, flag, number, text, whole
from ragloop.constants import (
    ANSWER_CONSTRAINTS,
    DEFAULT_ENCODER,
    DEFAULT_GENERATOR,
    PRUNE_MASS,
    READER_MODES,
    SEARCH_MODES,
)
from ragloop.errors import RagloopError

PRECISION_HELP = ("autocast dtype; auto: bf16 on a GPU that has it, else fp32 (on a CPU too, so that a run gives the "
                  "same numbers on any CPU; ask for bf16 on a CPU with AVX512-BF16 or AMX to train faster)")
EVAL_DEPTH = 20  # first-stage candidates the reranker trainer reranks per held-out or validation question
RERANKER_LOSSES = ("listwise", "bce")
NEGATIVE_SOURCES = {"bm25": "BM25's top passages", "dense": "the dense encoder's", "hybrid": "RRF of the two",
                    "random": "any passage"}  # the reranker trainer's negatives (training.negatives)


def opt(default: Any, help: str, group: str, choices: list | tuple | None = None, *, cli_name: str | None = None,
        what: str | None = None, hidden: bool = False, **bounds: float) -> Any:
    """A config field: its default, help, flag group and its rule (choices, or bounds low / above / high
    for numbers; the type comes from the annotation). `cli_name`: the flag, when not the field's name;
    `what`: the noun an unknown choice is named by."""
    meta = {"help": help, "group": group, "choices": choices, "bounds": bounds, "what": what, "hidden": hidden,
            "cli_name": cli_name}
    return field(default=default, metadata=meta)


def _checked(f: Field, value: Any, name: str) -> Any:
    """`value` checked against field `f`'s rule, named `name` in an error."""
    annotation = str(f.type).replace(" ", "")
    kind, optional = annotation.split("|")[0], annotation.endswith("|None")
    meta = f.metadata
    if meta.get("choices") is not None:
        if optional and value in (None, "none"):  # an optional choice is off: null, or 'none' on the command line
            return None
        what = meta.get("what")
        message = f"unknown {what} {value!r}; choose one of {', '.join(meta['choices'])}" if what else None
        return choice(value, name, meta["choices"], message)
    if kind == "int":
        return whole(value, name, optional=optional, **meta.get("bounds", {}))
    if kind == "float":
        return number(value, name, optional=optional, **meta.get("bounds", {}))
    if kind == "bool":
        return flag(value, name)
    return text(value, name, optional)


def check_fields(config: Any, label: str) -> None:
    """Check every plain field of a config by its rule (ints stay ints, numbers become floats); an error
    names the field `label.format(name)`."""
    for f in fields(config):
        if not f.metadata.get("nested"):
            object.__setattr__(config, f.name, _checked(f, getattr(config, f.name), label.format(f.name)))


@dataclass
class RAGConfig:
    """The RAG model's settings; saved as `rag_config.json` next to the models. In a `TrainConfig` they
    are `cfg.rag`, and on the command line flags of the same names (`mode` is `--rag_mode`)."""

    n_docs: int = opt(5, "passages retrieved per question (k)", "model", low=1)
    mode: str = opt("sequence", "how the generator reads the k passages: " + "; ".join(
        f"{name}: {what}" for name, what in READER_MODES.items()), "model", tuple(READER_MODES), cli_name="rag_mode",
        what="RAG mode")  # a key of generation's reader table
    max_source_length: int = opt(256, "generator input tokens per (question, passage)", "model", low=8)
    max_target_length: int = opt(32, "answer tokens", "model", low=1)  # eos included
    train_passage_encoder: bool = opt(False, "also train the passage encoder (re-indexes every --reindex_steps)",
                                      "model")
    # Which k passages a question reads: the first stage (dense | bm25 | hybrid) and an optional
    # cross-encoder reranker (a name or path; saved inside the model folder) over its top rerank_depth.
    # They choose the passages only: p(z|x) over them is always softmax(scale · q·d).
    search_mode: str = opt("dense", "which passages a question reads: dense, BM25 or hybrid first stage (p(z|x) "
                           "always comes from the question encoder)", "model", SEARCH_MODES, what="search mode")
    rerank: str | None = opt(None, "cross-encoder (name or path) that reorders the first stage's top "
                             "--rerank_depth before the k are taken", "model")
    rerank_depth: int | None = opt(None, "candidates the reranker rescores (default max(k, 20))", "model", low=1)
    # Multiplier on q·d before the softmax over the k passages. None: 1 for raw inner products (DPR),
    # 20 for L2-normalised encoders, whose cosines in [-1, 1] would otherwise give a near-uniform p(z|x).
    doc_score_scale: float | None = opt(None, "similarity scale", "model", hidden=True)
    rescore_batch_size: int = opt(64, "generator rows per forward when RAG-Sequence re-scores candidates", "model",
                                  hidden=True, low=1)
    prune_mass: float = opt(PRUNE_MASS, "greedy RAG-Token: passages of at most this much p(z|x) in all are left out "
                            "of decoding while a bound proves they cannot change the answer (0: never)", "model",
                            hidden=True, low=0, high=1)
    distill_temperature: float = opt(1.0, "--rag_mode fid: temperature of the retriever's target, softmax over "
                                     "passages of the answer's log-likelihood given each one alone / T", "model",
                                     above=0)
    constrain: str | None = opt(None, "hold every reader's answers to the k passages: spans lets the decoder "
                                "write only token sequences that occur in them (greedy and beam search); "
                                "none: unconstrained", "model", ANSWER_CONSTRAINTS)

    def __post_init__(self) -> None:
        check_fields(self, "{}")
        if self.rerank_depth is not None:
            if self.rerank is None:
                raise RagloopError("rerank_depth needs a reranker (rerank)")
            if self.rerank_depth < self.n_docs:
                raise RagloopError(f"rerank_depth ({self.rerank_depth}) is smaller than n_docs ({self.n_docs})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> RAGConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RagloopError(f"{where}: unknown RAG config keys {unknown}")
        return cls(**values)


# -- flat configs: one flag per value, nested configs spread out ---------------------------------

C = TypeVar("C", bound="FlatConfig")


def flat_fields(cls: type) -> list[tuple[str, Field, str | None]]:
    """(flag name, field, the field that nests it or None) for every flag of a config class, in order."""
    out: list[tuple[str, Field, str | None]] = []
    for f in fields(cls):
        if f.metadata.get("hidden"):
            continue
        if f.metadata.get("nested"):
            out += [(g.metadata.get("cli_name") or g.name, g, f.name) for g in fields(f.default_factory)
                    if not g.metadata.get("hidden")]
        else:
            out.append((f.name, f, None))
    return out


def spread(cls: type[C]) -> type[C]:
    """Let a config take its nested configs' settings by flag name too: `TrainConfig(n_docs=2,
    rag_mode="fid")` is `TrainConfig(rag=RAGConfig(n_docs=2, mode="fid"))` (on top of a `rag=` given
    alongside), and so is `dataclasses.replace`; `cfg.n_docs` reads `cfg.rag.n_docs`, and `cfg.n_docs = 3`
    sets it there, checked again. An error names the flag."""
    init = cls.__init__
    flags = {name: (parent, f.name) for name, f, parent in flat_fields(cls) if parent}
    factories = {f.name: f.default_factory for f in fields(cls) if f.metadata.get("nested")}

    def replaced(base: Any, parent: str, values: dict[str, Any]) -> Any:
        try:
            return dataclasses.replace(base, **values)
        except ConfigError as e:
            flag_of = {f: name for name, (p, f) in flags.items() if p == parent}
            raise e.renamed(f"--{flag_of.get(e.name, e.name)}") from None

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        spread_out: dict[str, dict[str, Any]] = {}
        for name in [k for k in kwargs if k in flags]:
            parent, field_name = flags[name]
            spread_out.setdefault(parent, {})[field_name] = kwargs.pop(name)
        for parent, values in spread_out.items():
            kwargs[parent] = replaced(kwargs.get(parent) or factories[parent](), parent, values)
        init(self, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # only for names not found on the object itself
        if name not in flags:  # a nested config itself, while a copy is being built, lands here too
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        parent, field_name = flags[name]
        return getattr(getattr(self, parent), field_name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in flags:
            parent, field_name = flags[name]
            name, value = parent, replaced(getattr(self, parent), parent, {field_name: value})
        object.__setattr__(self, name, value)

    cls.__init__, cls.__getattr__, cls.__setattr__ = __init__, __getattr__, __setattr__
    return cls


class FlatConfig:
    """What the training configs share: a flat view by flag names (`to_dict`, `from_dict`), which is also
    the saved format (`save`, `load`), and their checks."""

    def __post_init__(self) -> None:
        check_fields(self, "--{}")

    def to_dict(self) -> dict:
        return {name: getattr(getattr(self, parent) if parent else self, f.name)
                for name, f, parent in flat_fields(type(self))}

    @classmethod
    def from_dict(cls: type[C], values: dict) -> C:
        """From flag names (a saved config, a recipe's section, the command line); unknown keys (a setting
        since removed) are ignored."""
        return cls(**{name: values[name] for name, _, _ in flat_fields(cls) if name in values})

    def save(self, path: str | Path) -> None:
        from ragloop.io import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        return cls.from_dict(json.loads(Path(path).read_text()))


@spread
@dataclass
class TrainConfig(FlatConfig):
    """`ragloop train`: see `ragloop.training.trainer`. The model's settings are a `RAGConfig` in `rag`,
    set either way: `TrainConfig(rag=RAGConfig(n_docs=2, mode="fid"))` or by flag name,
    `TrainConfig(n_docs=2, rag_mode="fid")` (also `dataclasses.replace(cfg, n_docs=3)` and
    `TrainConfig.from_dict`); read them as `cfg.rag.n_docs` (`cfg.n_docs` still answers). The saved
    `train_config.json` is flat (flag names), as the flags are."""

    # data
    dataset_name: str = opt("squad", "Hugging Face dataset name (needs the hub); ignored with --train_file", "data")
    train_file: str | None = opt(None, "local SQuAD-style .json/.jsonl/.csv for training", "data")
    validation_file: str | None = opt(None, "local SQuAD-style file for dev F1 (best-model selection)", "data")
    max_train_examples: int | None = opt(None, "use only the first N training questions", "data", low=0)
    max_eval_examples: int = opt(200, "dev questions scored at each evaluation", "data", low=0)
    # models and retrieval
    question_encoder: str = opt(DEFAULT_ENCODER, "question encoder: name or path (DPR or any HF encoder)", "model")
    passage_encoder: str | None = opt(None, "passage encoder (default: the question encoder's model)", "model")
    generator: str | None = opt(None, "the reader's model, name or path: a seq2seq generator (e.g. t5-base; default "
                                f"{DEFAULT_GENERATOR}), or for --rag_mode span an encoder (default {DEFAULT_ENCODER})",
                                "model")
    index: str | None = opt(None, "existing index folder (default: build one from the data's contexts)", "model")
    index_type: str = opt("Flat", "FAISS factory string when building the index", "model")
    rag: RAGConfig = field(default_factory=RAGConfig, metadata={"group": "model", "nested": True})
    gold_passage_steps: int = opt(0, "first N steps train the generator on each question's own paragraph (k=1, "
                                  "no retrieval): teaches a new generator to read before retrieval noise comes in",
                                  "model", low=0)
    reindex_steps: int = opt(500, "with --train_passage_encoder: re-encode the corpus every N steps", "model", low=0)
    # optimisation
    batch_size: int = opt(8, "questions per step (per process)", "optimisation", low=1)
    learning_rate: float = opt(5e-5, "peak learning rate (AdamW)", "optimisation", above=0)
    question_encoder_lr: float | None = opt(None, "peak learning rate of the question encoder (default: "
                                            "--learning_rate; 0 freezes it)", "optimisation", low=0)
    new_params_lr: float | None = opt(None, "peak learning rate of generator parameters that a warm start leaves "
                                      "untrained (a BERT2BERT's cross-attention and LM-head transform; default "
                                      "10x --learning_rate)", "optimisation", low=0)
    num_epochs: int = opt(3, "passes over the training data", "optimisation", low=1)
    warmup_steps: int = opt(500, "linear warmup steps, then linear decay to 0", "optimisation", low=0)
    weight_decay: float = opt(0.01, "AdamW weight decay", "optimisation", low=0)
    max_grad_norm: float = opt(1.0, "gradient clipping (0: off)", "optimisation", low=0)
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step", "optimisation", low=1)
    max_steps: int | None = opt(None, "stop after N optimizer steps (overrides --num_epochs)", "optimisation", low=0)
    max_train_minutes: float | None = opt(None, "stop after this much training time (a CPU budget), then "
                                          "evaluate and save", "optimisation", low=0)
    precision: str = opt("auto", PRECISION_HELP, "optimisation", ["auto", "bf16", "fp16", "fp32"])
    # run
    output_dir: str = opt("runs/rag", "where checkpoints, the best model and logs go", "run")
    seed: int = opt(42, "seed for data order, dropout and initialisation", "run")
    eval_steps: int = opt(500, "evaluate dev F1 and save a checkpoint every N steps", "run", low=1)
    logging_steps: int = opt(10, "every N steps, log the mean loss of those N steps and the learning "
                                 "rate", "run", low=1)
    resume: bool = opt(False, "continue the run in --output_dir from its last checkpoint", "run")

    def __post_init__(self) -> None:
        if not isinstance(self.rag, RAGConfig):
            raise ConfigError("rag", f"expected a RAGConfig, got {type(self.rag).__name__}", "type")
        super().__post_init__()


@dataclass
class RetrieverTrainConfig(FlatConfig):
    """`ragloop train-retriever`: see `ragloop.training.retriever_trainer`."""

    # data
    train_file: str | None = opt(None, "SQuAD-style .json/.jsonl/.csv with questions, answers and their "
                                       "context paragraphs (required)", "data")
    validation_file: str | None = opt(None, "SQuAD-style file: dense gold@k over its paragraphs after training",
                                      "data")
    max_train_examples: int | None = opt(None, "use only the first N training questions", "data", low=0)
    chunk_words: int = opt(100, "words per passage, as `ragloop index --chunk-words`", "data", low=1)
    hard_negatives: int = opt(1, "BM25 hard negatives per question (0: in-batch negatives only)", "data", low=0)
    # model
    encoder: str = opt(DEFAULT_ENCODER, "encoder to fine-tune, name or path (a DPR ctx encoder: two towers)",
                       "model")
    question_encoder: str | None = opt(None, "question encoder, if not the same model (DPR: inferred)", "model")
    shared_encoder: bool = opt(True, "one set of weights for questions and passages when --encoder names one "
                                     "model (false: two towers, both starting from it)", "model")
    max_length: int | None = opt(None, "tokens per question or passage (default: the model's own)", "model", low=1)
    scale: float | None = opt(None, "similarity scale, 1/temperature (default: 20 for normalised embeddings, "
                                    "1 for dot products)", "model", above=0)
    # optimisation
    batch_size: int = opt(32, "questions per step (each brings its positive and hard negatives)", "optimisation",
                          low=1)
    learning_rate: float = opt(2e-5, "peak learning rate (AdamW)", "optimisation", above=0)
    num_epochs: int = opt(1, "passes over the training questions", "optimisation", low=1)
    max_steps: int | None = opt(None, "stop after N steps (overrides --num_epochs)", "optimisation", low=1)
    warmup_steps: int = opt(10, "linear warmup steps, then linear decay to 0", "optimisation", low=0)
    weight_decay: float = opt(0.01, "AdamW weight decay (matrices only)", "optimisation", low=0)
    max_grad_norm: float = opt(1.0, "gradient clipping (0: off)", "optimisation", low=0)
    # run
    output_dir: str = opt("runs/retriever", "folder for the trained encoder(s), replaced atomically", "run")
    seed: int = opt(42, "seed for data order and dropout", "run")
    logging_steps: int = opt(10, "log the loss every N steps", "run", low=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.train_file:
            raise ConfigError("--train_file", "is required (a SQuAD-style file with context paragraphs)")


@dataclass
class RerankerTrainConfig(FlatConfig):
    """`ragloop train-reranker`: see `ragloop.training.reranker_trainer`."""

    # data
    train_file: str | None = opt(None, "SQuAD-style .json/.jsonl/.csv with questions, answers and their context "
                                       "paragraphs (default: every bundled training question, SQuAD v1.1 and v2.0; "
                                       "unanswerable questions are negatives only)", "data")
    validation_file: str | None = opt(None, f"SQuAD-style file: its questions' BM25 top {EVAL_DEPTH} over its "
                                            "paragraphs, gold@1 / mrr@10 before and after reranking", "data")
    heldout_every: int = opt(7, "hold out every N-th training article (their order shuffled by --seed) and save "
                                f"the checkpoint with the best held-out gold@1 over BM25's top {EVAL_DEPTH}; 0: "
                                "no held-out split, the last step is saved", "data", low=0)
    max_train_examples: int | None = opt(None, "use only the first N training questions", "data", low=0)
    max_eval_examples: int = opt(100, "held-out (and validation) questions scored (spread over the articles)",
                                 "data", low=1)
    chunk_words: int = opt(100, "words per passage, as `ragloop index --chunk-words`", "data", low=1)
    negatives: int = opt(3, "negatives per question (group size - 1), split evenly among --negative_sources",
                         "data", low=1)
    negative_sources: str | None = opt(None, "where the negatives come from, comma-separated: " + ", ".join(
        f"{k} ({v})" for k, v in NEGATIVE_SOURCES.items()) + " (default: bm25,dense; bm25 alone with "
        "--dense_encoder none or --negatives 1)", "data")
    dense_encoder: str = opt(DEFAULT_ENCODER, "encoder of the dense and hybrid negatives ('none': no dense or "
                                              "hybrid negatives)", "data")
    # model
    model: str = opt(DEFAULT_ENCODER, "model to start from: an encoder (gets a fresh one-label head) or a "
                                      "cross-encoder, name or path", "model")
    max_length: int = opt(160, "tokens per (question, passage) pair", "model", low=1)
    # optimisation
    loss: str = opt("listwise", "listwise: softmax cross-entropy of the positive in its group; bce: binary "
                                "cross-entropy per pair, positives weighed by --negatives", "optimisation",
                    RERANKER_LOSSES, what="loss")
    batch_size: int = opt(8, "questions per step (each brings 1 + --negatives passages)", "optimisation", low=1)
    learning_rate: float = opt(1e-4, "peak learning rate (AdamW)", "optimisation", above=0)
    head_lr: float | None = opt(None, "peak learning rate of a fresh classification head (default 10x "
                                      "--learning_rate): at the body's rate it barely moves in a CPU budget",
                                "optimisation", above=0)
    num_epochs: int = opt(1, "passes over the training questions", "optimisation", low=1)
    max_steps: int = opt(240, "stop after N steps (0: --num_epochs passes); the default took 18.4 min "
                              "on 2 CPU cores with its held-out evaluations and fit (from the bundled MiniLM "
                              "the held-out gold@1 stays at chance for ~140 steps)", "optimisation", low=0)
    warmup_steps: int = opt(20, "linear warmup steps, then linear decay to 0", "optimisation", low=0)
    weight_decay: float = opt(0.01, "AdamW weight decay (matrices only)", "optimisation", low=0)
    max_grad_norm: float = opt(1.0, "gradient clipping (0: off)", "optimisation", low=0)
    precision: str = opt("auto", PRECISION_HELP, "optimisation", ["auto", "bf16", "fp32"])
    # run
    output_dir: str = opt("runs/reranker", "folder for the trained cross-encoder, replaced atomically", "run")
    eval_steps: int = opt(80, "score the held-out articles every N steps (and after the last)", "run", low=1)
    seed: int = opt(42, "seed for the held-out articles, data order, random negatives, dropout and the new head",
                    "run")
    logging_steps: int = opt(10, "log the loss every N steps", "run", low=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.heldout_every == 1:
            raise ConfigError("--heldout_every", "must be 0 (no held-out split) or at least 2 (got 1: every article "
                              "would be held out)")
        sources = self.sources()
        if self.negatives < len(sources):
            raise ConfigError("--negatives", f"({self.negatives}) is fewer than the --negative_sources "
                              f"({len(sources)}: {','.join(sources)}): each source brings at least one")
        dense = [s for s in sources if s in ("dense", "hybrid")]
        if dense and self.dense_encoder.lower() == "none":
            raise ConfigError("--negative_sources", f"{', '.join(dense)} needs a --dense_encoder (got 'none')")

    def sources(self) -> list[str]:
        """--negative_sources as a list, checked: known names, each once, at least one."""
        if self.negative_sources is None:
            return ["bm25", "dense"][: 1 if self.dense_encoder.lower() == "none" else self.negatives]
        names = [s.strip() for s in self.negative_sources.split(",") if s.strip()]
        unknown = [s for s in names if s not in NEGATIVE_SOURCES]
        if unknown or not names or len(set(names)) < len(names):
            why = (f"unknown {', '.join(map(repr, unknown))}" if unknown else "a source named twice" if names
                   else "none given")
            raise ConfigError("--negative_sources", f"{self.negative_sources!r}: {why}; give a comma-separated "
                              f"list of {', '.join(NEGATIVE_SOURCES)}", kind="type")
        return names


# -- the command line: argparse parses each flag's type; the config checks the value ---------------


def finite_float(text: str) -> float:
    """An argparse type: a float flag refuses NaN and infinities (which would train or score as NaN)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number (got {text!r})")
    return value


def _parse_bool(text: str) -> bool:
    """A flag's value: true/yes/on/1 or false/no/off/0; anything else (`--fp16 treu`) is refused."""
    if text.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if text.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (yes/no, on/off, 1/0), got {text!r}")


def add_config_args(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One argparse group per `group`, one flag per field (a nested config's fields spread out), defaults
    from the dataclass."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f, _ in flat_fields(cls):
        meta = f.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        kind = str(f.type).split("|")[0].strip()
        help_ = meta["help"] if "default" in meta["help"] or f.default is None else \
            f"{meta['help']} (default: {f.default})"  # said once: some helps say it in their own words
        if kind == "bool":
            group.add_argument(*names, dest=name, nargs="?", const=True, default=f.default, type=_parse_bool,
                               help=help_)
            continue
        parse = {"int": int, "float": finite_float}.get(kind, str)
        choices = meta.get("choices")  # shown, not enforced here: the config refuses others in its own words
        group.add_argument(*names, dest=name, type=parse, default=f.default,
                           metavar="{" + ",".join(choices) + "}" if choices else None, help=help_)


def config_from_args(args: argparse.Namespace, cls: type = TrainConfig) -> Any:
    """The config of the parsed flags; its own checks run here (a RagloopError naming the flag)."""
    return cls.from_dict({name: getattr(args, name) for name, _, _ in flat_fields(cls) if hasattr(args, name)})
