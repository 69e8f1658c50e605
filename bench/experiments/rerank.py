"""Experiment "rerank": what a cross-encoder reranking stage buys and costs.

    python -m bench.experiments --only rerank

Each reranker of settings.rerankers ({"name", "folder", "flags"}) is trained into its folder with
`ragloop train-reranker` and its flags (its defaults otherwise) if that folder does not hold one: the
defaults (from the bundled MiniLM), and the same started from the demo's trained span reader's encoder
(`--model runs/demo/rag/best_model/generator`, which `make demo` writes). Both train on the bundled train
articles only; neither sees the dev articles. A reranker's "quantize" list gives one pass each (null:
fp32; "int8": `Reranker.quantize("int8")`). The cost is the first reranker's (they are the same size).

1. Retrieval quality on the recipe's dev questions (evaluate.retrieval_questions, spread evenly; the
   dev index settings.index: dev articles, MiniLM, Flat, built if missing): gold@k, hit@k (evaluate.
   retrieval_k) and mrr@10 for dense, BM25 and hybrid, each with and without the reranker over its top
   settings.depth.
   The reranker as its folder configures it: per first stage, the cross-encoder alone, its saved
   combination with the first stage's evidence, or the first stage's own order where nothing beat it
   on held-out questions (`rerank_use` in each row); one pass per reranker and entry of its "quantize".
2. Cost: milliseconds the reranking stage adds per question (one question per call, k=5, hybrid first
   stage) at each of settings.cost_depths, for each "quantize" entry of the first reranker, with the cross-encoder
   scoring every candidate (a saved fallback would cost nothing); the median of settings.cost_questions
   calls, after a warm-up.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.experiments.pipeline import stamp, write_results
from bench.suite.tables import say, table


def ensure_reranker(folder: str, flags: list[str] | None = None) -> None:
    """Train a reranker into `folder` with `ragloop train-reranker` and `flags` (its defaults where a flag
    is not given) unless one is there."""
    if (Path(folder) / "config.json").is_file():
        return
    say(f"training a reranker into {folder} (ragloop train-reranker {' '.join(flags or [])}) ...")
    subprocess.run([sys.executable, "-m", "ragloop", "train-reranker", "--output_dir", folder, *(flags or [])],
                   check=True)


def dev_index(path: Path):
    from ragloop.data import load_corpus
    from ragloop.data.bundled import SQUAD_DEV, bundled_path
    from ragloop.retrieval import BiEncoder, Index

    if (path / "manifest.json").is_file():
        return Index.load(path)
    say(f"building {path} from {SQUAD_DEV} (all-MiniLM-L6-v2, Flat) ...")
    return Index.build(load_corpus([bundled_path(SQUAD_DEV)]), BiEncoder.from_pretrained(), path)


def dev_questions(recipe, n: int) -> list:
    from ragloop.data import load_qa
    from ragloop.data.qa import sample_evenly

    return sample_evenly(load_qa(recipe.dev_data), n)


def loaded(folder: str, quantize: str | None):
    from ragloop.retrieval.rerank import Reranker

    return Reranker.from_pretrained(folder).quantize(quantize)


def quality(index, reranker, examples: list, ks: tuple[int, ...], depth: int, plain: bool = True,
            label: str = "") -> list[dict]:
    from ragloop.constants import SEARCH_MODES as MODES
    from ragloop.evaluation import evaluate_retrieval
    from ragloop.retrieval import Retriever

    rows = []
    tag = ", ".join(t for t in (label, reranker.quantization) if t)
    tag = f" ({tag})" if tag else ""
    for mode in MODES:
        for stage in ((None, reranker) if plain else (reranker,)):
            retriever = Retriever(index, mode=mode)
            if stage is not None:
                retriever.set_reranker(stage, depth)
            start = time.perf_counter()
            result = evaluate_retrieval(retriever, examples, ks, mode, progress=None)
            result["seconds"] = round(time.perf_counter() - start, 1)
            result["name"] = f"{mode} + rerank@{depth}{tag}" if stage is not None else mode
            say(f"  {result['name']}: gold@1 {result['gold@1']:.3f} ({result['seconds']} s)")
            rows.append(result)
    return rows


def cost(index, reranker, questions: list[str], depths: list[int]) -> list[dict]:
    from ragloop.retrieval import Retriever

    reranker.combinations = {}  # the cross-encoder scores every candidate: a fallback would cost nothing
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
            added.append(((time.perf_counter() - t1) - (t1 - t0)) * 1000)
        out.append({"depth": depth, "precision": reranker.quantization or "fp32", "questions": len(added),
                    "added_ms_p50": round(statistics.median(added), 1),
                    "added_ms_mean": round(statistics.fmean(added), 1)})
        say(f"  depth {depth}, {out[-1]['precision']}: +{out[-1]['added_ms_p50']} ms per question (p50)")
    return out


def rows_table(rows: list[dict], cols: list[str], head: list[str]) -> str:
    return table(head, [[f"{r[c]:.3f}" if isinstance(r[c], float) else r[c] for c in cols] for r in rows])


def run(exp, results: Path) -> None:
    from ragloop.cli import quiet_libraries

    quiet_libraries()
    recipe, s = exp.recipe(), exp.settings
    for r in s["rerankers"]:
        ensure_reranker(r["folder"], r.get("flags"))
    index = dev_index(Path(s["index"]))
    res = {**stamp(exp), "rerankers": s["rerankers"], "index": s["index"], "passages": len(index)}
    examples = dev_questions(recipe, recipe.retrieval_questions)
    runs = [(r, q) for r in s["rerankers"] for q in r.get("quantize", [None])]
    res["quality"] = rows = [row for i, (r, q) in enumerate(runs)
                             for row in quality(index, loaded(r["folder"], q), examples, recipe.retrieval_k,
                                                s["depth"], plain=i == 0, label=r["name"])]
    for row in rows:
        row.setdefault("rerank_use", "-")
    cols = ["name"] + [f"{m}@{k}" for m in ("gold", "hit") for k in recipe.retrieval_k] + ["mrr@10", "rerank_use",
                                                                                        "seconds"]
    print(f"Retrieval quality, {len(examples)} dev questions, rerank depth {s['depth']}\n")
    print(rows_table(rows, cols, ["retrieval", *cols[1:-2], "reranking stage uses", "seconds (all questions)"]))
    timed = [e.question for e in dev_questions(recipe, s["cost_questions"] + 3)]
    first = s["rerankers"][0]
    res["cost"] = rows = [row for q in first.get("quantize", [None])
                          for row in cost(index, loaded(first["folder"], q), timed, s["cost_depths"])]
    print("\nWhat reranking adds per question (hybrid first stage, k=5, every candidate scored)\n")
    print(rows_table(rows, ["depth", "precision", "added_ms_p50", "added_ms_mean"],
                     ["depth", "precision", "ms added, p50", "ms added, mean"]))
    write_results(results, res)
