"""End-to-end RAG training, readable top to bottom.

    >>> from ragloop.config import TrainConfig
    >>> from ragloop.training import train
    >>> result = train(TrainConfig(train_file="train.json", validation_file="dev.json", max_steps=200))
    >>> result.best_dir          # a folder that RAG.from_pretrained() loads

What happens: load QA data; build (or open) an index of the data's contexts; build the RAG model
(question encoder, generator); then AdamW with linear warmup and decay over length-grouped batches,
under autocast (bf16/fp16) with gradient accumulation, through `accelerate` (so DDP under
`accelerate launch` / `torchrun` is the same loop). Every `eval_steps` it scores dev F1, keeps the
best model as a loadable folder and saves the last checkpoint for `--resume`.

Under a launcher with P processes (see `ragloop.training.distributed`) each step is one global batch
of P x batch_size examples, split across the processes; the loss logged is the global batches' mean
loss averaged over the logging window (the `logging_steps` steps since the last log line).
Process 0 alone evaluates and writes (checkpoints, best model, metrics.jsonl, its plot metrics.png,
TensorBoard); the checkpoint keeps every process's RNG state, and --resume needs the same number of
processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ragloop.config import TrainConfig
from ragloop.data.qa import QAExample, load_qa, sample_evenly
from ragloop.errors import RagloopError
from ragloop.evaluation.answers import evaluate_answers
from ragloop.training.batching import length_grouped_batches
from ragloop.training.checkpoint import load_checkpoint, read_state, rng_state, save_checkpoint
from ragloop.training.distributed import (
    cpu_distributed,
    destroy_process_group_at_exit,
    freeze_unused_parameters,
    rank_share,
)
from ragloop.training.plot import plot_metrics

log = logging.getLogger(__name__)

LAST, BEST, INDEX, METRICS, CONFIG = "last", "best_model", "index", "metrics.jsonl", "train_config.json"
# changing these between a run and its --resume would not continue the same run
RESUME_FREE = {"resume", "max_steps", "max_train_minutes", "num_epochs", "eval_steps", "logging_steps", "output_dir",
               "max_eval_examples"}
LOSS_PARTS = ("reader_loss", "retriever_loss")  # RAGOutput fields logged beside the loss when set (FiD)


@dataclass
class TrainResult:
    steps: int
    losses: list[float]  # training loss at every optimizer step of this invocation
    best_f1: float | None
    best_dir: Path
    last_dir: Path


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
    from ragloop.data.corpus import make_passages
    from ragloop.retrieval import BiEncoder, Index

    if cfg.index:
        return Index.load(cfg.index)
    if (out / "manifest.json").is_file():
        return Index.load(out)
    passages = make_passages({"doc_id": ex.doc_id, "title": ex.title, "text": ex.context,
                              "source": ex.source}
                             for ex in examples if ex.context)
    if not passages:
        raise RagloopError("the training data has no contexts to index; pass --index DIR")
    encoder = BiEncoder.from_pretrained(cfg.passage_encoder or cfg.question_encoder,
                                        cfg.question_encoder if cfg.passage_encoder else None)
    return Index.build(passages, encoder, out, factory=cfg.index_type, progress=progress)


def build_model(cfg: TrainConfig, index):
    from ragloop.generation import Generator
    from ragloop.model import RAG, RAGConfig
    from ragloop.retrieval import Encoder

    question_encoder = Encoder.from_pretrained(cfg.question_encoder)
    index.check_question_encoder(question_encoder)
    generator = Generator.from_pretrained(cfg.generator)
    rag_cfg = RAGConfig(n_docs=cfg.n_docs, mode=cfg.rag_mode, max_source_length=cfg.max_source_length,
                        max_target_length=cfg.max_target_length, train_passage_encoder=cfg.train_passage_encoder,
                        search_mode=cfg.search_mode, rerank=cfg.rerank, rerank_depth=cfg.rerank_depth,
                        distill_temperature=cfg.distill_temperature)
    return RAG(index, question_encoder, generator, rag_cfg)


def gold_passages(batch: list[QAExample]) -> list[list]:
    """Each question's own paragraph as its single passage (for --gold_passage_steps)."""
    from ragloop.data.corpus import Passage

    missing = [e.id for e in batch if not e.context]
    if missing:
        raise RagloopError(f"--gold_passage_steps needs each question's paragraph; question {missing[0]!r} has none")
    return [[Passage(e.doc_id, e.title, e.context, e.doc_id)] for e in batch]


def cpu_has_bf16() -> bool:
    """A CPU with native bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 autocast trains
    faster than fp32 (about 1.25x on the ragloop dev machines)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def mixed_precision(precision: str) -> str:
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if precision == "fp16" and not cuda:
        raise RagloopError("--precision fp16 needs a CUDA GPU; use bf16 (or fp32) on the CPU")
    return {"fp32": "no"}.get(precision, precision)


def _check_resume_config(cfg: TrainConfig, out: Path) -> None:
    saved_file = out / CONFIG
    if not saved_file.is_file():
        raise RagloopError(f"{out}: nothing to resume ({CONFIG} missing); start without --resume")
    try:
        saved = json.loads(saved_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RagloopError(f"{saved_file}: corrupt run config") from None
    now = cfg.to_dict()
    defaults = TrainConfig().to_dict()  # a setting added since the run started was at its default then
    changed = sorted(k for k in now if k not in RESUME_FREE and saved.get(k, defaults[k]) != now[k])
    if changed:
        raise RagloopError(f"{out}: --resume with settings that differ from the run's ({', '.join(changed)})")


def _rewrite_metrics(path: Path, upto_step: int) -> None:
    """On resume, drop log lines written after the checkpoint, so the log reads as one run."""
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= upto_step]
        path.write_text("".join(ln + "\n" for ln in keep))


def train(cfg: TrainConfig, progress: bool | None = None) -> TrainResult:
    """Train. A run that fails before its first checkpoint (bad data, a model that does not load, an
    index built with another encoder) leaves nothing behind: the output folder goes if this run created
    it, else what the run added to it. Once a checkpoint exists everything stays, for --resume."""
    out = Path(cfg.output_dir)
    created = None if cfg.resume or out.exists() else out  # the topmost folder this run will create
    while created is not None and not created.parent.exists():
        created = created.parent
    before = {p.name for p in out.iterdir()} if out.is_dir() else set()
    try:
        return _train(cfg, progress)
    except BaseException:
        if not cfg.resume and not (out / LAST).exists() and int(os.environ.get("RANK", "0")) == 0:
            _remove_new(created, out, before)
        raise


def _remove_new(created: Path | None, out: Path, before: set[str]) -> None:
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for path in out.iterdir() if out.is_dir() else ():
        if path.name in before:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def window_mean(losses: list[float], steps: int) -> float:
    """The mean loss of the last `steps` steps: what a log line reports, rather than one noisy step."""
    window = losses[-steps:] if steps > 0 else losses[-1:]
    return sum(window) / len(window)


def _train(cfg: TrainConfig, progress: bool | None) -> TrainResult:
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    out = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg.precision), cpu=cpu_distributed(),
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    if world > 1:
        destroy_process_group_at_exit()
        if cfg.gold_passage_steps:  # those steps leave the question encoder without gradient, which DDP rejects
            raise RagloopError("--gold_passage_steps is not supported with more than one process yet")
    if cfg.resume:
        _check_resume_config(cfg, out)
        saved = read_state(out / LAST)  # fail early on a corrupt checkpoint, before any model loads
        if saved.get("num_processes", 1) != world:
            raise RagloopError(f"{out / LAST}: written by a run of {saved.get('num_processes', 1)} process(es); "
                              f"resume it with as many (this run has {world}), so each step sees the same batch")
    train_set, dev_all = load_data(cfg)  # bad data fails here, before anything is written
    if main and not cfg.resume:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / CONFIG)
        (out / METRICS).unlink(missing_ok=True)  # a fresh run starts a fresh log
    seed_everything(cfg.seed)

    with accelerator.main_process_first():  # all dev contexts are indexed, so dev questions can be answered
        index = build_index(cfg, train_set + dev_all, out / INDEX, progress if main else False)
    dev_set = sample_evenly(dev_all, cfg.max_eval_examples)
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
    seed_everything(cfg.seed + rank)  # every process draws its own dropout masks
    params = [p for p in model.parameters() if p.requires_grad]
    q_ids = {id(p) for p in model.question_encoder.parameters()}
    q_lr = cfg.learning_rate if cfg.question_encoder_lr is None else cfg.question_encoder_lr
    # parameters a warm start leaves untrained learn faster with a larger step: with 10x, the bundled
    # BERT2BERT's dev F1 after 320 steps went from 0.02 to 0.045 (bench/bench_generator.py)
    new_ids = {id(p) for p in model.generator.untrained_parameters()}
    new_lr = 10 * cfg.learning_rate if cfg.new_params_lr is None else cfg.new_params_lr
    groups = [{"params": [p for p in params if id(p) not in q_ids | new_ids]},
              {"params": [p for p in params if id(p) in q_ids], "lr": q_lr},
              {"params": [p for p in params if id(p) in new_ids], "lr": new_lr}]
    # fused: one kernel for all parameters; the per-tensor loop costs seconds per step on a CPU
    fused = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)  # CPU fused AdamW: torch 2.4+
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)
    lengths = [len(ex.question) + len(ex.answers[0]) for ex in train_set]
    global_batch = cfg.batch_size * world
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / global_batch) / cfg.gradient_accumulation_steps)
    total = cfg.max_steps or steps_per_epoch * cfg.num_epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, min(cfg.warmup_steps, total), total)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    scaler = getattr(accelerator, "scaler", None)

    step, epoch, batch_pos, best_f1 = 0, 0, 0, None
    if cfg.resume:
        state = load_checkpoint(out / LAST, raw, optimizer.optimizer, scheduler, scaler, rank=rank)
        step, epoch, batch_pos, best_f1 = state["step"], state["epoch"], state["batch_pos"], state["best_f1"]
        if main:
            _rewrite_metrics(out / METRICS, step)
        log.info("resumed from %s at step %d (epoch %d)", out / LAST, step, epoch)

    writer = _tensorboard(out) if main else None
    losses: list[float] = []
    bar = tqdm(total=total, initial=step, desc="training", unit="step", disable=not main or (
        None if progress is None else not progress))
    model.train()
    running, t0, logged_at = 0.0, time.time(), step
    parts: dict[str, float] = {}  # this step's loss parts, when the reader reports them (FiD)
    part_losses: dict[str, list[float]] = {}
    while step < total:
        # the same global batches on every process (seed, epoch); each process takes its share
        batches = length_grouped_batches(lengths, global_batch, cfg.seed, epoch)
        while batch_pos < len(batches) and step < total:
            mine, weight = rank_share(batches[batch_pos], rank, world)
            batch = [train_set[i] for i in mine]
            batch_pos += 1
            with accelerator.accumulate(model), accelerator.autocast():
                output = model([e.question for e in batch], [e.answers[0] for e in batch],
                               passages=gold_passages(batch) if step < cfg.gold_passage_steps else None)
                loss = output.loss * weight if world > 1 else output.loss
                accelerator.backward(loss)
                running += loss.detach().float().item() / cfg.gradient_accumulation_steps
                if output.retriever_loss is not None:  # FiD: the reader's and the retriever's part, logged apart
                    scale = (weight if world > 1 else 1.0) / cfg.gradient_accumulation_steps
                    for name in LOSS_PARTS:
                        parts[name] = parts.get(name, 0.0) + getattr(output, name).float().item() * scale
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            if world > 1:  # the global batch's mean loss: the mean of the processes' weighted losses
                running = accelerator.reduce(torch.tensor(running, device=accelerator.device), "mean").item()
                parts = {name: accelerator.reduce(torch.tensor(value, device=accelerator.device), "mean").item()
                         for name, value in parts.items()}
            losses.append(running)
            for name, value in parts.items():
                part_losses.setdefault(name, []).append(value)
            lr = scheduler.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.2e}")
            if main and (step % cfg.logging_steps == 0 or step == total):
                record = {"step": step, "epoch": epoch, "loss": round(window_mean(losses, step - logged_at), 6),
                          "lr": lr, "elapsed_s": round(time.time() - t0, 2)}
                record.update({name: round(window_mean(values, step - logged_at), 6)
                               for name, values in part_losses.items()})
                _log(out, writer, record)
                logged_at = step
            running, parts = 0.0, {}
            if cfg.train_passage_encoder and cfg.reindex_steps and step % cfg.reindex_steps == 0:
                raw.reindex()
            if cfg.max_train_minutes is not None and _out_of_time(accelerator, t0, cfg.max_train_minutes):
                total = step  # the schedule stays as planned; the run just ends here
            if step % cfg.eval_steps == 0 or step == total:
                best_f1 = _evaluate_and_save(cfg, accelerator, raw, optimizer, scheduler, scaler, dev_set,
                                             {"step": step, "epoch": epoch, "batch_pos": batch_pos,
                                              "num_processes": world},
                                             best_f1, writer, progress)
        if batch_pos >= len(batches):
            epoch, batch_pos = epoch + 1, 0
    bar.close()
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    return TrainResult(step, losses, best_f1, out / BEST, out / LAST)


def _out_of_time(accelerator, t0: float, minutes: float) -> bool:
    """Whether the time budget is spent; under DDP every process takes rank 0's answer."""
    late = torch.tensor([float(time.time() - t0 > 60 * minutes)], device=accelerator.device)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast

        late = broadcast(late, from_process=0)
    return bool(late.item())


def _evaluate_and_save(cfg, accelerator, raw, optimizer, scheduler, scaler, dev_set, position, best_f1, writer,
                       progress) -> float | None:
    out = Path(cfg.output_dir)
    rank_rng = None
    if accelerator.num_processes > 1:  # every process's RNG states, for an exact resume
        from accelerate.utils import gather_object

        rank_rng = gather_object([rng_state()])[1:]
    if accelerator.is_main_process:
        metrics = evaluate_answers(raw, dev_set, progress=progress) if dev_set else None
        is_best = metrics is None or best_f1 is None or metrics["f1"] > best_f1
        if metrics is not None:
            best_f1 = max(metrics["f1"], best_f1 or 0.0)
            _log(out, writer, {"step": position["step"], "dev_em": round(metrics["em"], 4),
                               "dev_f1": round(metrics["f1"], 4)})
        if is_best:
            raw.save_pretrained(out / BEST)
        plot_metrics(out / METRICS)
        save_checkpoint(out / LAST, raw, optimizer.optimizer, scheduler, scaler, {**position, "best_f1": best_f1},
                        rank_rng=rank_rng)
    accelerator.wait_for_everyone()
    return best_f1


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _log(out: Path, writer, record: dict) -> None:
    log.info(" ".join(f"{k}={v}" for k, v in record.items()))
    with open(out / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        for k, v in record.items():
            if k not in ("step", "epoch") and isinstance(v, float | int):
                writer.add_scalar(k, v, record["step"])
