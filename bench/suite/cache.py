"""Section 7: a repeated question answered from the cache vs computed (`RetrievalCache`).

    python -m bench --only cache            # full sizes
    python -m bench --quick --only cache    # fewer calls per round

One held-out question, asked again and again, one question per call, over the run's dev index
(all-MiniLM-L6-v2):

- `Retriever.retrieve([q], k=5)`, dense and hybrid: a retriever without a cache against one with a
  `RetrievalCache`, alternating rounds of `cache_calls` calls each, after a warm-up round (where the
  cached side takes its one miss);
- `RAG.answer(q, k=5)` (bundled generator, greedy, `answer_tokens` tokens at most): the same model
  with `model.retriever.cache` unset and set, one call per side per round. The answer itself is
  cached (keyed by the question, k, decoding settings, weights and index), since generation
  dominates its time.

A speed-up is the median of the per-round ratios (uncached time / cached time). After the run each
cache reports its hits, misses and hit rate (`RetrievalCache.stats()`).

Goal (issue 14, item 2): a repeated question >= 10x faster through the cache.
"""

from __future__ import annotations

import time

from bench.suite.common import alternate, num, speed_summary, table
from bench.suite.goals import goal, sentence

TITLE = "Repeated questions: cached vs uncached"
GOAL_SPEEDUP = 10.0
K = 5


def repeated(fn, calls: int):
    """A round: `calls` calls of `fn`; its time per call."""
    def once(r: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls
    return once


def row(label: str, path: str, seconds: dict[str, list[float]], cache, calls: int) -> dict:
    speed = speed_summary(seconds, 1, baseline="uncached")
    stats = cache.stats()
    return {"label": label, "path": path, "calls_per_round": calls, "uncached_ms": speed["uncached"]["median_s"] * 1e3,
            "cached_ms": speed["cached"]["median_s"] * 1e3, "speedup_per_round": speed["cached"]["ratio_per_round"],
            "speedup": speed["cached"]["ratio"], "seconds": seconds,
            "cache": {"hits": stats["total"]["hits"], "misses": stats["total"]["misses"],
                      "hit_rate": stats["total"]["hit_rate"], "entries": stats["entries"], "bytes": stats["bytes"]}}


def run(ctx) -> dict:
    from ragloop.generation import Generator
    from ragloop.model import RAG, RAGConfig
    from ragloop.retrieval import Retriever
    from ragloop.retrieval.cache import RetrievalCache

    sizes = ctx.sizes
    question = ctx.heldout[0].question
    rows = []
    for mode in ("dense", "hybrid"):
        plain = Retriever(ctx.dev_index, ctx.minilm.question, mode=mode)
        cached = Retriever(ctx.dev_index, ctx.minilm.question, mode=mode, cache=RetrievalCache())
        seconds = alternate({"uncached": repeated(lambda r=plain: r.retrieve([question], k=K), sizes.cache_calls),
                             "cached": repeated(lambda r=cached: r.retrieve([question], k=K), sizes.cache_calls)},
                            sizes.rounds, progress=f"retrieve {mode}")
        rows.append(row(f"Retriever.retrieve, {mode}", f"Retriever.retrieve ({mode}, k={K})", seconds, cached.cache,
                        sizes.cache_calls))

    rag = RAG(ctx.dev_index, ctx.minilm.question, Generator.from_pretrained("bundled:minilm-bert2bert"),
              RAGConfig(n_docs=K))
    cache = RetrievalCache()

    def answer(with_cache: bool):
        def once() -> None:
            rag.retriever.cache = cache if with_cache else None
            rag.answer(question, k=K, max_new_tokens=sizes.answer_tokens)
        return repeated(once, 1)

    seconds = alternate({"uncached": answer(False), "cached": answer(True)}, sizes.rounds, progress="RAG.answer")
    rag.retriever.cache = None
    rows.append(row("RAG.answer", f"RAG.answer (answer cached, k={K}, greedy, <= {sizes.answer_tokens} tokens)",
                    seconds, cache, 1))
    return {"question": question, "passages": len(ctx.dev_index), "rounds": sizes.rounds, "rows": rows}


def goals(res: dict) -> list[dict]:
    return [goal(f"cache: repeated question, {r['label']}, cached vs uncached (>= {GOAL_SPEEDUP:g}x)",
                 f"{r['speedup']:,.0f}x (hit rate {r['cache']['hit_rate']:.3f})", r["speedup"] >= GOAL_SPEEDUP)
            for r in res["rows"]]


def report(res: dict) -> str:
    rows = [[r["path"], num(r["uncached_ms"], 2), num(r["cached_ms"], 3), f"**{r['speedup']:,.0f}x**",
             f"{r['cache']['hits']} / {r['cache']['misses']}", f"{r['cache']['hit_rate']:.3f}"]
            for r in res["rows"]]
    return (f"One held-out question asked repeatedly (\"{res['question']}\"), {res['passages']:,} passages, "
            f"{res['rounds']} alternating rounds after a warm-up; ms per call are medians over rounds, the "
            "speed-up the median of per-round ratios; hits / misses and hit rate of each cache after the run.\n\n"
            + table(["path", "uncached ms", "cached ms", "speed-up", "hits / misses", "hit rate"], rows)
            + "\n\n" + sentence(goals(res)))


PLOTS: dict = {}
