"""What the RAG trainer does every `eval_steps` and at its end, and how it logs: score dev F1, keep the
best model as a loadable folder, save the last checkpoint for --resume, append to metrics.jsonl (and
TensorBoard), redraw the curves. Process 0 alone scores and writes; the others wait for it.

    >>> record(run, {"step": 10, "loss": 1.23})     # a log line, a metrics.jsonl line, TensorBoard scalars
    >>> evaluate_and_save(run, progress=False)      # run.best_f1 updated; best_model/ and last/ written
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ragloop.evaluation.answers import evaluate_answers
from ragloop.training.checkpoint import rng_state, save_checkpoint
from ragloop.training.plot import plot_metrics
from ragloop.training.setup import BEST, LAST, METRICS, Run, scaler

log = logging.getLogger(__name__)


def evaluate_and_save(run: Run, progress: bool | None) -> None:
    """Score the dev set, save the model if it is the best so far (or there is no dev set), and save the
    checkpoint with every process's RNG state, for an exact resume."""
    accelerator = run.accelerator
    rank_rng = None
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        rank_rng = gather_object([rng_state()])[1:]
    if accelerator.is_main_process:
        metrics = evaluate_answers(run.raw, run.dev_set, progress=progress) if run.dev_set else None
        is_best = metrics is None or run.best_f1 is None or metrics["f1"] > run.best_f1
        if metrics is not None:
            run.best_f1 = max(metrics["f1"], run.best_f1 or 0.0)
            record(run, {"step": run.step, "dev_em": round(metrics["em"], 4), "dev_f1": round(metrics["f1"], 4)})
        if is_best:
            run.raw.save_pretrained(run.out / BEST)
        plot_metrics(run.out / METRICS)
        save_checkpoint(run.out / LAST, run.raw, run.optimizer.optimizer, run.scheduler, scaler(run),
                        {**run.position(), "best_f1": run.best_f1}, rank_rng=rank_rng)
    accelerator.wait_for_everyone()


def window_mean(losses: list[float], steps: int) -> float:
    """The mean loss of the last `steps` steps: what a log line reports, rather than one noisy step."""
    window = losses[-steps:] if steps > 0 else losses[-1:]
    return sum(window) / len(window)


def tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


def record(run: Run, values: dict) -> None:
    """One log line, one metrics.jsonl line and TensorBoard scalars (process 0 only)."""
    log.info(" ".join(f"{k}={v}" for k, v in values.items()))
    with open(run.out / METRICS, "a") as f:
        f.write(json.dumps(values) + "\n")
    if run.writer is not None:
        for k, v in values.items():
            if k not in ("step", "epoch") and isinstance(v, float | int):
                run.writer.add_scalar(k, v, values["step"])
