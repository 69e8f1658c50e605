"""Section "retrieval": ragloop indexing and search against the bare model / FAISS limit it is built on.

    python -m bench --only retrieval            # full: the whole bundled SQuAD dev sample (~2,000 passages)
    python -m bench --quick --only retrieval    # a subset, about two minutes on 2 quiet cores
    python -m bench --only retrieval --retrieval-naive   # also a bare loop with batches in input order

Workload: the bundled SQuAD v1.1 dev sample chunked with `ragloop.data.load_corpus` (100 words), the
offline default encoder (all-MiniLM-L6-v2: mean pooling, L2-normalised, max_length 256), a Flat
inner-product FAISS index, k=5.

1. Indexing, passages/s. ragloop = `Index.build(...)`, what `ragloop index -q` runs once the corpus and
   the model are loaded: encode, FAISS, SQLite store, BM25, manifest with checksums, reload and
   verify. The limit = a bare forward pass over the same passages: tokenizer, `model(**batch)`, mean
   pooling and normalisation under `torch.inference_mode()`, same batch size and max_length, batches
   of similar length (sorted by token count: the best a bare loop can do).
2. Search, questions/s and latency per question. ragloop = `Retriever.retrieve` (rows, scores and passages)
   and `Retriever.search` (plus the passages from the store), dense. The limit = bare encoder + FAISS
   `search` on the same index file and questions, batched (128 per forward, as ragloop) and one
   question per call. BM25 and hybrid are measured for information (no bare baseline).

Where the time goes inside ragloop is read off the real calls: the functions they go through are
wrapped with timers for the duration of one call (`Spans`). Variants run alternately (A B, B A, ...)
after a warm-up; tables show medians over repetitions (3 builds, 5 search rounds).
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np

import ragloop
import ragloop.io
from bench.suite.common import (
    BareEncoder,
    Spans,
    encoder_targets,
    load_average,
    median,
    paired_ratios,
    percentile,
    rotated,
    say,
    split_encode,
    table,
    timed,
)
from ragloop.data import load_corpus, load_qa
from ragloop.data.bundled import SQUAD_DEV, bundled_path
from ragloop.retrieval import BiEncoder, BM25Index, Encoder, Index, PassageStore, Retriever
from ragloop.retrieval.backend import FaissBackend

TITLE = "Retrieval: ragloop vs the bare model / FAISS limit"
PLOTS: dict = {}
SIZES = {"full": {"passages": 0, "questions": 512, "single": 150},  # passages 0: all of them
         "quick": {"passages": 128, "questions": 128, "single": 30}}
RUN = {"batch_size": 64, "k": 5, "index_repeats": 3, "search_repeats": 5}  # batch as `ragloop index`
GOAL = 0.90  # ragloop should reach at least 90% of each bare baseline's throughput
LIMIT = "bare encoder+FAISS"


# -- workload -----------------------------------------------------------------------------------------


def load_workload(n_passages: int | None, n_questions: int) -> tuple[list, list[str]]:
    """The first `n_passages` passages of the chunked corpus, and `n_questions` distinct questions
    spread evenly over the dev sample (so they come from every article)."""
    data = bundled_path(SQUAD_DEV)
    passages = load_corpus([data])
    if n_passages:
        passages = passages[:n_passages]
    questions = list(dict.fromkeys(ex.question for ex in load_qa(data)))
    step = max(1, len(questions) // max(1, n_questions))
    return passages, questions[::step][:n_questions]


# -- 1. indexing ----------------------------------------------------------------------------------

BUILD_STAGES = ("encoder probes", "faiss", "store", "bm25", "checksums")
BUILD_OTHER = "other (faiss add, manifest, rename, fsync)"


def build_spans(encoder: BiEncoder) -> Spans:
    """The stages `Index.build` goes through, and inside passage encoding its parts."""
    return Spans(
        [
            ("encode", BiEncoder, "encode_passages"),
            *encoder_targets(encoder.passage),
            ("encoder probes", Encoder, "probe"),
            ("faiss", FaissBackend, "create"),
            ("faiss", FaissBackend, "train"),
            ("faiss", faiss, "write_index"),
            ("faiss", faiss, "read_index"),
            ("store", PassageStore, "add"),
            ("bm25", BM25Index, "build"),
            ("bm25", BM25Index, "save"),
            ("bm25", BM25Index, "load"),
            ("checksums", ragloop.io, "sha256_file"),
        ]
    )


def index_with_ragloop(passages: list, encoder: BiEncoder, out_dir: Path, batch_size: int) -> tuple[float, dict]:
    """One `Index.build` into a fresh folder (as a first `ragloop index` run), and its stage times."""
    spans = build_spans(encoder)
    with spans.active():
        seconds, _ = timed(Index.build, passages, encoder, out_dir, batch_size=batch_size, progress=False)
    stages = dict(split_encode(spans.seconds, "encode"))
    stages.update({s: spans.seconds.get(s, 0.0) for s in BUILD_STAGES})
    stages[BUILD_OTHER] = seconds - spans.top_level()
    return seconds, stages


def bench_indexing(passages: list, encoder: BiEncoder, bare: BareEncoder, args, workdir: Path) -> dict:
    titles, texts = [p.title for p in passages], [p.text for p in passages]
    variants: dict[str, Callable[[int], tuple[float, dict]]] = {
        "ragloop": lambda rep: index_with_ragloop(passages, encoder, workdir / f"index-{rep}", args.batch_size),
        "bare": lambda rep: (timed(bare.encode, titles, texts, args.batch_size)[0], {}),
    }
    if args.naive:
        variants["bare_unsorted"] = lambda rep: (timed(bare.encode, titles, texts, args.batch_size, sort=False)[0], {})

    say(f"\nindexing {len(passages)} passages: warm-up ...")
    warm = passages[: 2 * args.batch_size]
    Index.build(warm, encoder, workdir / "warmup", batch_size=args.batch_size, progress=False)
    bare.encode([p.title for p in warm], [p.text for p in warm], args.batch_size)

    seconds: dict[str, list[float]] = defaultdict(list)
    stages: list[dict] = []
    for rep in range(args.index_repeats):
        for name in rotated(list(variants), rep):
            s, st = variants[name](rep)
            seconds[name].append(s)
            if st:
                stages.append(st)
            say(f"  rep {rep + 1}/{args.index_repeats} {name:<14} {s:7.2f} s  {len(passages) / s:7.1f} passages/s")
        if rep < args.index_repeats - 1:
            shutil.rmtree(workdir / f"index-{rep}", ignore_errors=True)

    last = workdir / f"index-{args.index_repeats - 1}"
    result = {
        "passages": len(passages),
        "batch_size": args.batch_size,
        "max_length": encoder.passage.spec.max_length,
        "repeats": args.index_repeats,
        "seconds": dict(seconds),
        "median_seconds": {k: median(v) for k, v in seconds.items()},
        "best_seconds": {k: min(v) for k, v in seconds.items()},
        "passages_per_s": {k: len(passages) / median(v) for k, v in seconds.items()},
        "stages_median_seconds": {k: median([st[k] for st in stages]) for k in stages[0]},
        "vectors_max_abs_diff": vector_agreement(last, bare.encode(titles, texts, args.batch_size)),
        "index_dir": str(last),
    }
    # throughput ratio = time ratio inverted: limit seconds / ragloop seconds, per repetition
    result["ratio_per_repeat"] = {n: paired_ratios(seconds["bare"], v) for n, v in seconds.items()}
    result["ratio_to_bare"] = {n: median(v) for n, v in result["ratio_per_repeat"].items()}
    return result


def vector_agreement(index_dir: Path, bare_vectors: np.ndarray) -> float:
    """Largest difference between the vectors ragloop stored and the bare ones (the same work?)."""
    stored = faiss.read_index(str(index_dir / FaissBackend.FILE))
    return float(np.abs(stored.reconstruct_n(0, stored.ntotal) - bare_vectors).max())


# -- 2. search ------------------------------------------------------------------------------------


def search_variants(retriever: Retriever, flat: faiss.Index, bare: BareEncoder, k: int) -> tuple[dict, dict]:
    """(batched, one question per call): each variant by name, the bare limit first."""
    def bare_search(qs: list[str]):
        return flat.search(bare.encode(qs, batch_size=128), k)

    batched = {
        LIMIT: bare_search,
        "ragloop retrieve dense": lambda qs: retriever.retrieve(qs, k, "dense"),
        "ragloop search dense": lambda qs: retriever.search(qs, k, "dense"),
        "ragloop retrieve bm25": lambda qs: retriever.retrieve(qs, k, "bm25"),
        "ragloop retrieve hybrid": lambda qs: retriever.retrieve(qs, k, "hybrid"),
    }
    one = {name: (lambda q, fn=fn: fn([q])) for name, fn in batched.items()}
    one["ragloop search dense"] = lambda q: retriever.search(q, k, "dense")
    return batched, one


def search_round(batched: dict, one: dict, questions: list[str], single: list[str], rep: int) -> dict:
    """One round: batched q/s of each variant, then one question at a time (every variant answers
    question i before any answers question i+1, so a burst of load from another process hits all of
    them alike): q/s, p50 and p95 ms."""
    names = list(batched)
    out: dict[str, dict[str, float]] = {}
    for name in rotated(names, rep):
        out[name] = {"batched": len(questions) / timed(batched[name], questions)[0]}
    latencies: dict[str, list[float]] = defaultdict(list)
    for i, q in enumerate(single):
        for name in rotated(names, rep + i):
            latencies[name].append(timed(one[name], q)[0])
    for name in names:
        out[name].update(single=len(single) / sum(latencies[name]), p50=percentile(latencies[name], 50) * 1e3,
                         p95=percentile(latencies[name], 95) * 1e3)
    return out


def bench_search(questions: list[str], single: list[str], index_dir: Path, bare: BareEncoder, args) -> dict:
    retriever = Retriever.from_index(index_dir)
    load_s, _ = timed(lambda: retriever.question_encoder)  # loads the model named in the manifest
    flat = faiss.read_index(str(index_dir / FaissBackend.FILE))
    batched, one = search_variants(retriever, flat, bare, args.k)
    say(f"\nsearch: {len(questions)} questions batched, {len(single)} one at a time: warm-up ...")
    for name in batched:
        batched[name](questions[:32])
        for q in single[:5]:
            one[name](q)
    rounds, stages = [], []
    for rep in range(args.search_repeats):
        rounds.append(search_round(batched, one, questions, single, rep))
        stages.append(single_question_stages(retriever, bare, flat, single, args.k))
        say(f"  rep {rep + 1}/{args.search_repeats}: " + ", ".join(
            f"{n.replace('ragloop ', '')} {r['batched']:.0f}/{r['single']:.0f} q/s" for n, r in rounds[-1].items()))
    per = {key: {n: [r[n][key] for r in rounds] for n in batched} for key in ("batched", "single", "p50", "p95")}
    qps = {mode: per[mode] for mode in ("batched", "single")}
    result = {
        "questions_batched": len(questions), "questions_single": len(single), "k": args.k,
        "repeats": args.search_repeats, "question_encoder_load_s": load_s, "qps": qps,
        "median_qps": {mode: {n: median(v) for n, v in d.items()} for mode, d in qps.items()},
        "single_p50_ms": {n: median(v) for n, v in per["p50"].items()},
        "single_p95_ms": {n: median(v) for n, v in per["p95"].items()},
        "single_question_ms_by_stage": {
            name: {key: median([st[name][key] for st in stages]) for key in stages[0][name]} for name in stages[0]},
        "top_k_agreement": rows_agreement(retriever.retrieve(questions, args.k, "dense").rows,
                                          batched[LIMIT](questions)[1]),
        "ratio_per_repeat": {mode: {n: paired_ratios(v, qps[mode][LIMIT]) for n, v in qps[mode].items()
                                    if "dense" in n or n == LIMIT} for mode in ("batched", "single")},
    }
    result["ratio_to_bare"] = {mode: {n: median(v) for n, v in d.items()}
                               for mode, d in result["ratio_per_repeat"].items()}
    retriever.index.store.close()
    return result


def single_question_stages(retriever: Retriever, bare: BareEncoder, flat: faiss.Index, single: list[str],
                           k: int) -> dict:
    """Mean ms per question by stage, `Retriever.search(q)` next to the bare path, from one pass over
    `single` with the stage timers on (a pass apart from the timed ones)."""
    runs = {
        "ragloop": (Spans([("encode", Retriever, "encode"), *encoder_targets(retriever.question_encoder),
                          ("faiss search", Index, "search"), ("store", PassageStore, "get_rows")]),
                   lambda q: retriever.search(q, k)),
        "bare": (Spans([("encode", BareEncoder, "encode"), ("model+pool", BareEncoder, "_pool")]),
                 lambda q: flat.search(bare.encode([q], batch_size=128), k)),
    }
    total = {"ragloop": 0.0, "bare": 0.0}
    for i, q in enumerate(single):
        for name in rotated(list(runs), i):
            spans, search = runs[name]
            with spans.active():
                total[name] += timed(search, q)[0]
    ours, theirs = runs["ragloop"][0].seconds, runs["bare"][0].seconds
    per_question_ms = 1e3 / len(single)
    outside_model = "encode/all but the model"
    ragloop_rows = dict(split_encode(ours, "encode"))
    ragloop_rows[outside_model] = ours["encode"] - ours["encode/model+pool"]
    ragloop_rows["faiss search"] = ours["faiss search"]
    ragloop_rows["store"] = ours["store"]
    ragloop_rows["other"] = total["ragloop"] - runs["ragloop"][0].top_level()
    ragloop_rows["total"] = total["ragloop"]
    bare_rows = {
        "encode": theirs["encode"],
        "encode/model+pool": theirs["encode/model+pool"],
        outside_model: theirs["encode"] - theirs["encode/model+pool"],
        "faiss search": total["bare"] - theirs["encode"],
        "total": total["bare"],
    }
    return {name: {key: v * per_question_ms for key, v in rows.items()}
            for name, rows in (("ragloop", ragloop_rows), ("bare", bare_rows))}


def rows_agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Same top-1 row, and same top-k set, as fractions of questions."""
    return {
        "top1": float(np.mean(a[:, 0] == b[:, 0])),
        "topk_set": float(np.mean([set(x) == set(y) for x, y in zip(a.tolist(), b.tolist())])),
    }


# -- reporting ------------------------------------------------------------------------------------


def verdict(ratio: float) -> str:
    return "within 10%" if ratio >= GOAL else f"**{(1 - ratio) * 100:.0f}% behind**"


def stage_name(key: str) -> str:
    return "  ↳ " + key.split("/", 1)[1] if "/" in key else key


def report(res: dict) -> str:
    ix, se, load = res["indexing"], res["search"], res["load_average_1min"]
    workload = (f"Workload: bundled SQuAD dev sample in 100-word passages, all-MiniLM-L6-v2, batch {ix['batch_size']}, "
                f"max_length {ix['max_length']}, Flat inner-product index; 1-min load average {load['start']:.1f} "
                f"at start, {load['end']:.1f} at end.")
    return "\n".join([workload, *report_indexing(ix), *report_search(se)])


def report_indexing(ix: dict) -> list[str]:
    out: list[str] = []
    pps, med, best = ix["passages_per_s"], ix["median_seconds"], ix["best_seconds"]
    names = {
        "bare": "bare forward, length-sorted batches (**the limit**)",
        "ragloop": "ragloop `Index.build` (encode + FAISS + store + BM25 + manifest)",
        "bare_unsorted": "bare forward, batches in input order (naive loop)",
    }
    ratio, per_repeat = ix["ratio_to_bare"], ix["ratio_per_repeat"]
    rows = [[names[n], f"{med[n]:.2f}", f"{best[n]:.2f}", f"{pps[n]:.1f}", f"{ratio[n]:.3f}",
             " ".join(f"{r:.3f}" for r in per_repeat[n])] for n in pps]
    out += [f"\n### Indexing: {ix['passages']} passages, median of {ix['repeats']}\n",
            table(["path", "median s", "best s", "passages/s", "vs limit", "vs limit, each repetition"], rows),
            f"\nragloop / limit = **{ratio['ragloop']:.3f}** ({verdict(ratio['ragloop'])}; median of the ratios of "
            "back-to-back runs); vectors stored by ragloop vs the bare ones: max |diff| "
            f"{ix['vectors_max_abs_diff']:.1e}"]

    stages, total = ix["stages_median_seconds"], med["ragloop"]
    rows = [[stage_name(s), f"{v:.3f}", f"{100 * v / total:.1f}%"] for s, v in stages.items()]
    limit = med["bare"]
    rows.append(["*bare forward (the limit), for comparison*", f"{limit:.3f}", f"{100 * limit / total:.1f}%"])
    out += [f"\n#### Where `Index.build` spends its time (median seconds; build total {total:.2f} s)\n",
            table(["stage", "seconds", "share of build"], rows)]

    return out


def report_search(se: dict) -> list[str]:
    out: list[str] = []
    rows = []
    for n in se["median_qps"]["batched"]:
        rb, rs = se["median_qps"]["batched"][n], se["median_qps"]["single"][n]
        vs = {mode: f"{se['ratio_to_bare'][mode][n]:.3f}" if n in se["ratio_to_bare"][mode] else "—"
              for mode in ("batched", "single")}
        rows.append([n + (" (**the limit**)" if n == LIMIT else ""), f"{rb:.1f}", vs["batched"], f"{rs:.1f}",
                     vs["single"], f"{se['single_p50_ms'][n]:.2f}", f"{se['single_p95_ms'][n]:.2f}"])
    agree = se["top_k_agreement"]
    out += [f"\n### Search: k={se['k']}, {se['questions_batched']} questions batched, {se['questions_single']} "
            f"one per call, median of {se['repeats']}\n",
            table(["path", "batched q/s", "vs limit", "single q/s", "vs limit", "single p50 ms", "single p95 ms"],
                  rows),
            f"\nragloop dense vs bare: same top-1 for {agree['top1']:.1%} of questions, same top-{se['k']} set "
            f"for {agree['topk_set']:.1%}. \"vs limit\": median over rounds of ragloop / bare in the same round. "
            "BM25 and hybrid: for information, no bare baseline."]

    st = se["single_question_ms_by_stage"]
    keys = list(st["ragloop"])
    rows = [[stage_name(s), f"{st['ragloop'][s]:.3f}", f"{st['bare'][s]:.3f}" if s in st["bare"] else "—"]
            for s in keys]
    out += ["\n#### One question, `Retriever.search(q)` vs the bare path (ms per question: median over "
            f"{se['repeats']} extra passes, stage timers on)\n",
            table(["stage", "ragloop ms", "bare ms"], rows)]


    return out


def run(ctx) -> dict:
    sizes = SIZES["quick" if ctx.quick else "full"]
    args = SimpleNamespace(**RUN, naive=getattr(ctx.args, "retrieval_naive", False))
    load_start = load_average()
    passages, questions = load_workload(sizes["passages"] or None, sizes["questions"])
    load_s, encoder = timed(BiEncoder.from_pretrained)
    spec = encoder.passage.spec
    assert spec.pooling == "mean", spec  # the bare baseline implements mean pooling only
    bare = BareEncoder(spec.max_length, spec.normalize)
    workdir = ctx.work / "retrieval"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        indexing = bench_indexing(passages, encoder, bare, args, workdir)
        # the retriever loads its own question encoder from the manifest, as a user's would
        search = bench_search(questions, questions[: sizes["single"]], Path(indexing.pop("index_dir")), bare, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"encoder_load_s": load_s, "indexing": indexing, "search": search,
            "load_average_1min": {"start": load_start, "end": load_average()}}


def options(group) -> None:
    group.add_argument("--retrieval-naive", action="store_true",
                       help="also time a bare loop with batches in input order")


def goals(res: dict) -> list[dict]:
    from bench.suite.goals import goal

    ix = res["indexing"]["ratio_to_bare"]["ragloop"]
    one = res["search"]["ratio_to_bare"]["single"]["ragloop search dense"]
    return [goal(f"indexing passages/s vs the bare limit (>= {GOAL:.2f}x)", f"{ix:.3f}x", ix >= GOAL),
            goal(f"`Retriever.search`, one question per call, vs the bare limit (>= {GOAL:.2f}x)", f"{one:.3f}x",
                 one >= GOAL)]
