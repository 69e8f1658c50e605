"""Cross-encoder reranker training: each question's positive against negatives from the first stages,
the checkpoint chosen on held-out articles.

    >>> from ragloop.training.reranker_trainer import RerankerTrainConfig, train_reranker
    >>> out = train_reranker(RerankerTrainConfig(output_dir="runs/reranker"))   # every bundled train question
    >>> Reranker.from_pretrained(out["output_dir"]).score(questions, passages)

    $ ragloop train-reranker --output_dir runs/reranker          # 13 min on 2 CPU cores (bench/README.md)
    $ ragloop train-reranker --loss bce --negative_sources hybrid,random --negatives 7 --head_lr 1e-3
    $ ragloop train-reranker --train_file train.json --model cross-encoder/ms-marco-MiniLM-L-6-v2

The questions (`training.reranker_data`): by default every bundled training question, the SQuAD v1.1
train articles and the answerable SQuAD v2.0 ones not already in them; v2.0's unanswerable questions
are negatives only. Whole articles are held out (`--heldout_every`, shuffled by `--seed`): every
`--eval_steps` steps and after the last, the reranker reorders BM25's top 20 (over the passages of every
article) for up to `--max_eval_examples` held-out questions, and the checkpoint with the best held-out
gold@1 (then mrr@10, then the earlier) is the one saved.

The data are `training.negatives.build_items`: each question's own paragraph (the chunk holding the
answer) is its positive; its `--negatives` come from `--negative_sources` (BM25, dense, their RRF
hybrid, random), split evenly; none is of its own paragraph or holds an answer string. A step reads B
questions, each with 1 positive + N negatives, under `--loss` (`training.reranker_losses`): listwise
softmax cross-entropy of the positive within its group, or binary cross-entropy with the positives
weighed by N. The model starts from an encoder with a fresh one-label head (the bundled MiniLM by
default; `--head_lr`) or from a cross-encoder, and is saved as a Hugging Face folder that
`Reranker.from_pretrained` loads, with `reranker_training.json` (the config, the split, every held-out
evaluation, the losses).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ragloop.config import EVAL_DEPTH, RerankerTrainConfig
from ragloop.constants import DEFAULT_ENCODER
from ragloop.data.corpus import Passage
from ragloop.data.qa import QAExample, context_passages, sample_evenly
from ragloop.errors import RagloopError
from ragloop.io import atomic_dir, atomic_write_json
from ragloop.manifest import only_replace
from ragloop.retrieval.encoders import Encoder
from ragloop.retrieval.rerank import Reranker, passage_text, relevance
from ragloop.retrieval.rerank_fusion import entries
from ragloop.training.negatives import TrainItem, build_items, split_evenly
from ragloop.training.optim import adamw, autocast_dtype, linear_schedule, new_layer_lr, param_groups
from ragloop.training.rankings import Rankings
from ragloop.training.rerank_fit import fit_held_out
from ragloop.training.reranker_data import HeldOutSplit, heldout_split, training_questions
from ragloop.training.reranker_eval import evaluate_reranker, rerank_scores
from ragloop.training.reranker_losses import batch_pairs, bce_loss, listwise_loss
from ragloop.training.steps import run_steps, total_steps

log = logging.getLogger(__name__)

SUMMARY = "reranker_training.json"


def dense_encoder(cfg: RerankerTrainConfig) -> Encoder | None:
    """The encoder of the dense and hybrid negatives, if a negative source needs one."""
    needed = {"dense", "hybrid"} & set(cfg.sources())
    return Encoder.from_pretrained(cfg.dense_encoder) if needed else None


def data_split(cfg: RerankerTrainConfig) -> tuple[HeldOutSplit, list[QAExample]]:
    """The held-out split of the training questions, and every question (answerable or not)."""
    answerable, unanswerable = training_questions(cfg.train_file, cfg.max_train_examples)
    return heldout_split(answerable, unanswerable, cfg.heldout_every, cfg.seed), answerable + unanswerable


def training_data(cfg: RerankerTrainConfig, progress: bool | None = None, split: HeldOutSplit | None = None,
                  encoder: Encoder | None = None) -> tuple[list[Passage], list[TrainItem]]:
    """Passages and items of the training articles (answerable questions first, then the unanswerable
    ones); answerable questions without a negative are dropped."""
    split = split or data_split(cfg)[0]
    encoder = encoder or dense_encoder(cfg)
    where = cfg.train_file or "the bundled training questions"
    passages, items = build_items(split.train, cfg.chunk_words, where=where, dense_encoder=encoder, progress=progress,
                                  sources=split_evenly(cfg.negatives, cfg.sources()),
                                  unanswerable=split.train_unanswerable, seed=cfg.seed)
    kept = [it for it in items if it.negatives]
    if not any(it.positive is not None for it in kept):
        raise RagloopError(f"{where}: no question has a negative (a passage of another paragraph without its "
                           "answer); the reranker needs several paragraphs to train on")
    if len(kept) < len(items):
        log.info("%d questions without any negative left out", len(items) - len(kept))
    return passages, kept


@dataclass
class HeldOut:
    """The held-out questions scored at each evaluation, over the passages of every article."""

    examples: list[QAExample]
    passages: list[Passage]
    rankings: Rankings

    @classmethod
    def build(cls, split: HeldOutSplit, everything: list[QAExample], cfg: RerankerTrainConfig,
              encoder: Encoder | None = None) -> HeldOut | None:
        if not split.heldout:
            return None
        examples = sample_evenly(split.heldout, cfg.max_eval_examples)
        passages = context_passages(everything, cfg.chunk_words)
        return cls(examples, passages, Rankings([ex.question for ex in examples], passages, encoder, cfg.seed))

    def scores(self, reranker: Reranker, stages: tuple[str, ...] = ("bm25",)) -> dict[str, dict[str, float]]:
        return rerank_scores(reranker, self.examples, self.passages, self.rankings, stages)


def group_loss(reranker: Reranker, batch: list[TrainItem], passages: list[Passage], dtype: torch.dtype | None,
               loss: str = "listwise", pos_weight: float = 1.0) -> torch.Tensor:
    """The batch's loss (`training.reranker_losses`): listwise, or bce with positives weighed `pos_weight`."""
    pairs = batch_pairs(batch)
    enc = reranker.tokenize([q for q, _ in pairs], [passage_text(passages[r]) for _, r in pairs])
    inputs = reranker.tokenizer.pad(enc, return_tensors="pt")
    device = reranker.device
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = reranker.model(**{k: v.to(device) for k, v in inputs.items()}).logits
    flat = relevance(logits.float())
    return bce_loss(flat, batch, pos_weight) if loss == "bce" else listwise_loss(flat, batch)


class BestCheckpoint:
    """Scores the held-out split at the given steps and keeps (in memory) the weights that scored best."""

    def __init__(self, reranker: Reranker, heldout: HeldOut | None, every: int, total: int) -> None:
        self.reranker, self.heldout, self.every, self.total = reranker, heldout, every, total
        self.evaluations: list[dict] = []
        self.best: dict | None = None
        self._state: dict | None = None
        self.seconds = 0.0

    def __call__(self, step: int) -> None:
        if self.heldout is None or (step % self.every and step != self.total):
            return
        t0 = time.time()
        row = {"step": step, **self.heldout.scores(self.reranker)["bm25"]}
        self.evaluations.append(row)
        key = (row["reranked gold@1"], row["reranked mrr@10"])
        if self.best is None or key > (self.best["reranked gold@1"], self.best["reranked mrr@10"]):
            self.best = row
            self._state = {k: v.detach().clone() for k, v in self.reranker.model.state_dict().items()}
        self.seconds += time.time() - t0
        log.info("step %d, held out: BM25 gold@1 %.3f, reranked %.3f (mrr@10 %.3f); best so far at step %d", step,
                 row["gold@1"], row["reranked gold@1"], row["reranked mrr@10"], self.best["step"])

    def restore(self) -> None:
        """Put the best weights back into the model (nothing to do without a held-out split)."""
        if self._state is not None:
            self.reranker.model.load_state_dict(self._state)


_check_replaceable = only_replace(SUMMARY, "reranker training output")


def train_reranker(cfg: RerankerTrainConfig, progress: bool | None = None) -> dict:
    """Fine-tune, save the best checkpoint to `cfg.output_dir` (atomically) and return {"output_dir",
    "steps", "final_loss" (mean of the last 10 steps), "losses", "seconds" (training steps and held-out
    evaluations), "seconds_per_step" (steps alone), "data_seconds" (loading, finding the negatives),
    "heldout" (the split and its evaluations, or None), "validation" (or None)}."""
    out = Path(cfg.output_dir)
    if out.exists():
        _check_replaceable(out)  # fail before the work, not after
    torch.manual_seed(cfg.seed)
    t_data = time.time()
    split, everything = data_split(cfg)
    encoder = dense_encoder(cfg)
    passages, items = training_data(cfg, progress, split, encoder)
    heldout = HeldOut.build(split, everything, cfg)
    data_seconds = round(time.time() - t_data, 1)
    reranker = Reranker.for_training(cfg.model, max_length=cfg.max_length)
    total = total_steps(cfg, len(items))
    best = BestCheckpoint(reranker, heldout, cfg.eval_steps, total)
    losses, seconds = _optimise(cfg, reranker, passages, items, total, best, progress)
    best.restore()
    reranker.model.eval()
    combination = _fit_combination(cfg, reranker, heldout, progress)
    validation = evaluate_reranker(reranker, cfg.validation_file, cfg.max_eval_examples, cfg.chunk_words,
                                   progress) if cfg.validation_file else None
    step, final_loss = len(losses), float(np.mean(losses[-10:]))
    step_seconds = max(seconds - best.seconds, 0.0)
    held = _heldout_summary(cfg, split, heldout, best)
    precision = "bf16" if autocast_dtype(cfg.precision, reranker.device.type) else "fp32"
    summary = {"config": cfg.to_dict(), "steps": step, "final_loss": final_loss,
               "losses": [round(x, 6) for x in losses], "seconds": seconds, "seconds_per_step": step_seconds / step,
               "data_seconds": data_seconds, "precision": precision, "train_questions": len(items),
               "train_unanswerable": sum(it.positive is None for it in items), "train_passages": len(passages),
               "heldout": held, "combination": combination, "validation": validation}
    reranker.name = str(out)
    with atomic_dir(out, may_replace=_check_replaceable) as tmp:
        reranker.write_files(tmp)
        atomic_write_json(tmp / SUMMARY, summary)
    log.info("saved -> %s%s", out, f" (the step {best.best['step']} checkpoint)" if best.best else "")
    return {"output_dir": str(out), "steps": step, "final_loss": final_loss, "losses": losses, "seconds": seconds,
            "seconds_per_step": step_seconds / step, "data_seconds": data_seconds, "heldout": held,
            "combination": combination, "validation": validation}


def _fit_combination(cfg: RerankerTrainConfig, reranker: Reranker, heldout: HeldOut | None,
                     progress: bool | None) -> dict | None:
    """Per first stage, the combination with its evidence fitted on the held-out questions (saved with the
    reranker: `training.rerank_fit`), or None without a held-out split."""
    if heldout is None:
        return None
    encoder = DEFAULT_ENCODER if cfg.dense_encoder == "none" else cfg.dense_encoder
    combos = fit_held_out(reranker, heldout.examples, heldout.passages, EVAL_DEPTH, encoder, progress)
    for mode, c in combos.items():
        log.info("%s first stage: %s (held-out gold@1 %s)", mode, c.use, c.held_out["gold@1"])
    return entries(combos)


def _optimise(cfg: RerankerTrainConfig, reranker: Reranker, passages: list[Passage], items: list[TrainItem],
              total: int, on_step, progress: bool | None) -> tuple[list[float], float]:
    """AdamW (the fresh head at --head_lr) with warmup and linear decay over `total` steps."""
    dtype = autocast_dtype(cfg.precision, reranker.device.type)
    params = [p for p in reranker.model.parameters() if p.requires_grad]
    fresh = {id(p) for n, p in reranker.model.named_parameters() if n in set(reranker.fresh_parameters)}
    groups = param_groups(params, (fresh, new_layer_lr(cfg.learning_rate, cfg.head_lr)), weight_decay=cfg.weight_decay)
    optimizer = adamw(groups, lr=cfg.learning_rate)
    scheduler = linear_schedule(optimizer, cfg.warmup_steps, total)
    log.info("training reranker %s on %d questions: %d steps of %d groups (1 + %d, %s negatives), %s loss, max "
             "length %d, %s", cfg.model, len(items), total, cfg.batch_size, cfg.negatives, "+".join(cfg.sources()),
             cfg.loss, cfg.max_length, "bf16 autocast" if dtype else "fp32")
    reranker.model.train()
    losses, seconds = run_steps(
        lambda idx: group_loss(reranker, [items[i] for i in idx], passages, dtype, cfg.loss, float(cfg.negatives)),
        len(items), total, cfg, params, optimizer, scheduler, "training reranker", progress, on_step=on_step)
    log.info("trained %d steps in %.0fs; loss %.4f -> %.4f", len(losses), seconds, losses[0],
             float(np.mean(losses[-10:])))
    return losses, seconds


def _heldout_summary(cfg: RerankerTrainConfig, split: HeldOutSplit, heldout: HeldOut | None,
                     best: BestCheckpoint) -> dict | None:
    if heldout is None:
        return None
    return {"every": cfg.heldout_every, "seed": cfg.seed, "articles": split.heldout_titles,
            "train_articles": split.train_titles, "questions": len(split.heldout), "train_questions": len(split.train),
            "scored_questions": len(heldout.examples), "passages": len(heldout.passages), "first_stage": "bm25",
            "candidates": min(EVAL_DEPTH, len(heldout.passages)), "evaluations": best.evaluations,
            "best": best.best, "seconds": round(best.seconds, 1)}
