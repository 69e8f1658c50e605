"""Cross-encoder reranker training: each question's positive against its BM25 and dense hard negatives.

    >>> from ragloop.training.reranker_trainer import RerankerTrainConfig, train_reranker
    >>> out = train_reranker(RerankerTrainConfig(output_dir="runs/reranker"))   # bundled SQuAD train articles
    >>> Reranker.from_pretrained(out["output_dir"]).score(questions, passages)

    $ ragloop train-reranker --output_dir runs/reranker          # 17-20 min on 2 CPU cores
    $ ragloop train-reranker --train_file train.json --model cross-encoder/ms-marco-MiniLM-L-6-v2

The data are `training.negatives.build_items`, as for the retriever: each question's own paragraph
(the chunk holding the answer) is its positive; its negatives are passages of other paragraphs that
BM25 and a dense encoder (the bundled MiniLM) rank high and that hold no answer string. A step reads
B groups of (question, passage) pairs, 1 positive + N negatives each, and takes the softmax
cross-entropy of the positive within its group (a listwise loss, as in sentence-transformers'
CrossEncoder training with hard negatives). The model starts from an encoder with a fresh one-label
head (the bundled MiniLM by default) or from a cross-encoder, and is saved as a Hugging Face folder
that `Reranker.from_pretrained` loads.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ragloop.config import EVAL_DEPTH, RerankerTrainConfig
from ragloop.data.bundled import SQUAD_TRAIN, bundled_path
from ragloop.data.corpus import Passage
from ragloop.data.qa import context_passages, load_qa, sample_evenly
from ragloop.errors import RagloopError
from ragloop.evaluation.retrieval import gold_ranks, mrr, within
from ragloop.io import atomic_dir, atomic_write_json
from ragloop.manifest import only_replace
from ragloop.retrieval.bm25 import BM25Index
from ragloop.retrieval.encoders import Encoder
from ragloop.retrieval.folder import bm25_text
from ragloop.retrieval.rerank import Reranker, passage_text, relevance
from ragloop.training.negatives import TrainItem, build_items
from ragloop.training.optim import adamw, autocast_dtype, linear_schedule, new_layer_lr, param_groups
from ragloop.training.steps import run_steps, total_steps

log = logging.getLogger(__name__)

SUMMARY = "reranker_training.json"


def training_data(cfg: RerankerTrainConfig, progress: bool | None = None) -> tuple[list[Passage], list[TrainItem]]:
    """Passages and (question, positive, negatives) items; questions without a negative are dropped."""
    train_file = cfg.train_file or str(bundled_path(SQUAD_TRAIN))
    examples = load_qa(train_file)
    if cfg.max_train_examples:
        examples = examples[: cfg.max_train_examples]
    use_dense = cfg.dense_encoder and cfg.dense_encoder.lower() != "none"
    dense = cfg.negatives // 2 if use_dense else 0
    encoder = Encoder.from_pretrained(cfg.dense_encoder) if dense else None
    passages, items = build_items(examples, cfg.chunk_words, cfg.negatives - dense, where=train_file,
                                  dense_negatives=dense, dense_encoder=encoder, progress=progress)
    kept = [it for it in items if it.negatives]
    if not kept:
        raise RagloopError(f"{train_file}: no question has a hard negative (a passage of another paragraph "
                           "without its answer); the reranker needs several paragraphs to train on")
    if len(kept) < len(items):
        log.info("%d questions without any hard negative left out", len(items) - len(kept))
    return passages, kept


def group_loss(reranker: Reranker, batch: list[TrainItem], passages: list[Passage], dtype: torch.dtype | None
               ) -> torch.Tensor:
    """Mean softmax cross-entropy of each question's positive within its group (1 positive + negatives)."""
    questions, texts = [], []
    for it in batch:
        for r in (it.positive, *it.negatives):
            questions.append(it.question)
            texts.append(passage_text(passages[r]))
    enc = reranker.tokenize(questions, texts)
    inputs = reranker.tokenizer.pad(enc, return_tensors="pt")
    device = reranker.device
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = reranker.model(**{k: v.to(device) for k, v in inputs.items()}).logits
    flat = relevance(logits.float())
    width = max(1 + len(it.negatives) for it in batch)
    scores = torch.full((len(batch), width), float("-inf"), device=device)
    start = 0
    for i, it in enumerate(batch):
        n = 1 + len(it.negatives)
        scores[i, :n] = flat[start : start + n]
        start += n
    return torch.nn.functional.cross_entropy(scores, torch.zeros(len(batch), dtype=torch.long, device=device))


_check_replaceable = only_replace(SUMMARY, "reranker training output")


def train_reranker(cfg: RerankerTrainConfig, progress: bool | None = None) -> dict:
    """Fine-tune, save to `cfg.output_dir` (atomically) and return {"output_dir", "steps", "final_loss" (mean
    of the last 10 steps), "losses", "seconds" (training steps), "seconds_per_step", "data_seconds" (finding
    the negatives), "validation" (or None)}."""
    out = Path(cfg.output_dir)
    if out.exists():
        _check_replaceable(out)  # fail before the work, not after
    torch.manual_seed(cfg.seed)
    t_data = time.time()
    passages, items = training_data(cfg, progress)
    data_seconds = round(time.time() - t_data, 1)
    reranker = Reranker.for_training(cfg.model, max_length=cfg.max_length)
    dtype = autocast_dtype(cfg.precision, reranker.device.type)
    params = [p for p in reranker.model.parameters() if p.requires_grad]
    fresh = {id(p) for n, p in reranker.model.named_parameters() if n in set(reranker.fresh_parameters)}
    groups = param_groups(params, (fresh, new_layer_lr(cfg.learning_rate, cfg.head_lr)), weight_decay=cfg.weight_decay)
    optimizer = adamw(groups, lr=cfg.learning_rate)
    total = total_steps(cfg, len(items))
    scheduler = linear_schedule(optimizer, cfg.warmup_steps, total)
    log.info("training reranker %s on %d questions: %d steps of %d groups (1 + %d), max length %d, %s",
             cfg.model, len(items), total, cfg.batch_size, cfg.negatives, cfg.max_length,
             "bf16 autocast" if dtype else "fp32")

    reranker.model.train()
    losses, seconds = run_steps(lambda idx: group_loss(reranker, [items[i] for i in idx], passages, dtype),
                                len(items), total, cfg, params, optimizer, scheduler, "training reranker", progress)
    step = len(losses)
    reranker.model.eval()
    final_loss = float(np.mean(losses[-10:]))
    log.info("trained %d steps in %.0fs (%.2fs a step); loss %.4f -> %.4f", step, seconds, seconds / step,
             losses[0], final_loss)

    validation = evaluate_reranker(reranker, cfg.validation_file, cfg.max_eval_examples, cfg.chunk_words,
                                   progress) if cfg.validation_file else None
    summary = {"config": cfg.to_dict(), "steps": step, "final_loss": final_loss,
               "losses": [round(x, 6) for x in losses], "seconds": seconds, "seconds_per_step": seconds / step,
               "data_seconds": data_seconds, "precision": "bf16" if dtype else "fp32", "train_questions": len(items),
               "train_passages": len(passages), "validation": validation}
    reranker.name = str(out)
    with atomic_dir(out, may_replace=_check_replaceable) as tmp:
        reranker.write_files(tmp)
        atomic_write_json(tmp / SUMMARY, summary)
    log.info("saved -> %s", out)
    return {"output_dir": str(out), "steps": step, "final_loss": final_loss, "losses": losses, "seconds": seconds,
            "seconds_per_step": seconds / step, "data_seconds": data_seconds, "validation": validation}


def evaluate_reranker(reranker: Reranker, qa_file: str, max_questions: int = 200, chunk_words: int = 100,
                      progress: bool | None = None) -> dict:
    """gold@1, gold@5 and mrr@10 (the question's own paragraph) of `qa_file`'s questions over its own
    paragraphs: BM25's top 20, and the same 20 reranked."""
    examples = sample_evenly([ex for ex in load_qa(qa_file) if ex.context], max_questions)
    if not examples:
        raise RagloopError(f"{qa_file}: no question has a context paragraph to retrieve")
    passages = context_passages(examples, chunk_words)
    depth = min(EVAL_DEPTH, len(passages))
    _, rows = BM25Index.build([bm25_text(p) for p in passages]).search([ex.question for ex in examples], depth)
    candidates = [[passages[r] for r in ranked if r >= 0] for ranked in rows.tolist()]
    scores = reranker.score([ex.question for ex in examples], candidates, progress=progress)
    reranked = [[ps[i] for i in np.argsort(-s, kind="stable")] for ps, s in zip(candidates, scores)]
    result: dict = {"questions": len(examples), "candidates": depth}
    for name, ranking in (("bm25", candidates), ("reranked", reranked)):
        gold = gold_ranks(examples, ranking)
        result.update({f"{name} gold@{k}": within(gold, k) for k in (1, 5)})
        result[f"{name} mrr@10"] = mrr(gold, 10)
    return result
