"""Experiment "readers": each reader mode, with the question encoder frozen and trained, on the
experiment's recipe (recipes/readers.json) and the demo's split.

    python -m bench.experiments --only readers

Every run trains the recipe's fixed steps with only its reader mode (`rag_mode`), k (`n_docs`,
settings.k), the variant's own "train" settings if it has any, and, for "frozen", a question encoder
learning rate of 0 changed. A mode the installed
ragloop does not know (not in `ragloop.constants.READER_MODES`) is skipped with a message. Each trained model is
scored on evaluate.questions held-out questions of the training articles and as many of dev articles
never trained on, each with retrieved passages (RAG), none (closed book) and the gold paragraph
(oracle): F1 and EM. A variant's "constrain" lists the decodings its model is scored with (null: free;
"spans": held to the passages, `--constrain spans`), one result row each, from one training; closed book
is scored free (with no passages there is nothing to hold an answer to) and is n/a for the extractive
reader. Retrieval: hit@k (the recipe's search mode) before training and through the trained question
encoder. Latency: p50 ms of `model.answer(question, k)`, one question per call, after two warm-up calls.
The trained models stay in settings.work (`<work>/<mode>-<encoder>/best_model`; null: a temporary
folder, removed), where the "int8" experiment loads them.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from bench.experiments.pipeline import Prepared, prepare, stamp, work_dir, write_results
from bench.suite.tables import say, table

ENCODERS = {"frozen": {"question_encoder_lr": 0.0}, "trained": {}}  # recipe changes per question encoder
WARMUP = 2  # answer calls before latency is timed


def short(name: str) -> str:
    from ragloop.recipes import demo

    return {demo.HELD_OUT: "held-out", demo.NEW_ARTICLES: "new articles"}[name]


def hits(retriever, sets: list, k: int, mode: str) -> dict[str, float]:
    """hit@k of `retriever` searching in `mode` on each set."""
    from ragloop.evaluation import evaluate_retrieval

    return {short(name): evaluate_retrieval(retriever, questions, (k,), mode)[f"hit@{k}"]
            for name, questions in sets}


def answer_latency_ms(model, questions: list[str], k: int) -> float:
    """p50 milliseconds of one greedy `model.answer(question, k)`, after WARMUP calls."""
    for q in questions[:WARMUP]:
        model.answer(q, k=k)
    times = []
    for q in questions[WARMUP:]:
        t0 = time.perf_counter()
        model.answer(q, k=k)
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


def run_one(recipe, variant: dict, k: int, prep: Prepared, work: Path, sets: list, latency_qs: list) -> list[dict]:
    """Train one variant, then one result row per decoding in its "constrain" list."""
    from ragloop.evaluation.answers import CONTEXTS
    from ragloop.model import RAG
    from ragloop.recipes import demo

    mode, encoder = variant["mode"], variant["question_encoder"]
    changes = {"rag_mode": mode, "n_docs": k, **variant.get("train", {}), **ENCODERS[encoder]}
    cfg = demo.train_config(recipe.with_train(**changes), prep.files.train, prep.index_dir, work / f"{mode}-{encoder}")
    say(f"training {mode}, question encoder {encoder}: {cfg.max_steps} steps of {cfg.batch_size}, k={k} ...")
    run = demo.train_rag(cfg, progress=False)
    model = RAG.from_pretrained(run.best_dir)
    closed = {}
    if not model.reader.extractive:  # closed book has no passages to hold answers to: scored free, once
        closed = {short(r["set"]): r for r in demo.score(model, sets, ("closed-book",), k=k, progress=False)}
    rows = []
    for constrain in variant.get("constrain", [None]):
        model.config.constrain = constrain
        scores: dict = {}
        for row in demo.score(model, sets, ("rag", "oracle") if closed else CONTEXTS, k=k, progress=False):
            scores.setdefault(short(row["set"]), {})[row["context"]] = {"f1": row["f1"], "em": row["em"]}
        for name, row in closed.items():
            scores[name]["closed-book"] = {"f1": row["f1"], "em": row["em"]}
        rows.append({"mode": mode, "question_encoder": encoder, "constrain": constrain, "steps": run.steps,
                     "batch_size": cfg.batch_size, "train_s": round(run.seconds, 1), "scores": scores,
                     "hit_after": hits(model.retriever, sets, k, cfg.rag.search_mode),
                     "answer_ms_p50": answer_latency_ms(model, latency_qs, k)})
        say(f"  {json.dumps(rows[-1])}")
    return rows


def markdown(res: dict) -> str:
    k, sets = res["k"], ("held-out", "new articles")
    head = ["reader", "question encoder", "decoding", "steps", "train min"]
    head += [f"{s}: {c} F1 (EM)" for s in sets for c in ("RAG", "closed book", "oracle")]
    head += [f"{res.get('search_mode', 'dense')} hit@{k} {s} (before → after)" for s in sets]
    head += [f"ms/question p50 (k={k})"]
    rows = []
    for r in res["runs"]:
        decoding = "extractive" if r["mode"] == "span" else ("held to spans" if r.get("constrain") else "free")
        row = [r["mode"], r["question_encoder"], decoding, f"{r['steps']} of {r.get('batch_size', '?')}",
               f"{r['train_s'] / 60:.1f}"]
        for s in sets:
            row += [f"{r['scores'][s][c]['f1']:.3f} ({r['scores'][s][c]['em']:.3f})"
                    if r["scores"][s][c]["f1"] is not None else "n/a"
                    for c in ("rag", "closed-book", "oracle")]
        row += [f"{res['hit_before'][s]:.3f} → {r['hit_after'][s]:.3f}" for s in sets]
        rows.append(row + [r["answer_ms_p50"]])
    return table(head, rows)


def run(exp, results: Path) -> None:
    from ragloop.constants import READER_MODES as MODES
    from ragloop.recipes import demo
    from ragloop.retrieval import Retriever

    recipe, settings = exp.recipe(), exp.settings
    k = settings["k"]
    variants = [v for v in settings["variants"] if v["mode"] in MODES]
    skipped = sorted({v["mode"] for v in settings["variants"]} - {v["mode"] for v in variants})
    if skipped:
        say(f"skipping reader mode(s) {', '.join(skipped)}: this ragloop knows {', '.join(MODES)}")
    with work_dir(settings.get("work"), "readers") as work:
        prep = prepare(recipe, work, settings.get("index"))
        sets = demo.eval_sets(prep.data, recipe.questions)
        latency_qs = [e.question for e in demo.eval_sets(prep.data, settings["latency_questions"] + WARMUP)[1][1]]
        res = {**stamp(exp), "steps": recipe.steps, "k": k, "questions": recipe.questions,
               "latency_questions": len(latency_qs) - WARMUP, "skipped_modes": skipped,
               "search_mode": recipe.train["search_mode"],
               "hit_before": hits(Retriever.from_index(prep.index_dir), sets, k, recipe.train["search_mode"]),
               "runs": []}
        for variant in variants:
            res["runs"].extend(run_one(recipe, variant, k, prep, work, sets, latency_qs))
            write_results(results, res)  # after every run, so an interrupted experiment keeps what it measured
    print(markdown(res))
