"""ragloop measured: one command, twelve sections, markdown tables, JSON and plots.

    python -m bench                    # full run, ~30 min on 2 quiet cores
    python -m bench --quick            # the same code paths on subsets, ~7 min
    python -m bench --only search,rag  # some sections (quality, indexing, search, rag, answers, quantize, cache)
    python -m bench --only compress,stream --big /work/cache/big   # the big-corpus sections (not in the default)
    python -m bench --only retrieval,serve,startup    # ragloop alone: vs the bare limit, HTTP load, start-up

1. quality   retrieval quality on the bundled SQuAD dev sample: dense vs BM25 vs hybrid, hit@k and
             gold@k for k = 1..100 (plot)
2. indexing  passages/s: ragloop `Index.build` vs a bare encoder forward (the limit) vs transformers'
             datasets knowledge-base path, same encoder weights on every side
3. search    latency and q/s of dense, BM25, hybrid (and the datasets path); Flat vs HNSW vs IVF-PQ:
             bytes per passage, recall@10; a scale curve to 1M synthetic vectors (plot)
4. rag       RAG training examples/s, peak RSS and answer latency: ragloop vs transformers'
             RagSequenceForGeneration / RagTokenForGeneration with the same models and inputs
5. answers   EM/F1 on held-out dev questions after the same training budget: ragloop RAG (with
             retrieval, closed book, oracle) vs the transformers RAG classes
6. quantize  int8 vs float32: encoding passages/s, RAG.answer latency, gold@5, answer F1 (--rag-model)
7. cache     a repeated question through the cache vs computed (Retriever.retrieve, RAG.answer)
8. compress  compressed indexes (IVF-PQ, OPQ, fast-scan) with and without the disk refine stage on the
             --big real corpus: RAM bytes/passage, x smaller than Flat, recall@10, hit@10, p50, build s
9. stream    streaming Index.build: peak RSS and time vs N (real passages, then replayed vectors to 1M),
             load time with fast vs full checksum verification
10. retrieval ragloop Index.build and Retriever.search vs the bare encoder + FAISS limit, stage by stage
11. serve     `ragloop serve` under 1, 10, 50 clients: req/s, p50/p95, micro-batch sizes
12. startup   `ragloop --help`, `--version`, BM25 and dense `search`: whole processes, start to exit

Sections 8-12 run when named. Writes bench/results/<section>.json, bench/results/*.png and
bench/results/summary.md (with --quick: the same names under bench/results/quick/, which git
ignores: only full runs are kept). Comparisons alternate their sides in one
process (A B, B A, ...), report medians of >= 5 rounds and medians of the per-round ratios. The
summary opens with a Goals table: every section's goals (bench/suite/goals.py), from this run or
from the latest results of sections it did not run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.suite import (
    answers,
    cache,
    compress,
    indexing,
    quality,
    quantize,
    rag_speed,
    retrieval,
    search,
    serve,
    startup,
    stream,
)
from bench.suite.bigdata import DEFAULT_BIG
from bench.suite.common import (
    BENCH_DIR,
    RESULTS_DIR,
    load_average,
    machine_info,
    machine_line,
    say,
    source_version,
    table,
)
from bench.suite.context import FULL, QUICK, Context
from bench.suite.goals import gather, goals_table

SECTIONS = {"quality": quality, "indexing": indexing, "search": search, "rag": rag_speed, "answers": answers,
            "quantize": quantize, "cache": cache, "compress": compress, "stream": stream, "retrieval": retrieval,
            "serve": serve, "startup": startup}
DEFAULT_SECTIONS = ["quality", "indexing", "search", "rag", "answers", "quantize", "cache"]
# Seconds each section takes on 2 quiet cores (AMD EPYC, torch 2.13 CPU), including the models and
# indexes it is the first to need; from runs of each section with the shipped sizes.
ESTIMATE_S = {
    "quick": {"quality": 15, "indexing": 40, "search": 40, "rag": 135, "answers": 55, "quantize": 90, "cache": 15,
              "compress": 120, "stream": 120, "retrieval": 90, "serve": 60, "startup": 30},
    # compress and stream: guesses until a first full run on the 100k corpus replaces them
    "full": {"quality": 150, "indexing": 90, "search": 330, "rag": 240, "answers": 720, "quantize": 360,
             "cache": 30, "compress": 1200, "stream": 1800, "retrieval": 360, "serve": 240, "startup": 60},
}
QUICK_DIR = "quick"  # quick runs write under bench/results/quick/ (git-ignored: bench/.gitignore)
DEMO_RAG = BENCH_DIR.parent / "runs" / "demo" / "rag" / "best_model"  # what the README's demo trains


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--quick", action="store_true", help="subsets of every workload (~7 min on 2 quiet cores)")
    p.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                   help=f"comma-separated sections (default: {', '.join(DEFAULT_SECTIONS)}; compress and stream "
                   "need the --big corpus and long runs, so they run when named)")
    p.add_argument("--train-minutes", type=float, help="section 5 training budget per model (full 2, quick 0.15)")
    p.add_argument("--rag-model", metavar="DIR", help="a trained RAG model for section 6's answers (default: "
                   f"{DEMO_RAG.relative_to(BENCH_DIR.parent)} if it exists, else the untrained bundled generator; "
                   "'none': the bundled one)")
    p.add_argument("--threads", type=int, help="torch and FAISS threads (default: their own default)")
    p.add_argument("--out-dir", type=Path, help="where results go (default bench/results, with --quick "
                   f"bench/results/{QUICK_DIR})")
    p.add_argument("--big", type=Path, default=DEFAULT_BIG,
                   help="the >= 100k-passage real corpus for sections compress and stream (`python -m "
                   "bench.scripts.make_corpus` writes it, then `ragloop index` its index/; default "
                   f"{DEFAULT_BIG}, or $RAGLOOP_BENCH_BIG); without it they measure the bundled passages and say so")
    for name, module in SECTIONS.items():
        if hasattr(module, "options"):  # a section's own flags, prefixed with its name
            module.options(p.add_argument_group(f"section {name}"))
    args = p.parse_args(argv)
    args.out_dir = args.out_dir or (RESULTS_DIR / QUICK_DIR if args.quick else RESULTS_DIR)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.rag_model is None:
        args.rag_model = str(DEMO_RAG) if DEMO_RAG.is_dir() else None
    elif args.rag_model == "none":
        args.rag_model = None
    elif not Path(args.rag_model).is_dir():
        p.error(f"--rag-model {args.rag_model}: no such folder")
    return args


def quiet() -> None:
    import datasets

    from ragloop.cli import quiet_libraries

    quiet_libraries()
    datasets.disable_progress_bars()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def earlier_part(path: Path, i: int, module) -> str | None:
    """A section this run skipped, as its latest results file reports it (so a run with --only keeps the
    summary whole); None when there is no such file. The figures are that run's, and say so."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    note = (f"*Not run this time: from `{record.get('command', '?')}` on {str(record.get('date', '?'))[:10]} "
            f"(commit {record.get('machine', {}).get('ragloop_commit', '?')}); results: `{path.name}`.*")
    try:
        body = module.report(record["result"])
    except (KeyError, TypeError, ValueError, IndexError) as e:  # an older layout the report no longer reads
        body = f"(this section's report cannot read that file's layout: {type(e).__name__}: {e})"
    plots = [f"![{stem}]({stem}.png)" for stem in module.PLOTS if (path.parent / f"{stem}.png").is_file()]
    return "\n".join([f"## {i}. {module.TITLE}", "", note, "", body, *(["", *plots] if plots else []), ""])


def run_section(i: int, name: str, ctx: Context, run: dict) -> tuple[str, list[str]]:
    """Run one section, write its record and plots; its markdown part and its run-time row."""
    module = SECTIONS[name]
    say(f"\n== {i}. {module.TITLE} ==")
    t0, load0 = time.perf_counter(), load_average()
    result = module.run(ctx)
    if hasattr(module, "goals"):
        result["goals"] = module.goals(result)
    elapsed = time.perf_counter() - t0
    record = {"section": name, "title": module.TITLE, "mode": run["mode"], "command": run["command"],
              "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": run["machine"],
              "load_average_1min": {"start": load0, "end": load_average()}, "elapsed_s": elapsed, "result": result}
    out_dir = run["out_dir"]
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    md = [f"## {i}. {module.TITLE}", "", module.report(result)]
    for stem, plot in module.PLOTS.items():
        plot(result, out_dir / f"{stem}.png")
        md += ["", f"![{stem}]({stem}.png)"]
    md += ["", f"*Section time {elapsed / 60:.1f} min; results: `{name}.json`.*", ""]
    time_row = [f"{i}. {name}", f"{ESTIMATE_S[run['mode']][name] / 60:.1f}", f"{elapsed / 60:.1f}",
                f"{load0:.1f} / {load_average():.1f}"]
    return "\n".join(md), time_row


def header(args: argparse.Namespace, run: dict, load_start: float) -> list[str]:
    machine = run["machine"]
    return [f"# ragloop side by side ({run['mode']} run)", "", f"Machine: {machine_line(machine)}.", "",
            f"Command: `{run['command']}`; {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}; "
            f"1-min load average at start {load_start:.1f} on {machine['cores']} cores.", ""]


def plan(sections: list[str]) -> str:
    rows = [[f"{i}. {name}", f"{ESTIMATE_S['quick'][name] / 60:.1f}", f"{ESTIMATE_S['full'][name] / 60:.1f}"]
            for i, name in enumerate(SECTIONS, 1) if name in sections]
    rows.append(["total", f"{sum(ESTIMATE_S['quick'][name] for name in sections) / 60:.1f}",
                 f"{sum(ESTIMATE_S['full'][name] for name in sections) / 60:.1f}"])
    return "Estimated minutes on 2 quiet cores:\n\n" + table(["section", "quick", "full"], rows) + "\n"


def footer(times: list[list[str]], started: float, load_start: float, cores: int) -> list[str]:
    times = [*times, ["total", "", f"{(time.perf_counter() - started) / 60:.1f}", ""]]
    busy = max([load_start, load_average()]) > cores
    return ["## Run time", "",
            table(["section", "estimate, quiet 2 cores (min)", "this run (min)", "load avg start / end"], times),
            "", f"1-min load average {load_start:.1f} at start, {load_average():.1f} at end on {cores} cores"
            + (": other work shared the CPU, so times are longer and noisier than on a quiet machine (ratios "
               "less so: both sides of a round see the same load)." if busy else "."), ""]


def goals_part(out_dir: Path) -> list[str]:
    rows = gather(out_dir, "", list(SECTIONS), {name: m.goals for name, m in SECTIONS.items() if hasattr(m, "goals")},
                  quick=out_dir.name == QUICK_DIR)
    return ["## Goals", "", "Every section's goals, from this run or, for sections it did not run, from the latest "
            f"`{out_dir.name}/<section>.json` (the command and date that produced each are in the row).", "",
            goals_table(rows), ""]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    quiet()
    import faiss
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    if args.train_minutes is not None:
        sizes = dataclasses.replace(sizes, train_minutes=args.train_minutes)
    run = {"mode": "quick" if args.quick else "full", "command": " ".join(["python -m bench", *argv]),
           "machine": machine_info() | {"ragloop_commit": source_version()}, "out_dir": args.out_dir}
    started, load_start = time.perf_counter(), load_average()
    head = header(args, run, load_start)
    print("\n".join(head) + "\n" + plan(args.sections), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ragloop-bench-suite-"))
    ctx = Context(sizes, work, args.quick, rag_model=args.rag_model)
    ctx.big, ctx.args = args.big, args
    parts, times = [], []
    try:
        for i, name in enumerate(SECTIONS, 1):
            if name in args.sections:
                part, row = run_section(i, name, ctx, run)
                times.append(row)
                print(part, flush=True)
            else:
                part = earlier_part(args.out_dir / f"{name}.json", i, SECTIONS[name])
            if part:
                parts.append(part)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tail = goals_part(args.out_dir), footer(times, started, load_start, run["machine"]["cores"])
    print("\n".join(tail[0] + tail[1]))
    (args.out_dir / "summary.md").write_text("\n".join(head + tail[0] + parts + tail[1]))
    say(f"results -> {args.out_dir}/ (summary.md, <section>.json, *.png)")
    return 0
