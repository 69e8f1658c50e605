"""Section 5: answer quality (SQuAD EM/F1) on held-out dev questions, after training with the same
wall-clock budget on the same data.

- ragloop: `ragloop.training.train` (the product's trainer: AdamW, linear warmup and decay,
  length-grouped batches, gradient clipping) with `max_train_minutes`, RAG-Sequence and RAG-Token;
  scored by `ragloop.evaluation.evaluate_answers` with retrieval (rag), without passages
  (closed-book) and with the question's own paragraph (oracle).
- transformers: RagSequenceForGeneration and RagTokenForGeneration (the same models, passages and
  vectors as section 4) trained by a loop that copies the trainer's recipe: the same optimizer,
  schedule, batches (`length_grouped_batches`, same seed), clipping and time budget; scored with the
  same EM/F1 functions on the answers of their `generate` (greedy, 32 new tokens, as ragloop).

Models start from the same weights (a T5 built from a config, no pretraining is possible offline), so
with a few minutes of CPU training the absolute scores are low; the comparison is what the same
budget buys on each side.
"""

from __future__ import annotations

import math
import time

from bench.suite.common import num, say, table, timed
from bench.suite.models import LABELS, HFSide, optimizer_for
from ragloop.evaluation.metrics import exact_match, f1_score

TITLE = "Answer quality after the same training budget"
WARMUP = 20
EVAL_BATCH = 16


def train_ragloop(ctx, mode: str, minutes: float) -> tuple[object, dict]:
    from ragloop.config import TrainConfig
    from ragloop.data.bundled import SQUAD_TRAIN, bundled_path
    from ragloop.model import RAG
    from ragloop.training import train

    s = ctx.rag_setup
    cfg = TrainConfig(train_file=str(bundled_path(SQUAD_TRAIN)), max_train_examples=len(ctx.train_examples),
                      index=s.index_dir, question_encoder=s.question_encoder, generator=s.generator,
                      n_docs=s.n_docs, rag_mode=mode, batch_size=s.batch_size, learning_rate=s.learning_rate,
                      warmup_steps=WARMUP, num_epochs=1, max_train_minutes=minutes, eval_steps=10**9,
                      logging_steps=10**9, max_source_length=s.max_source_length,
                      max_target_length=s.max_target_length, precision="fp32", seed=0,
                      output_dir=str(ctx.work / f"train-ragloop-{mode}"))
    start = time.perf_counter()
    result = train(cfg, progress=False)
    seconds = time.perf_counter() - start
    return RAG.from_pretrained(result.best_dir, verify=False), {"steps": result.steps, "wall_s": seconds,
                                                                "final_loss": tail_mean(result.losses)}


def tail_mean(losses: list[float], n: int = 10) -> float:
    """Mean training loss over the last n steps (one step's loss is too noisy to compare)."""
    tail = losses[-n:]
    return sum(tail) / len(tail) if tail else float("nan")


def train_hf(ctx, mode: str, minutes: float) -> tuple[HFSide, dict]:
    """The ragloop trainer's recipe, step for step, around transformers' model."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from ragloop.training.batching import length_grouped_batches
    from ragloop.training.setup import seed_everything

    s = ctx.rag_setup
    seed_everything(0)
    side = HFSide(s, mode)
    optimizer = optimizer_for(side, s.learning_rate)
    examples = ctx.train_examples
    total = math.ceil(len(examples) / s.batch_size)  # one epoch, as the ragloop run plans
    scheduler = get_linear_schedule_with_warmup(optimizer, min(WARMUP, total), total)
    lengths = [len(e.question) + len(e.answers[0]) for e in examples]
    batches = length_grouped_batches(lengths, s.batch_size, 0, 0)
    params = [p for p in side.module.parameters() if p.requires_grad]
    side.module.train()
    t0, losses = time.time(), []
    for idx in batches:
        batch = [examples[i] for i in idx]
        out = side.loss([e.question for e in batch], [e.answers[0] for e in batch])
        out.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        losses.append(float(out.detach()))
        if time.time() - t0 > 60 * minutes:
            break
    return side, {"steps": len(losses), "wall_s": time.time() - t0, "final_loss": tail_mean(losses)}


def score_hf(side: HFSide, examples) -> dict:
    import torch

    side.module.eval()
    em = f1 = 0.0
    with torch.inference_mode():
        for start in range(0, len(examples), EVAL_BATCH):
            batch = examples[start : start + EVAL_BATCH]
            for ex, pred in zip(batch, side.generate([e.question for e in batch], 32)):
                em += exact_match(pred, ex.answers)
                f1 += f1_score(pred, ex.answers)
    n = max(1, len(examples))
    return {"context": "rag", "questions": len(examples), "em": round(em / n, 4), "f1": round(f1 / n, 4)}


def run(ctx) -> dict:
    from ragloop.evaluation import evaluate_answers

    minutes = ctx.sizes.train_minutes
    heldout = ctx.heldout
    scores = {}
    for name in ("ragloop-sequence", "hf-sequence", "ragloop-token", "hf-token"):
        impl, mode = name.split("-")
        say(f"training {name} for {minutes:g} min ...")
        model, info = (train_ragloop if impl == "ragloop" else train_hf)(ctx, mode, minutes)
        contexts = ("rag", "closed-book", "oracle") if name == "ragloop-sequence" else ("rag",)
        info["scores"] = {}
        eval_s = 0.0
        for context in contexts:
            if impl == "ragloop":
                seconds, res = timed(evaluate_answers, model, heldout, context, progress=False)
            else:
                seconds, res = timed(score_hf, model, heldout)
            info["scores"][context] = res
            eval_s += seconds
        info["eval_s"] = eval_s
        scores[name] = info
        say(f"  {name}: {info['steps']} steps, " + ", ".join(
            f"{c} F1 {r['f1']:.3f}" for c, r in info["scores"].items()) + f" (eval {eval_s:.0f} s)")
        del model  # free it before the next one trains
    s = ctx.rag_setup
    return {"minutes": minutes, "train_questions": len(ctx.train_examples), "heldout": len(heldout),
            "n_docs": s.n_docs, "batch_size": s.batch_size, "learning_rate": s.learning_rate, "models": scores}


def report(res: dict) -> str:
    rows = []
    for name, info in res["models"].items():
        for context, r in info["scores"].items():
            label = LABELS[name] + ("" if context == "rag" else f", {context}")
            hit = r.get(f"hit@{res['n_docs']}")
            rows.append([label, info["steps"], f"{info['steps'] * res['batch_size']:,}", num(info["final_loss"], 2),
                         f"{r['em']:.3f}", f"{r['f1']:.3f}", "—" if hit is None else f"{hit:.3f}"])
    return (f"Each model trained for {res['minutes']:g} min of wall clock on {res['train_questions']:,} SQuAD "
            f"training questions (batch {res['batch_size']}, lr {res['learning_rate']}, n_docs {res['n_docs']}), "
            f"then scored on {res['heldout']} held-out dev questions (articles not trained on), greedy decoding. "
            "closed-book: the ragloop model without passages; oracle: with the question's own paragraph.\n\n"
            + table(["model", "steps", "examples seen", "loss, last 10 steps", "EM", "F1", f"hit@{res['n_docs']}"],
                    rows))


PLOTS: dict = {}
