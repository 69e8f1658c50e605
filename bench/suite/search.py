"""Section 3: search latency and index types.

a. Latency and questions/s of ragloop dense, BM25 and hybrid search on the dev index (all-MiniLM-L6-v2,
   Flat, k=10), next to the transformers/datasets way of searching the same vectors: the same encoder
   (AutoModel + mean pooling) and `Dataset.get_nearest_examples_batch` on a Flat inner-product
   `add_faiss_index`. One question per call (p50/p95) and batched.
b. Index types on the real corpus: Flat, HNSW32 and IVF-PQ for several PQ sizes, built by ragloop's own
   FAISS code path (`FaissBackend.create`, `train`, `add` with `Index.build`'s default search
   parameters, as `Index.build` + `Index.load` do): bytes per passage, build time, latency,
   and quality against Flat: recall@10 (share of Flat's top 10 found), 1-recall@10 (Flat's top 1 is
   in the top 10) and hit@10 (an answer string in the top 10, the task measure).
c. A scale curve to 1M passages (quick: 100k) with synthetic vectors: real passage vectors as
   centres plus Gaussian noise, normalised (dim 384), queried with real question vectors; build time,
   index bytes, p50 latency and recall@10 against Flat vs N for Flat, HNSW32 and the chosen IVF-PQ.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import faiss
import numpy as np

from bench.suite.common import (
    BareEncoder,
    alternate,
    faiss_bytes,
    median,
    num,
    percentile,
    pyplot,
    quiet_stderr,
    rotated,
    say,
    single_query_seconds,
    table,
)
from bench.suite.goals import goal
from ragloop.evaluation.metrics import has_answer
from ragloop.retrieval.backend import FaissBackend
from ragloop.retrieval.settings import DEFAULT_SEARCH_PARAMS

TITLE = "Search: latency, index types, scale"
K = 10
SEARCH_PARAMS = DEFAULT_SEARCH_PARAMS  # what Index.build records by default
GOAL_RATIO, GOAL_POINTS = 10.0, 3.0  # IVF-PQ: >= 10x smaller than Flat, <= 3 points of recall@10 lost
NOISE = 0.03  # per-dimension noise of the synthetic vectors (a noise vector of norm ~0.6)
DENSE_PEER = "datasets get_nearest_examples (bare encoder)"


def nlist_for(n: int) -> int:
    """IVF lists: the power of two at or below sqrt(N), at least 16."""
    return max(16, 2 ** int(math.log2(max(1, math.isqrt(n)))))


def ivfpq(n: int, m: int) -> str:
    return f"IVF{nlist_for(n)},PQ{m}"


def build_like_ragloop(factory: str, vectors: np.ndarray) -> tuple[faiss.Index, float, int]:
    """(index, build seconds, bytes of the trained but empty index) through ragloop's FAISS code path."""
    start = time.perf_counter()
    backend = FaissBackend.create(factory, vectors.shape[1], SEARCH_PARAMS)
    with quiet_stderr():  # FAISS warns about few training points per centroid on small corpora
        backend.train(vectors)
    trained = time.perf_counter()
    empty = faiss_bytes(backend.index)  # not timed
    resumed = time.perf_counter()
    backend.add(vectors)
    return backend.index, (trained - start) + (time.perf_counter() - resumed), empty


# -- a. latency -----------------------------------------------------------------------------------


def latency(ctx) -> dict:
    from bench.suite.models import hf_dataset

    retriever = ctx.dev_retriever
    questions = [e.question for e in ctx.quality_examples]
    single = questions[:: max(1, len(questions) // ctx.sizes.search_single)][: ctx.sizes.search_single]
    batch = questions[: ctx.sizes.search_batch]
    spec = ctx.minilm.question.spec
    bare = BareEncoder(spec.max_length, spec.normalize)
    ds = hf_dataset([p.title for p in ctx.dev_passages], [p.text for p in ctx.dev_passages], ctx.dev_vectors)

    def peer(qs: list[str]):
        return ds.get_nearest_examples_batch("embeddings", bare.encode(qs, batch_size=128), k=K)

    calls = {
        "ragloop dense (retrieve)": lambda qs: retriever.retrieve(qs, K, "dense"),
        "ragloop dense (search, as hits)": lambda qs: retriever.search(qs, K, "dense"),
        DENSE_PEER: peer,
        "ragloop BM25": lambda qs: retriever.retrieve(qs, K, "bm25"),
        "ragloop hybrid": lambda qs: retriever.retrieve(qs, K, "hybrid"),
    }
    names = list(calls)
    for name in names:  # warm-up
        calls[name](batch[:16])
        calls[name]([single[0]])
    batched = alternate({n: (lambda r, n=n: calls[n](batch)) for n in names}, ctx.sizes.rounds)
    p50, p95, qps = defaultdict(list), defaultdict(list), defaultdict(list)
    for r in range(ctx.sizes.rounds):
        lat = defaultdict(list)
        for i, q in enumerate(single):  # every variant answers question i before any answers i+1
            for name in rotated(names, r + i):
                start = time.perf_counter()
                calls[name]([q])
                lat[name].append(time.perf_counter() - start)
        for name in names:
            p50[name].append(percentile(lat[name], 50) * 1e3)
            p95[name].append(percentile(lat[name], 95) * 1e3)
            qps[name].append(len(single) / sum(lat[name]))
    out = {"passages": len(ctx.dev_passages), "k": K, "single_questions": len(single), "batch": len(batch),
           "rounds": ctx.sizes.rounds, "variants": {}}
    for name in names:
        out["variants"][name] = {
            "single_p50_ms": median(p50[name]), "single_p95_ms": median(p95[name]), "single_qps": median(qps[name]),
            "batched_qps": len(batch) / median(batched[name]),
        }
    peer_single, peer_batched = qps[DENSE_PEER], batched[DENSE_PEER]
    for name in names[:2]:
        out["variants"][name]["single_vs_peer"] = median([a / b for a, b in zip(qps[name], peer_single)])
        out["variants"][name]["batched_vs_peer"] = median([b / a for a, b in zip(batched[name], peer_batched)])
    return out


# -- b. index types on the real corpus --------------------------------------------------------------


def index_types(ctx) -> dict:
    vectors = ctx.dev_vectors
    queries = ctx.quality_question_vectors
    examples = ctx.quality_examples[: len(queries)]
    passages = ctx.dev_passages
    n = len(vectors)
    factories = ["Flat", "HNSW32", *(ivfpq(n, m) for m in ctx.sizes.pq_sweep)]
    rows, truth = {}, None
    for factory in factories:
        index, build_s, empty = build_like_ragloop(factory, vectors)
        total = faiss_bytes(index)
        _, found = index.search(queries, K)
        lat = single_query_seconds(index.search, queries, K)
        if truth is None:
            truth = found
        hits = [any(has_answer(ex.answers, passages[r].text) for r in row if r >= 0)
                for ex, row in zip(examples, found.tolist())]
        rows[factory] = {
            "build_s": build_s, "bytes": total, "bytes_per_passage": total / n,
            "marginal_bytes_per_passage": (total - empty) / n,
            "recall@10": float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found.tolist(), truth.tolist())])),
            "1-recall@10": float(np.mean([t[0] in f for t, f in zip(truth.tolist(), found.tolist())])),
            "hit@10": float(np.mean(hits)), "p50_ms": percentile(lat, 50) * 1e3,
        }
        say(f"  {factory}: {rows[factory]['marginal_bytes_per_passage']:.0f} B/passage, "
            f"recall@10 {rows[factory]['recall@10']:.3f}, build {build_s:.1f} s")
    flat = rows["Flat"]
    for row in rows.values():
        row["smaller_than_flat"] = flat["marginal_bytes_per_passage"] / row["marginal_bytes_per_passage"]
        for metric in ("recall@10", "1-recall@10", "hit@10"):
            row[f"{metric} lost (points)"] = (flat[metric] - row[metric]) * 100
    goal = {}
    for metric in ("recall@10", "1-recall@10", "hit@10"):
        ok = [f for f in factories if f.startswith("IVF") and rows[f]["smaller_than_flat"] >= GOAL_RATIO
              and rows[f][f"{metric} lost (points)"] <= GOAL_POINTS]
        goal[metric] = min(ok, key=lambda f: rows[f]["bytes"]) if ok else None
    # the configuration the scale curve uses: the goal met on the strictest measure that any PQ meets
    chosen = goal["recall@10"] or goal["1-recall@10"] or goal["hit@10"] or ivfpq(n, 48)
    return {"passages": n, "queries": len(queries), "types": rows, "goal_met_by": goal,
            "chosen_pq": int(chosen.split("PQ")[1])}


# -- c. scale curve ---------------------------------------------------------------------------------


def synthetic(centres: np.ndarray, n: int, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """n vectors: a random real passage vector plus N(0, NOISE^2) per dimension, L2-normalised."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        block = centres[rng.integers(0, len(centres), size)] + NOISE * rng.standard_normal(
            (size, centres.shape[1]), dtype=np.float32)
        faiss.normalize_L2(block)
        out[start : start + size] = block
    return out


def scale(ctx, pq: int) -> dict:
    sizes = ctx.sizes.scale_sizes
    say(f"  synthetic vectors: {max(sizes):,} x {ctx.dev_vectors.shape[1]} ...")
    data = synthetic(ctx.dev_vectors, max(sizes))
    queries = np.ascontiguousarray(ctx.quality_question_vectors[:100])
    kinds = {"Flat": lambda n: "Flat", "HNSW32": lambda n: "HNSW32", f"IVF-PQ{pq}": lambda n: ivfpq(n, pq)}
    curve: dict[str, list[dict]] = {k: [] for k in kinds}
    skipped: dict[str, list[int]] = defaultdict(list)
    for n in sizes:
        x = data[:n]
        built = {}
        for kind, factory in kinds.items():
            prev = curve[kind][-1] if curve[kind] else None
            if kind == "HNSW32" and prev and prev["build_s"] * (n / prev["n"]) * 1.15 > ctx.sizes.hnsw_budget_s:
                skipped[kind].append(n)
                continue
            index, build_s, _ = build_like_ragloop(factory(n), x)
            built[kind] = (index, {"n": n, "factory": factory(n), "build_s": build_s, "bytes": faiss_bytes(index)})
        lat = defaultdict(list)
        for i, q in enumerate(queries):
            for kind in rotated(list(built), i):
                start = time.perf_counter()
                built[kind][0].search(q[None, :], K)
                lat[kind].append(time.perf_counter() - start)
        truth = built["Flat"][0].search(queries, K)[1]
        for kind, (index, row) in built.items():
            found = index.search(queries, K)[1]
            row["p50_ms"] = percentile(lat[kind], 50) * 1e3
            row["recall@10"] = float(np.mean([len(set(a) & set(b)) / K
                                              for a, b in zip(found.tolist(), truth.tolist())]))
            curve[kind].append(row)
            say(f"  N={n:,} {kind}: build {row['build_s']:.1f} s, {row['bytes'] / 2**20:.1f} MiB, "
                f"p50 {row['p50_ms']:.2f} ms, recall@10 {row['recall@10']:.3f}")
        del built
    notes = {}
    if skipped["HNSW32"] and curve["HNSW32"]:
        last = curve["HNSW32"][-1]
        rate = last["n"] / last["build_s"]
        notes["HNSW32"] = (f"HNSW32 stopped at N={last['n']:,} (the next build would pass the "
                           f"{ctx.sizes.hnsw_budget_s:.0f} s budget); at {rate:,.0f} vectors/s a 1M build takes "
                           f"~{1_000_000 / rate / 60 * 1.3:.0f} min")
    return {"sizes": list(sizes), "noise": NOISE, "queries": len(queries), "curve": curve,
            "skipped": dict(skipped), "notes": notes}


def run(ctx) -> dict:
    say("search latency ...")
    lat = latency(ctx)
    say("index types on the real corpus ...")
    types = index_types(ctx)
    say("scale curve ...")
    curve = scale(ctx, types["chosen_pq"])
    return {"latency": lat, "index_types": types, "scale": curve}


# -- report ---------------------------------------------------------------------------------------


def goals(res: dict) -> list[dict]:
    """Issue 4: an IVF-PQ >= 10x smaller than Flat losing <= 3 points, per quality measure."""
    return [goal(f"IVF-PQ >= {GOAL_RATIO:.0f}x smaller than Flat with <= {GOAL_POINTS:.0f} points of {metric} lost",
                 f"met by {factory}" if factory else "not met by any PQ tried", factory is not None)
            for metric, factory in res["index_types"]["goal_met_by"].items()]


def report(res: dict) -> str:
    lat, types, sc = res["latency"], res["index_types"], res["scale"]
    rows = []
    for name, v in lat["variants"].items():
        rows.append([name, num(v["single_p50_ms"], 2), num(v["single_p95_ms"], 2), num(v["single_qps"]),
                     f"{v['single_vs_peer']:.2f}" if "single_vs_peer" in v else "",
                     num(v["batched_qps"]), f"{v['batched_vs_peer']:.2f}" if "batched_vs_peer" in v else ""])
    out = [f"**a. Latency**, k={lat['k']}, {lat['passages']:,} passages (all-MiniLM-L6-v2, Flat): "
           f"{lat['single_questions']} questions one per call and {lat['batch']} in one call, median of "
           f"{lat['rounds']} alternating rounds. \"vs datasets\": ragloop q/s over the datasets path's, per round.\n",
           table(["search", "p50 ms", "p95 ms", "q/s (1 per call)", "vs datasets", "q/s (batched)", "vs datasets"],
                 rows)]
    t = types["types"]
    rows = [[f, num(v["marginal_bytes_per_passage"]), num(v["bytes_per_passage"]), f"{v['smaller_than_flat']:.1f}x",
             f"{v['recall@10']:.3f}", f"{v['1-recall@10']:.3f}", f"{v['hit@10']:.3f}", num(v["p50_ms"], 2),
             num(v["build_s"], 2)] for f, v in t.items()]
    goal = types["goal_met_by"]
    verdicts = "; ".join(f"{m}: {'met by ' + f if f else '**not met by any PQ tried**'}" for m, f in goal.items())
    out += [f"\n**b. Index types**, {types['passages']:,} real passage vectors, {types['queries']} questions, "
            "built through ragloop's FAISS code path (nprobe 16, efSearch 128). Bytes per passage: codes + ids (+ "
            "the direct map ragloop adds for IVF), i.e. what each extra passage costs; \"total\" includes "
            "codebooks and centroids, which dominate at this size.\n",
            table(["index", "bytes/passage", "total bytes/passage", "smaller than Flat", "recall@10",
                   "1-recall@10", "hit@10", "p50 ms", "build s"], rows),
            f"\nGoal (IVF-PQ >= {GOAL_RATIO:.0f}x smaller than Flat, <= {GOAL_POINTS:.0f} points lost): {verdicts}. "
            f"The scale curve uses PQ{types['chosen_pq']}."]
    rows = []
    for kind, points in sc["curve"].items():
        for p in points:
            rows.append([kind, f"{p['n']:,}", p["factory"], num(p["build_s"], 2), num(p["bytes"] / 2**20, 1),
                         num(p["bytes"] / p["n"]), num(p["p50_ms"], 2), f"{p['recall@10']:.3f}"])
    out += [f"\n**c. Scale**, synthetic vectors (real passage vectors + noise, dim 384), {sc['queries']} real "
            "questions, k=10, single-query p50.\n",
            table(["index", "N", "factory", "build s", "MiB", "bytes/passage", "p50 ms", "recall@10"], rows)]
    out += [f"\n{note}." for note in sc["notes"].values()]
    return "\n".join(out)


def plot(res: dict, path) -> None:
    plt = pyplot()
    sc = res["scale"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    panels = [("build_s", "build time (s)", True), ("bytes", "index size (MiB)", True),
              ("p50_ms", "p50 latency, one query (ms)", True), ("recall@10", "recall@10 vs Flat", False)]
    for ax, (key, label, log) in zip(axes.flat, panels):
        for kind, points in sc["curve"].items():
            if not points:
                continue
            ys = [p[key] / 2**20 if key == "bytes" else p[key] for p in points]
            ax.plot([p["n"] for p in points], ys, marker="o", label=kind)
        ax.set_xscale("log")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("passages (N)")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle("ragloop FAISS indexes vs corpus size (synthetic vectors, dim 384)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTS = {"index-scale": plot}
