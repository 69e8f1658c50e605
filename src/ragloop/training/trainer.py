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

Three parts, each in its own module: `setup` (training/setup.py) builds the run, `optimise` (below) is
the loop, `evaluate_and_save` (training/evaluate_save.py) scores and writes; parameter groups, the
learning rates and the precision policy are training/optim.py, shared with the other trainers.

Under a launcher with P processes (see `ragloop.training.distributed`) each step is one global batch
of P x batch_size examples, split across the processes; the loss logged is the global batches' mean
loss averaged over the logging window (the `logging_steps` steps since the last log line).
Process 0 alone evaluates and writes (checkpoints, best model, metrics.jsonl, its plot metrics.png,
TensorBoard); the checkpoint keeps every process's RNG state, and --resume needs the same number of
processes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ragloop.config import TrainConfig
from ragloop.data.qa import QAExample
from ragloop.errors import RagloopError
from ragloop.quiet import bar_disabled
from ragloop.training.batching import length_grouped_batches
from ragloop.training.distributed import rank_share
from ragloop.training.evaluate_save import evaluate_and_save, record, tensorboard, window_mean
from ragloop.training.setup import BEST, LAST, Run, setup

log = logging.getLogger(__name__)

LOSS_PARTS = ("reader_loss", "retriever_loss")  # RAGOutput fields logged beside the loss when set (FiD)


@dataclass
class TrainResult:
    steps: int
    losses: list[float]  # training loss at every optimizer step of this invocation
    best_f1: float | None
    best_dir: Path
    last_dir: Path


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
        run = setup(cfg, progress)
        run.writer = tensorboard(run.out) if run.accelerator.is_main_process else None
        losses = optimise(run, progress)
        if run.writer is not None:
            run.writer.close()
        run.accelerator.wait_for_everyone()
        return TrainResult(run.step, losses, run.best_f1, out / BEST, out / LAST)
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


def optimise(run: Run, progress: bool | None) -> list[float]:
    """The loop: one optimizer step per global batch, from `run.step` to `run.total`, evaluating and saving
    every `eval_steps`. Returns the loss of every step it took."""
    cfg, accelerator, main = run.cfg, run.accelerator, run.accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    lengths = [len(ex.question) + len(ex.answers[0]) for ex in run.train_set]
    history: dict[str, list[float]] = {"loss": []}  # per step: the loss (and FiD's reader and retriever parts)
    sums: dict[str, float] = {}  # the step being accumulated, summed over its micro-batches
    bar = tqdm(total=run.total, initial=run.step, desc="training", unit="step",
               disable=not main or bar_disabled(progress))
    t0, logged_at = time.time(), run.step
    run.model.train()
    while run.step < run.total:
        # the same global batches on every process (seed, epoch); each process takes its share
        batches = length_grouped_batches(lengths, cfg.batch_size * world, cfg.seed, run.epoch)
        while run.batch_pos < len(batches) and run.step < run.total:
            mine, weight = rank_share(batches[run.batch_pos], rank, world)
            run.batch_pos += 1
            micro_step(run, [run.train_set[i] for i in mine], weight, sums)
            if not accelerator.sync_gradients:
                continue  # accumulating: the optimizer has not stepped yet
            run.scheduler.step()
            run.step += 1
            for name, value in global_mean(accelerator, sums).items():
                history.setdefault(name, []).append(value)
            sums.clear()
            lr = run.scheduler.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(loss=f"{history['loss'][-1]:.4f}", lr=f"{lr:.2e}")
            if main and (run.step % cfg.logging_steps == 0 or run.step == run.total):
                # a log line reports the mean of the steps since the last one: one step's loss is noise
                means = {name: round(window_mean(values, run.step - logged_at), 6) for name, values in history.items()}
                record(run, {"step": run.step, "epoch": run.epoch, "loss": means.pop("loss"), "lr": lr,
                             "elapsed_s": round(time.time() - t0, 2), **means})
                logged_at = run.step
            if cfg.rag.train_passage_encoder and cfg.reindex_steps and run.step % cfg.reindex_steps == 0:
                run.raw.reindex()  # the index's vectors drift from the passage encoder being trained
            if cfg.max_train_minutes is not None and out_of_time(accelerator, t0, cfg.max_train_minutes):
                run.total = run.step  # the schedule stays as planned; the run just ends here
            if run.step % cfg.eval_steps == 0 or run.step == run.total:
                evaluate_and_save(run, progress)
        if run.batch_pos >= len(batches):
            run.epoch, run.batch_pos = run.epoch + 1, 0
    bar.close()
    return history["loss"]


def micro_step(run: Run, batch: list[QAExample], weight: float, sums: dict[str, float]) -> None:
    """Forward and backward of this process's share of one micro-batch, its loss added to `sums`. The
    optimizer steps (and gradients are clipped) only once accelerate has accumulated a whole step."""
    cfg, accelerator = run.cfg, run.accelerator
    per_step = weight / cfg.gradient_accumulation_steps  # this share's part of the step's mean loss
    with accelerator.accumulate(run.model), accelerator.autocast():
        # the first gold_passage_steps read each question's own paragraph: a new generator learns to read
        # before retrieval noise comes in
        gold = gold_passages(batch) if run.step < cfg.gold_passage_steps else None
        output = run.model([e.question for e in batch], [e.answers[0] for e in batch], passages=gold)
        # weighted so that DDP's gradient average is the gradient of the global batch's mean loss
        loss = output.loss if weight == 1.0 else output.loss * weight
        accelerator.backward(loss)
        sums["loss"] = sums.get("loss", 0.0) + loss.detach().float().item() / cfg.gradient_accumulation_steps
        if output.retriever_loss is not None:  # FiD: the reader's and the retriever's part, logged apart
            for name in LOSS_PARTS:
                sums[name] = sums.get(name, 0.0) + getattr(output, name).float().item() * per_step
        if accelerator.sync_gradients and cfg.max_grad_norm:
            accelerator.clip_grad_norm_(run.params, cfg.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad()


def global_mean(accelerator, sums: dict[str, float]) -> dict[str, float]:
    """The global batch's mean loss (and parts): the mean over processes of their weighted sums."""
    if accelerator.num_processes == 1:
        return dict(sums)
    return {name: accelerator.reduce(torch.tensor(value, device=accelerator.device), "mean").item()
            for name, value in sums.items()}


def gold_passages(batch: list[QAExample]) -> list[list]:
    """Each question's gold passage as its single passage (for --gold_passage_steps): the chunk of its
    paragraph that holds the answer, as the index chunks it, so the reader learns on what it will read."""
    missing = [e.id for e in batch if not e.context]
    if missing:
        raise RagloopError(f"--gold_passage_steps needs each question's paragraph; question {missing[0]!r} has none")
    return [[e.answer_passage()] for e in batch]


def out_of_time(accelerator, t0: float, minutes: float) -> bool:
    """Whether the time budget is spent; under DDP every process takes rank 0's answer."""
    late = torch.tensor([float(time.time() - t0 > 60 * minutes)], device=accelerator.device)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast

        late = broadcast(late, from_process=0)
    return bool(late.item())
