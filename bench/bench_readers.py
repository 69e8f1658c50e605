#!/usr/bin/env python
"""Readers side by side: each reader mode, with the question encoder frozen and trained, on the demo's
recipe and split (`ragloop.recipes.demo`). A bench script, not a test.

    python bench/bench_readers.py     # sequence, token, fid x frozen / trained: 6 runs of the recipe's steps at k=5
    python bench/bench_readers.py --index runs/demo/index --modes "sequence fid"   # reuse the demo's index
    python bench/bench_readers.py --steps 2 --questions 4 --modes sequence --work /tmp/rb --out /tmp/rb/r.json  # smoke

Every run trains the same fixed number of steps (--steps, default the recipe's) with the recipe
unchanged except its reader mode (`rag_mode`), k (`n_docs`, --k) and, for "frozen", a question encoder
learning rate of 0. A mode the installed ragloop does not know (not in `ragloop.constants.READER_MODES`) is
skipped with a message. Each trained model is scored on --questions held-out questions of the training
articles and --questions questions of dev articles never trained on, each with retrieved passages
(RAG), none (closed book) and the gold paragraph (oracle): F1 and EM (`evaluate_answers`). Retrieval:
dense hit@k of the untrained question encoder and of the trained one through the same index
(`evaluate_retrieval`). Latency: p50 ms of `model.answer(question, k)` (greedy), one question per call,
after two warm-up calls. Train time: the training loop's wall clock (metrics.jsonl). Writes
bench/results/readers.json (--out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/bench_readers.py): find the bench package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.suite.common import machine_info, machine_line, say, source_version, table  # noqa: E402
from ragloop.cli import quiet_libraries  # noqa: E402
from ragloop.constants import READER_MODES as MODES  # noqa: E402
from ragloop.evaluation import evaluate_retrieval  # noqa: E402
from ragloop.io import atomic_write_bytes  # noqa: E402
from ragloop.model import RAG  # noqa: E402
from ragloop.recipes import demo, load_recipe  # noqa: E402
from ragloop.retrieval import Retriever  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = {"frozen": {"question_encoder_lr": 0.0}, "trained": {}}  # recipe changes per question encoder
SHORT = {demo.HELD_OUT: "held-out", demo.NEW_ARTICLES: "new articles"}
WARMUP = 2  # answer calls before latency is timed


def dense_hits(retriever: Retriever, sets: list, k: int) -> dict[str, float]:
    """Dense hit@k of `retriever` on each set."""
    return {SHORT[name]: evaluate_retrieval(retriever, questions, (k,), "dense")[f"hit@{k}"]
            for name, questions in sets}


def answer_latency_ms(model: RAG, questions: list[str], k: int) -> float:
    """p50 milliseconds of one greedy `model.answer(question, k)`, after WARMUP calls."""
    for q in questions[:WARMUP]:
        model.answer(q, k=k)
    times = []
    for q in questions[WARMUP:]:
        t0 = time.perf_counter()
        model.answer(q, k=k)
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


def run_one(recipe, mode: str, encoder: str, args, files, index_dir: Path, sets: list, latency_qs: list) -> dict:
    changes = {"rag_mode": mode, "n_docs": args.k, **ENCODERS[encoder]}
    cfg = demo.train_config(recipe.with_train(**changes), files.train, index_dir, args.work / f"{mode}-{encoder}",
                            steps=args.steps)
    say(f"training {mode}, question encoder {encoder}: {cfg.max_steps} steps of {cfg.batch_size}, k={args.k} ...")
    run = demo.train_rag(cfg, progress=False)
    model = RAG.from_pretrained(run.best_dir)
    scores: dict = {}
    for row in demo.score(model, sets, k=args.k, progress=False):
        scores.setdefault(SHORT[row["set"]], {})[row["context"]] = {"f1": row["f1"], "em": row["em"]}
    result = {"mode": mode, "question_encoder": encoder, "steps": run.steps, "train_s": round(run.seconds, 1),
              "scores": scores, "hit_after": dense_hits(model.retriever, sets, args.k),
              "answer_ms_p50": answer_latency_ms(model, latency_qs, args.k)}
    say(f"  {json.dumps(result)}")
    return result


def markdown(res: dict) -> str:
    k = res["k"]
    head = ["reader", "question encoder", "steps", "train min"]
    head += [f"{s}: {c} F1 (EM)" for s in SHORT.values() for c in ("RAG", "closed book", "oracle")]
    head += [f"hit@{k} {s} (before → after)" for s in SHORT.values()] + [f"ms/question p50 (k={k})"]
    rows = []
    for r in res["runs"]:
        row = [r["mode"], r["question_encoder"], r["steps"], f"{r['train_s'] / 60:.1f}"]
        for s in SHORT.values():
            row += [f"{r['scores'][s][c]['f1']:.3f} ({r['scores'][s][c]['em']:.3f})"
                    for c in ("rag", "closed-book", "oracle")]
        row += [f"{res['hit_before'][s]:.3f} → {r['hit_after'][s]:.3f}" for s in SHORT.values()]
        rows.append(row + [r["answer_ms_p50"]])
    return table(head, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="sequence token fid", help="reader modes, space-separated")
    ap.add_argument("--k", type=int, default=5, help="passages per question (the recipe's n_docs is replaced)")
    ap.add_argument("--steps", type=int, help="training steps of every run (default: the recipe's)")
    ap.add_argument("--questions", type=int, default=200, help="questions scored in each set")
    ap.add_argument("--latency-questions", type=int, default=20, help="questions timed (after 2 warm-up calls)")
    ap.add_argument("--recipe", help="recipe file (default: the pinned demo recipe)")
    ap.add_argument("--index", help="an index of the recipe's train + dev contexts (e.g. runs/demo/index); "
                    "default: built in --work")
    ap.add_argument("--work", type=Path, help="folder for the data, index and models (default: a temporary one, "
                    "removed at the end)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "readers.json"))
    args = ap.parse_args()
    quiet_libraries()
    temporary = args.work is None
    args.work = Path(tempfile.mkdtemp(prefix="ragloop-bench-readers-")) if temporary else args.work

    modes = []
    for mode in args.modes.split():
        if mode in MODES:
            modes.append(mode)
        else:
            say(f"skipping reader mode {mode!r}: this ragloop knows {', '.join(MODES)}")
    if not modes:
        raise SystemExit("no reader mode to run")
    recipe = load_recipe(args.recipe)
    data = demo.load_data(recipe)
    files = demo.write_data(data, args.work / "data")
    index_dir = demo.ensure_index(recipe, data, args.index or args.work / "index", progress=False)
    sets = demo.eval_sets(data, args.questions)
    latency_qs = [e.question for e in demo.eval_sets(data, args.latency_questions + WARMUP)[1][1]]
    say(f"{recipe.path.name}: {args.steps or recipe.steps} steps per run, k={args.k}, {args.questions} questions "
        f"per set; hit@{args.k} of the untrained question encoder ...")
    hit_before = dense_hits(Retriever.from_index(index_dir), sets, args.k)

    res = {"date": dt.date.today().isoformat(), "machine": machine_info(), "commit": source_version(),
           "recipe": str(recipe.path), "steps": args.steps or recipe.steps, "recipe_steps": recipe.steps,
           "k": args.k, "questions": args.questions, "latency_questions": len(latency_qs) - WARMUP,
           "skipped_modes": [m for m in args.modes.split() if m not in MODES], "hit_before": hit_before,
           "runs": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for mode in modes:
        for encoder in ENCODERS:
            res["runs"].append(run_one(recipe, mode, encoder, args, files, index_dir, sets, latency_qs))
            # after every run, so an interrupted bench keeps what it measured
            atomic_write_bytes(out, (json.dumps(res, indent=2) + "\n").encode())
    print(f"{machine_line(res['machine'])}\n{res['steps']} steps of {recipe.train['batch_size']} per run "
          f"({recipe.path.name}, k={args.k}); {args.questions} questions per set: held-out questions of the "
          "training articles and questions of dev articles never trained on\n")
    print(markdown(res))
    print(f"\nwrote {out}")
    if temporary:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
