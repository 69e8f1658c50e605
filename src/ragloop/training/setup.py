"""What the RAG trainer builds before its first step: the accelerator, the data, the index, the model,
the optimizer and its schedule, and, with --resume, the position and states of the run it continues.

    >>> run = setup(TrainConfig.from_dict({"train_file": "train.json", "max_steps": 100}), progress=False)
    >>> run.step, run.total            # (0, 100): where the loop starts and ends
    >>> run.model, run.optimizer       # prepared by accelerate (DDP under a launcher)
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ragloop.config import TrainConfig
from ragloop.data.qa import QAExample, context_passages, load_qa, sample_evenly
from ragloop.errors import RagloopError
from ragloop.training.checkpoint import load_checkpoint, read_state
from ragloop.training.distributed import cpu_distributed, destroy_process_group_at_exit, freeze_unused_parameters
from ragloop.training.optim import accelerate_precision, adamw, linear_schedule, new_layer_lr, param_groups

log = logging.getLogger(__name__)

LAST, BEST, INDEX, METRICS, CONFIG = "last", "best_model", "index", "metrics.jsonl", "train_config.json"
# changing these between a run and its --resume would not continue the same run
RESUME_FREE = {"resume", "max_steps", "max_train_minutes", "num_epochs", "eval_steps", "logging_steps", "output_dir",
               "max_eval_examples"}


@dataclass
class Run:
    """Everything the loop reads, and its position (step, epoch, batch_pos, best_f1), which the loop
    advances and every checkpoint saves."""

    cfg: TrainConfig
    accelerator: Any
    model: Any  # as prepared by accelerate (DDP-wrapped under a launcher)
    raw: Any  # the RAG model itself
    optimizer: Any
    scheduler: Any
    params: list
    train_set: list[QAExample]
    dev_set: list[QAExample]
    total: int  # optimizer steps planned
    writer: Any = None  # TensorBoard, on process 0 when installed
    step: int = 0
    epoch: int = 0
    batch_pos: int = 0  # global batches of this epoch already taken
    best_f1: float | None = None

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)

    def position(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch_pos": self.batch_pos,
                "num_processes": self.accelerator.num_processes}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(cfg: TrainConfig) -> tuple[list[QAExample], list[QAExample]]:
    if cfg.train_file:
        train = load_qa(cfg.train_file)
        dev = load_qa(cfg.validation_file) if cfg.validation_file else []
    else:
        train = load_qa(cfg.dataset_name, split="train")
        dev = load_qa(cfg.validation_file) if cfg.validation_file else load_qa(cfg.dataset_name, split="validation")
    if cfg.max_train_examples:
        train = train[: cfg.max_train_examples]
    return train, dev


def build_index(cfg: TrainConfig, examples: list[QAExample], out: Path, progress: bool | None):
    from ragloop.retrieval import BiEncoder, Index, IndexSettings

    if cfg.index:
        return Index.load(cfg.index)
    if (out / "manifest.json").is_file():
        return Index.load(out)
    passages = context_passages(examples)
    if not passages:
        raise RagloopError("the training data has no contexts to index; pass --index DIR")
    encoder = BiEncoder.from_pretrained(cfg.passage_encoder or cfg.question_encoder,
                                        cfg.question_encoder if cfg.passage_encoder else None)
    return Index.build(passages, encoder, out, IndexSettings(factory=cfg.index_type), progress=progress)


def build_model(cfg: TrainConfig, index):
    from ragloop.generation.readers import READERS
    from ragloop.model import RAG
    from ragloop.retrieval import Encoder

    question_encoder = Encoder.from_pretrained(cfg.question_encoder)
    index.check_question_encoder(question_encoder)
    reader = READERS[cfg.rag.mode]
    return RAG(index, question_encoder, reader.load(cfg.generator or reader.default_model), cfg.rag)


def check_resume_config(cfg: TrainConfig, out: Path) -> None:
    """--resume continues a run only with the settings it started with (but those in RESUME_FREE)."""
    saved_file = out / CONFIG
    if not saved_file.is_file():
        raise RagloopError(f"{out}: nothing to resume ({CONFIG} missing); start without --resume")
    try:
        saved = json.loads(saved_file.read_text())  # flat, by flag name, whatever version wrote it
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RagloopError(f"{saved_file}: corrupt run config") from None
    now = cfg.to_dict()
    defaults = TrainConfig().to_dict()  # a setting added since the run started was at its default then
    changed = sorted(k for k in now if k not in RESUME_FREE and saved.get(k, defaults[k]) != now[k])
    if changed:
        raise RagloopError(f"{out}: --resume with settings that differ from the run's ({', '.join(changed)})")


def _accelerator(cfg: TrainConfig):
    """accelerate's Accelerator for this run; a --resume is checked against it before anything loads."""
    from accelerate import Accelerator

    device = "cuda" if torch.cuda.is_available() and not cpu_distributed() else "cpu"
    accelerator = Accelerator(mixed_precision=accelerate_precision(cfg.precision, device), cpu=cpu_distributed(),
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    world, out = accelerator.num_processes, Path(cfg.output_dir)
    if world > 1:
        destroy_process_group_at_exit()
        if cfg.gold_passage_steps:  # those steps leave the question encoder without gradient, which DDP rejects
            raise RagloopError("--gold_passage_steps is not supported with more than one process yet")
    if cfg.resume:
        check_resume_config(cfg, out)
        saved = read_state(out / LAST)  # fail early on a corrupt checkpoint, before any model loads
        if saved.get("num_processes", 1) != world:
            raise RagloopError(f"{out / LAST}: written by a run of {saved.get('num_processes', 1)} process(es); "
                               f"resume it with as many (this run has {world}), so each step sees the same batch")
    return accelerator


def _model(cfg: TrainConfig, accelerator, train_set: list[QAExample], dev_all: list[QAExample], progress):
    """The RAG model on the accelerator's device, in training mode, parameters that get no gradient frozen."""
    main, out = accelerator.is_main_process, Path(cfg.output_dir)
    seed_everything(cfg.seed)
    with accelerator.main_process_first():  # all dev contexts are indexed, so dev questions can be answered
        index = build_index(cfg, train_set + dev_all, out / INDEX, progress if main else False)
    seed_everything(cfg.seed)
    model = build_model(cfg, index).to(accelerator.device)
    model.train()
    if not train_set:
        raise RagloopError("no training examples (check --train_file / --max_train_examples)")
    probe = train_set[0]
    if cfg.question_encoder_lr == 0:  # frozen: no gradient computed for it (nor FiD's distillation pass)
        model.question_encoder.requires_grad_(False)
    frozen = freeze_unused_parameters(model, lambda: model([probe.question], [probe.answers[0]]).loss)
    if frozen and main:
        log.info("frozen %d parameter tensors that get no gradient: %s", len(frozen), ", ".join(frozen))
    return model


def setup(cfg: TrainConfig, progress: bool | None) -> Run:
    """Build the run (see the module's docstring); a fresh run writes its config and starts a fresh log."""
    accelerator = _accelerator(cfg)
    out, world = Path(cfg.output_dir), accelerator.num_processes
    train_set, dev_all = load_data(cfg)  # bad data fails here, before anything is written
    if accelerator.is_main_process and not cfg.resume:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / CONFIG)
        (out / METRICS).unlink(missing_ok=True)
    model = _model(cfg, accelerator, train_set, dev_all, progress)
    seed_everything(cfg.seed + accelerator.process_index)  # every process draws its own dropout masks
    question = {id(p) for p in model.question_encoder.parameters()}
    new = {id(p) for p in model.generator.untrained_parameters()}
    question_lr = cfg.learning_rate if cfg.question_encoder_lr is None else cfg.question_encoder_lr
    groups = param_groups(model.parameters(), (question, question_lr),
                          (new, new_layer_lr(cfg.learning_rate, cfg.new_params_lr)))
    params = [p for p in model.parameters() if p.requires_grad]  # what the loop clips
    optimizer = adamw(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    batches = math.ceil(len(train_set) / (cfg.batch_size * world))
    total = cfg.max_steps or math.ceil(batches / cfg.gradient_accumulation_steps) * cfg.num_epochs
    scheduler = linear_schedule(optimizer, cfg.warmup_steps, total)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    run = Run(cfg, accelerator, prepared, accelerator.unwrap_model(prepared), optimizer, scheduler, params,
              train_set, sample_evenly(dev_all, cfg.max_eval_examples), total)
    if cfg.resume:
        state = load_checkpoint(out / LAST, run.raw, optimizer.optimizer, scheduler, scaler(run),
                                rank=accelerator.process_index)
        run.step, run.epoch, run.batch_pos, run.best_f1 = (state[k] for k in ("step", "epoch", "batch_pos", "best_f1"))
        if accelerator.is_main_process:
            _rewrite_metrics(out / METRICS, run.step)
        log.info("resumed from %s at step %d (epoch %d)", out / LAST, run.step, run.epoch)
    return run


def _rewrite_metrics(path: Path, upto_step: int) -> None:
    """On resume, drop log lines written after the checkpoint, so the log reads as one run."""
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= upto_step]
        path.write_text("".join(ln + "\n" for ln in keep))


def scaler(run: Run):
    """accelerate's gradient scaler (fp16 only), saved and restored with the checkpoint."""
    return getattr(run.accelerator, "scaler", None)
