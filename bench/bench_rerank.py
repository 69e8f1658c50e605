"""Reranking: what a cross-encoder stage buys and costs (prints markdown tables, writes JSON).

    ragloop train-reranker --output_dir runs/reranker                 # the bundled train articles only
    python bench/bench_rerank.py --reranker runs/reranker              # quality + cost
    python bench/bench_rerank.py --reranker runs/reranker --rag runs/demo/rag/best_model   # + demo F1

1. Retrieval quality on the bundled SQuAD dev sample (the README's index: dev articles, MiniLM, Flat,
   built if missing): gold@1/5/20, hit@1/5/20 and mrr@10 for dense, BM25 and hybrid, each with and
   without the reranker over its top --depth, on --questions questions spread evenly over the sample
   (the same questions for every row).
2. Cost: milliseconds the reranking stage adds per question (one question per call, k=5, hybrid first
   stage) at depth 20, 50 and 100; the median of --cost-questions calls, after a warm-up.
3. With --rag: answer F1/EM of a trained RAG model on the demo's two held-out sets, reading its own
   first-stage passages and then the reranked ones (no retraining: the same model, other candidates).

The reranker must not have seen the dev articles: `ragloop train-reranker` trains on the train articles.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from ragloop.constants import SEARCH_MODES  # noqa: E402
from ragloop.data import load_qa  # noqa: E402
from ragloop.data.bundled import SQUAD_DEV, bundled_path  # noqa: E402
from ragloop.data.qa import sample_evenly  # noqa: E402
from ragloop.evaluation import evaluate_answers, evaluate_retrieval  # noqa: E402
from ragloop.io import atomic_write_json  # noqa: E402
from ragloop.retrieval import BiEncoder, Index, Retriever  # noqa: E402
from ragloop.retrieval.rerank import Reranker  # noqa: E402

KS = (1, 5, 20)


def say(*args) -> None:
    print(*args, flush=True)


def dev_index(path: Path) -> Index:
    if not (path / "manifest.json").is_file():
        from ragloop.data import load_corpus

        say(f"building {path} from {SQUAD_DEV} (all-MiniLM-L6-v2, Flat) ...")
        return Index.build(load_corpus([bundled_path(SQUAD_DEV)]), BiEncoder.from_pretrained(), path)
    return Index.load(path)


def quality(index: Index, reranker: Reranker, questions: int, depth: int) -> list[dict]:
    examples = sample_evenly(load_qa(bundled_path(SQUAD_DEV)), questions)
    rows = []
    for mode in SEARCH_MODES:
        for stage in (None, reranker):
            retriever = Retriever(index, mode=mode)
            if stage is not None:
                retriever.set_reranker(stage, depth)
            start = time.perf_counter()
            result = evaluate_retrieval(retriever, examples, KS, mode, progress=None)
            result["seconds"] = round(time.perf_counter() - start, 1)
            result["name"] = f"{mode} + rerank@{depth}" if stage is not None else mode
            say(f"  {result['name']}: gold@1 {result['gold@1']:.3f} ({result['seconds']} s)")
            rows.append(result)
    return rows


def cost(index: Index, reranker: Reranker, n: int, depths=(20, 50, 100)) -> list[dict]:
    questions = [e.question for e in sample_evenly(load_qa(bundled_path(SQUAD_DEV)), n + 3)]
    plain = Retriever(index, mode="hybrid")
    out = []
    for depth in depths:
        reranked = Retriever(index, mode="hybrid")
        reranked.set_reranker(reranker, depth)
        for q in questions[:3]:  # warm-up
            plain.retrieve([q], 5), reranked.retrieve([q], 5)
        added = []
        for q in questions[3:]:
            t0 = time.perf_counter()
            plain.retrieve([q], 5)
            t1 = time.perf_counter()
            reranked.retrieve([q], 5)
            t2 = time.perf_counter()
            added.append(((t2 - t1) - (t1 - t0)) * 1000)
        out.append({"depth": depth, "questions": len(added), "added_ms_p50": round(statistics.median(added), 1),
                    "added_ms_mean": round(statistics.fmean(added), 1)})
        say(f"  depth {depth}: +{out[-1]['added_ms_p50']} ms per question (p50)")
    return out


def answers(rag_dir: Path, reranker: Reranker, questions: int, depth: int) -> list[dict]:
    from ragloop.model import RAG
    from ragloop.recipes import demo, load_recipe

    model = RAG.from_pretrained(rag_dir)
    sets = demo.eval_sets(demo.load_data(load_recipe()), questions)  # the demo's held-out and new-article sets
    first = model.retriever.describe()["mode"]
    out = []
    for stage in (None, reranker):
        model.retriever.set_reranker(stage, depth if stage is not None else None)
        for name, examples in sets:
            r = evaluate_answers(model, examples, "rag", progress=None)
            r.update(set=name, candidates=f"{first} + rerank@{depth}" if stage is not None else first)
            say(f"  {r['candidates']}, {name}: F1 {r['f1']:.3f}")
            out.append(r)
    return out


def table(rows: list[dict], cols: list[str], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reranker", required=True, help="a cross-encoder folder (ragloop train-reranker) or name")
    ap.add_argument("--index", default="runs/squad-index", help="dev-sample index (built if missing)")
    ap.add_argument("--questions", type=int, default=1000, help="dev questions for the quality table")
    ap.add_argument("--depth", type=int, default=20, help="rerank depth for the quality table")
    ap.add_argument("--cost-questions", type=int, default=30)
    ap.add_argument("--rag", help="a trained RAG model folder (e.g. runs/demo/rag/best_model) for section 3")
    ap.add_argument("--rag-questions", type=int, default=200)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: quality,cost")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rerank.json"))
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    reranker = Reranker.from_pretrained(args.reranker)
    index = dev_index(Path(args.index))
    say(f"# Reranking ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads); reranker {args.reranker}")
    result: dict = {"date": dt.date.today().isoformat(), "reranker": args.reranker, "index": args.index,
                    "passages": len(index), "threads": torch.get_num_threads()}
    if "quality" not in skip:
        say(f"\n## 1. Retrieval quality, {args.questions} dev questions, rerank depth {args.depth}")
        result["quality"] = rows = quality(index, reranker, args.questions, args.depth)
        cols = ["name"] + [f"gold@{k}" for k in KS] + [f"hit@{k}" for k in KS] + ["mrr@10", "seconds"]
        say(table(rows, cols, ["retrieval", *cols[1:-1], "seconds (all questions)"]))
    if "cost" not in skip:
        say(f"\n## 2. What reranking adds per question (hybrid first stage, k=5, {args.cost_questions} questions)")
        result["cost"] = rows = cost(index, reranker, args.cost_questions)
        say(table(rows, ["depth", "added_ms_p50", "added_ms_mean"], ["depth", "ms added, p50", "ms added, mean"]))
    if args.rag:
        say(f"\n## 3. Answers of {args.rag}, {args.rag_questions} questions per set")
        result["answers"] = rows = answers(Path(args.rag), reranker, args.rag_questions, args.depth)
        say(table(rows, ["candidates", "set", "f1", "em"], ["candidates", "questions", "F1", "EM"]))
    atomic_write_json(args.out, result)
    say(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
