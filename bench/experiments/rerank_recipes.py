"""Experiment "rerank-recipes": which way of training the cross-encoder reranker lifts the first stages
most on articles it never trained on?

    python -m bench.experiments --only rerank-recipes

Every variant is `ragloop train-reranker` (`train_reranker`) with settings.base, then the variant's own
settings on top (one settings list: settings.variants, each {"name", and any RerankerTrainConfig
fields}), for settings.steps steps each (the knob that sizes the whole experiment: a step is ~3.6 s on
2 CPU cores, about twice that in groups of 8), saved under settings.work/<the name as a slug>. base
starts every variant from the demo's trained span reader's encoder (`--model
runs/demo/rag/best_model/generator`): from the bundled MiniLM, a cross-encoder's held-out gold@1 stays at
chance for its first ~140 steps (0.05 at step 80, 0.56 at 160, 0.69 at 240), so a short run could not
tell recipes apart; from the span reader it is 0.57 at step 40 and 0.68 at 80. That reader trained on
most questions of the training articles, the held-out ones included, so the held-out figures here
compare recipes with each other; dev-article figures are the "rerank" experiment's. The variants are
issue 23's recipes, one setting changed at a time from the first: listwise vs binary cross-entropy,
negatives from BM25, dense or hybrid each mixed with random ones, group size 4 vs 8 (--negatives 3
vs 7), the fresh head's learning rate. A variant already trained with the same settings is read
back, not trained again, and not scored again where the results file already holds its row from the
same split, steps and base settings, so an interrupted run picks up where it stopped; the results file is
rewritten after each variant.

One more row needs no reranker training: the span reader's passage score as the ranker (DPR's reader
ranks its passages with the head that finds answers), from the trained model in settings.span_reader
(default runs/demo/rag/best_model, what `make demo` trains; the row is skipped, with a message, where
that folder holds no span reader). It reads each candidate as the cross-encoders do, "title text".

Scoring: the trainer's held-out split (whole articles, the same for every variant, as the data
settings are base's), up to base.max_eval_examples questions, over the passages of every training
article: gold@1 and mrr@10 of BM25's, the dense encoder's and hybrid's top 20 (settings.stages), before
reranking (the first stage alone, one row) and after (one row per variant, the checkpoint the trainer
chose on BM25). Prints one markdown table; "train min" is the training loop with its held-out
evaluations, not the minute or two of finding negatives.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.experiments.pipeline import stamp, write_results
from bench.suite.tables import say, table

FIRST_STAGE = "first stage alone"
SPAN_ROW = "span reader's passage score (no reranker training)"


class SpanRanker:
    """A span reader's `passage_scores` behind the `predict` of a reranker (what the held-out scoring
    calls): one relevance per (question, passage text) pair, `batch_size` pairs a forward."""

    def __init__(self, reader, batch_size: int = 32) -> None:
        self.reader, self.batch_size = reader, batch_size

    def predict(self, pairs: list[tuple[str, str]], show_progress_bar: bool | None = False):
        import numpy as np

        from ragloop.data.corpus import Passage

        out = [np.empty(0, dtype=np.float32)]
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i : i + self.batch_size]
            texts = [[Passage(id="", title="", text=t)] for _, t in chunk]
            scores = self.reader.passage_scores([q for q, _ in chunk], texts)
            out.append(scores[:, 0].cpu().numpy())
        return np.concatenate(out)


def span_ranker(folder: str) -> SpanRanker | None:
    """The span reader of the RAG model in `folder` as a ranker, or None (said) where there is none."""
    from ragloop.model import RAG

    if not (Path(folder) / "rag_config.json").is_file():
        say(f"  no trained RAG model in {folder}: the span reader's row is skipped (`make demo` trains one)")
        return None
    model = RAG.from_pretrained(folder)
    if model.config.mode != "span":
        say(f"  {folder} reads with {model.config.mode!r}, not the span reader: its row is skipped")
        return None
    return SpanRanker(model.generator.eval())


def variant_config(settings: dict, variant: dict):
    """The RerankerTrainConfig of one variant (a bad field or value: one ragloop error naming it)."""
    from ragloop.config import RerankerTrainConfig

    fields = {**settings["base"], **{k: v for k, v in variant.items() if k != "name"}}
    out = Path(settings["work"]) / re.sub(r"[^a-z0-9.+-]+", "-", variant["name"].lower()).strip("-")
    return RerankerTrainConfig.from_dict({**fields, "max_steps": settings["steps"], "output_dir": str(out)})


def trained_earlier(cfg) -> dict | None:
    """The summary of a run already in cfg.output_dir with exactly this config, else None."""
    from ragloop.training.reranker_trainer import SUMMARY

    try:
        summary = json.loads((Path(cfg.output_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("config") == json.loads(json.dumps(cfg.to_dict())) else None


def train_variant(cfg) -> dict:
    from ragloop.training.reranker_trainer import SUMMARY, train_reranker

    summary = trained_earlier(cfg)
    if summary is None:
        train_reranker(cfg, progress=False)
        summary = json.loads((Path(cfg.output_dir) / SUMMARY).read_text())
    else:
        say(f"  {cfg.output_dir}: trained earlier with these settings, read back")
    return summary


def heldout_for(cfg):
    """The held-out questions with rankings by BM25, dense (cfg.dense_encoder) and hybrid."""
    from ragloop.retrieval.encoders import Encoder
    from ragloop.training.reranker_trainer import HeldOut, data_split

    split, everything = data_split(cfg)
    return HeldOut.build(split, everything, cfg, Encoder.from_pretrained(cfg.dense_encoder)), split


def rows_scored_earlier(results: Path, res: dict) -> dict[str, dict]:
    """The rows of an earlier run's results file, by variant, where it scored the same held-out split with
    the same steps and base settings (an interrupted or shortened run goes on without scoring them again)."""
    try:
        old = json.loads(Path(results).read_text())
    except (OSError, ValueError):
        return {}
    same = all(old.get(k) == res[k] for k in ("steps", "base", "heldout_articles", "heldout_questions"))
    return {r["variant"]: r for r in old.get("rows", [])} if same else {}


def score_row(name: str, scores: dict, stages: list[str], prefix: str = "") -> dict:
    return {"variant": name, **{f"{s} {m}": scores[s][prefix + m] for s in stages for m in ("gold@1", "mrr@10")}}


def run(exp, results: Path) -> None:
    from ragloop.cli import quiet_libraries
    from ragloop.retrieval.rerank import Reranker

    quiet_libraries()
    s, stages = exp.settings, exp.settings["stages"]
    configs = [variant_config(s, v) for v in s["variants"]]  # every variant checked before any trains
    heldout, split = heldout_for(configs[0])
    res = {**stamp(exp), "steps": s["steps"], "base": s["base"], "heldout_articles": split.heldout_titles,
           "heldout_questions": len(heldout.examples), "passages": len(heldout.passages), "rows": []}
    earlier = rows_scored_earlier(results, res)
    for variant, cfg in zip(s["variants"], configs):
        say(f"== {variant['name']}: {s['steps']} steps ==")
        if variant["name"] in earlier and trained_earlier(cfg) is not None:
            say("  trained and scored earlier with these settings: its row is read back")
            res["rows"] += [earlier[n] for n in (FIRST_STAGE, variant["name"]) if n in earlier and not any(
                r["variant"] == n for r in res["rows"])]
            continue
        summary = train_variant(cfg)
        scores = heldout.scores(Reranker.from_pretrained(cfg.output_dir, max_length=cfg.max_length), tuple(stages))
        if not res["rows"]:
            res["rows"].append({**score_row(FIRST_STAGE, scores, stages), "steps": 0, "train_minutes": 0.0})
        best = (summary["heldout"] or {}).get("best") or {}
        res["rows"].append({**score_row(variant["name"], scores, stages, "reranked "), "settings": variant,
                            "steps": summary["steps"], "train_minutes": round(summary["seconds"] / 60, 1),
                            "data_minutes": round(summary["data_seconds"] / 60, 1), "chosen_step": best.get("step")})
        write_results(results, res)
    ranker = span_ranker(s.get("span_reader", "runs/demo/rag/best_model"))
    if ranker is not None:
        say(f"== {SPAN_ROW} ==")
        scores = heldout.scores(ranker, tuple(stages))
        res["rows"].append({**score_row(SPAN_ROW, scores, stages, "reranked "), "settings": {"name": SPAN_ROW},
                            "steps": 0, "train_minutes": 0.0})
        write_results(results, res)
    print(results_table(res["rows"], stages))


def results_table(rows: list[dict], stages: list[str]) -> str:
    cols = [f"{s} {m}" for s in stages for m in ("gold@1", "mrr@10")]
    return table(["variant", "steps", "train min", *cols],
                 [[r["variant"], r["steps"], f"{r['train_minutes']:.1f}", *(f"{r[c]:.3f}" for c in cols)]
                  for r in rows])
