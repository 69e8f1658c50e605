"""Section 6 "compress": compressed indexes that keep their recall, on real embeddings.

    python -m bench --only compress --big /work/cache/big  # >= 100k real passages (bench.scripts.make_corpus)
    python -m bench --only compress --quick                     # first 20k of them (or the bundled 2k)

Flat, IVF-PQ, OPQ + IVF-PQ and 4-bit fast-scan IVF-PQ, each without and with the disk refine stage
(ragloop's `FaissBackend` with the exact vectors memory-mapped from a vectors.npy, as `Index.load` opens
a folder built with `--refine disk`): RAM bytes a passage (the FAISS index in memory: codes, codebooks,
centroids, ids, and the IVF direct map that `vectors()` needs without refine; not the memory-mapped
file), x smaller than Flat, recall@10 against Flat's top 10, hit@10 (an answer string in the top 10),
p50 ms of one question, build seconds. Goal (issue 14): >= 10x smaller than Flat, <= 3 points of
recall@10 and <= 1 point of hit@10 lost, on >= 100k real passages.
"""

from __future__ import annotations

import time

import numpy as np

from bench.suite import bigdata
from bench.suite.common import faiss_bytes, num, percentile, quiet_stderr, say, single_query_seconds, table
from bench.suite.goals import goal
from bench.suite.search import nlist_for
from ragloop.constants import INDEX_REFINE_FACTOR as REFINE_FACTOR
from ragloop.evaluation.metrics import has_answer
from ragloop.retrieval.backend import FaissBackend, is_fast_scan
from ragloop.retrieval.settings import DEFAULT_SEARCH_PARAMS, TRAIN_SIZE
from ragloop.retrieval.vecfile import NpyAppender, open_vectors, sample_rows

TITLE = "Compressed indexes: RAM, recall and the disk refine stage"
K = 10
GOAL_RATIO, GOAL_RECALL_POINTS, GOAL_HIT_POINTS = 10.0, 3.0, 1.0
QUICK_PASSAGES, QUICK_QUESTIONS, FULL_QUESTIONS = 20_000, 200, 1000
NPROBES = (DEFAULT_SEARCH_PARAMS["nprobe"], 64)  # refine rows at the default IVF probe and a wider one
WIDE_REFINE = 32  # a refine over more candidates, with every list probed (issue 25: hit@10 within 1 point)


def refine_variants(nlist: int) -> list[tuple[int, int]]:
    """(refine factor, nprobe) of the refine rows of an IVF factory: the default factor at the default probe,
    a wider one and every list; then WIDE_REFINE x with every list."""
    return [*((REFINE_FACTOR, p) for p in (*NPROBES, nlist)), (WIDE_REFINE, nlist)]


def factories(n: int, dim: int, quick: bool) -> list[str]:
    nl = nlist_for(n)
    if quick:  # every kind once; a small OPQ (its training runs an 8-bit PQ per iteration: minutes at OPQ48)
        return ["Flat", f"IVF{nl},PQ48", f"IVF{nl},PQ96x4fs", f"OPQ16,IVF{nl},PQ16x4fs"]
    m8, m4 = [48, 96], [96, 192]  # 8-bit PQ: m bytes a vector; 4-bit fast-scan: m / 2 bytes
    return ["Flat", *(f"IVF{nl},PQ{m}" for m in m8), f"OPQ{m8[0]},IVF{nl},PQ{m8[0]}",
            *(f"IVF{nl},PQ{m}x4fs" for m in m4 if dim % m == 0), f"OPQ{m4[0]},IVF{nl},PQ{m4[0]}x4fs"]


def ram_bytes(backend: FaissBackend) -> int:
    """The FAISS index in RAM: its serialized size, plus the direct map (8 bytes a row) an IVF index
    keeps in memory for `vectors()` when there is no refine stage (it is not serialized)."""
    total = faiss_bytes(backend.index)
    if backend.exact is None and not is_fast_scan(backend.index) and "IVF" in backend.factory:
        total += 8 * len(backend)
    return total


def run(ctx) -> dict:
    limit = QUICK_PASSAGES if ctx.quick else None
    corpus = bigdata.load(ctx, limit, QUICK_QUESTIONS if ctx.quick else FULL_QUESTIONS)
    n, dim = corpus.vectors.shape
    with NpyAppender(ctx.work / "compress-vectors.npy", dim) as out:  # what --refine disk keeps in the folder
        for start in range(0, n, 4096):
            out.append(corpus.vectors[start : start + 4096])
    exact = open_vectors(ctx.work / "compress-vectors.npy", n, dim)
    queries = np.ascontiguousarray(corpus.questions, dtype=np.float32)
    factor = REFINE_FACTOR
    rows, truth = {}, None
    for factory in factories(n, dim, ctx.quick):
        start = time.perf_counter()
        backend = FaissBackend.create(factory, dim, DEFAULT_SEARCH_PARAMS)
        with quiet_stderr():  # FAISS warns about few training points per centroid
            backend.train(sample_rows(ctx.work / "compress-vectors.npy", TRAIN_SIZE))  # as Index.build samples
        for s in range(0, n, 4096):
            backend.add(corpus.vectors[s : s + 4096])
        build_s = time.perf_counter() - start
        # with refine, also a wider IVF probe: refine re-ranks only what the probed lists hold
        ivf = "IVF" in factory
        variants = ([(None, None)] if factory == "Flat" else
                    [(None, None), *(refine_variants(nlist_for(n)) if ivf else [(factor, None)])])
        for refine, nprobe in variants:
            if refine:
                params = dict(DEFAULT_SEARCH_PARAMS, nprobe=nprobe or DEFAULT_SEARCH_PARAMS["nprobe"])
                backend = FaissBackend(backend.index, factory, params, exact=exact, refine_factor=refine)
            wider = refine and ivf and nprobe != DEFAULT_SEARCH_PARAMS["nprobe"]
            probe = "every list" if nprobe == nlist_for(n) else f"nprobe {nprobe}"
            name = factory + (f" + refine disk x{refine}" if refine else "") + (f", {probe}" if wider else "")
            _, found = backend.search(queries, K)
            lat = single_query_seconds(backend.search, queries, K)
            if truth is None:
                truth = found
            hits = [any(has_answer(ans, text) for text in corpus.texts([r for r in row if r >= 0]))
                    for ans, row in zip(corpus.answers, found.tolist())]
            ram = ram_bytes(backend)
            rows[name] = {"factory": factory, "refine_factor": refine, "ram_bytes": ram, "bytes_per_passage": ram / n,
                          "build_s": build_s, "p50_ms": percentile(lat, 50) * 1e3,
                          "recall@10": float(np.mean([len(set(a) & set(b)) / K
                                                      for a, b in zip(found.tolist(), truth.tolist())])),
                          "hit@10": float(np.mean(hits))}
            say(f"  {name}: {ram / n:.0f} B/passage, recall@10 {rows[name]['recall@10']:.3f}, "
                f"hit@10 {rows[name]['hit@10']:.3f}, p50 {rows[name]['p50_ms']:.2f} ms")
    flat = rows["Flat"]
    for row in rows.values():
        row["smaller_than_flat"] = flat["ram_bytes"] / row["ram_bytes"]
        row["recall_lost_points"] = (flat["recall@10"] - row["recall@10"]) * 100
        row["hit_lost_points"] = (flat["hit@10"] - row["hit@10"]) * 100
    ok = [name for name, r in rows.items() if r["smaller_than_flat"] >= GOAL_RATIO
          and r["recall_lost_points"] <= GOAL_RECALL_POINTS and r["hit_lost_points"] <= GOAL_HIT_POINTS]
    best = max(ok, key=lambda name: rows[name]["smaller_than_flat"]) if ok else None
    return {"corpus": corpus.name, "passages": n, "dim": dim, "questions": len(queries), "k": K,
            "refine_factor": factor, "train_size": min(n, TRAIN_SIZE), "real_big": corpus.real_big,
            "types": rows, "goal_met_by": best}


def report(res: dict) -> str:
    head = ["index", "RAM B/passage", "x smaller than Flat", "recall@10", "hit@10", "p50 ms", "build s"]
    body = [[name, num(r["bytes_per_passage"], 0), num(r["smaller_than_flat"], 1), f"{r['recall@10']:.3f}",
             f"{r['hit@10']:.3f}", num(r["p50_ms"], 2), num(r["build_s"], 1)] for name, r in res["types"].items()]
    best = res["goal_met_by"]
    verdict = "met" if best else "not met"
    if not res["real_big"]:
        verdict = f"not judged ({res['passages']:,} passages, the goal needs >= {bigdata.GOAL_PASSAGES:,} real ones)"
    lines = [f"{res['corpus']}, dim {res['dim']}; {res['questions']} questions, k = {res['k']}; recall@10 against "
             f"Flat's top 10; FAISS trained on {res['train_size']:,} vectors spread over the corpus; search params "
             f"{DEFAULT_SEARCH_PARAMS} unless a row names another nprobe. RAM = the FAISS index in memory (with "
             "refine: no direct map; the exact vectors are a memory-mapped vectors.npy on disk, not counted).", "",
             table(head, body), "",
             f"Goal (>= {GOAL_RATIO:.0f}x smaller than Flat, <= {GOAL_RECALL_POINTS:.0f} points recall@10 and <= "
             f"{GOAL_HIT_POINTS:.0f} point hit@10 lost): **{verdict}**"
             + (f"; smallest that meets it: {best} ({res['types'][best]['smaller_than_flat']:.1f}x, recall@10 "
                f"{res['types'][best]['recall@10']:.3f}, hit@10 {res['types'][best]['hit@10']:.3f})" if best else "")]
    return "\n".join(lines)


def goals(res: dict) -> list[dict]:
    best = res["goal_met_by"]
    what = (f"compressed index >= {GOAL_RATIO:.0f}x smaller than Flat with <= {GOAL_RECALL_POINTS:.0f} points "
            f"recall@10 and <= {GOAL_HIT_POINTS:.0f} point hit@10 lost")
    if not res["real_big"]:
        return [goal(what, f"not judged: {res['passages']:,} passages ({res['corpus']}), needs >= "
                     f"{bigdata.GOAL_PASSAGES:,} real ones", None)]
    if best is None:
        top = max(res["types"].values(), key=lambda r: r["recall@10"] - (r["smaller_than_flat"] < GOAL_RATIO))
        return [goal(what, f"none of {len(res['types']) - 1} configurations on {res['passages']:,} passages "
                     f"(best >= {GOAL_RATIO:.0f}x: recall@10 {top['recall@10']:.3f})", False)]
    r = res["types"][best]
    return [goal(what, f"{best}: {r['smaller_than_flat']:.1f}x, -{r['recall_lost_points']:.1f} pts recall@10, "
                 f"-{r['hit_lost_points']:.1f} pts hit@10 on {res['passages']:,} passages", True)]


PLOTS: dict = {}
