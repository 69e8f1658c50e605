"""The retrieval cache: a repeated question answered from the cache vs computed (prints a table, writes JSON).

    python bench/bench_cache.py            # bundled dev articles, MiniLM, bundled generator
    python bench/bench_cache.py --quick    # 150 passages, few repeats, k=2 for RAG: checks the script works

For each path (Retriever.retrieve dense and hybrid, RAG.answer), one question at a time: the median of
--repeats calls without a cache, then the median of --repeats calls of the same question with a warm
cache (`RetrievalCache`). RAG.answer caches the answer itself (keyed by the question, k, decoding
settings and the model's weights state), since generation dominates its time; its retrieval alone is
not served from the cache because the model passes its own question vectors.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from ragloop.data import load_corpus  # noqa: E402
from ragloop.data.bundled import SQUAD_DEV, bundled_path  # noqa: E402
from ragloop.io import atomic_write_json  # noqa: E402
from ragloop.model import RAG, RAGConfig  # noqa: E402
from ragloop.retrieval import BiEncoder, Index, Retriever  # noqa: E402
from ragloop.retrieval.cache import RetrievalCache  # noqa: E402

QUESTION = "Which NFL team represented the AFC at Super Bowl 50?"


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (and, with a cache, the one miss)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small index, few repeats (a check that it runs)")
    ap.add_argument("--repeats", type=int, help="timed calls per row (default 20, quick 5)")
    ap.add_argument("--out", help="default bench/results/cache.json (quick: cache-quick.json)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-cache"), help="where the index is built")
    args = ap.parse_args()
    repeats = args.repeats or (5 if args.quick else 20)
    out = args.out or str(ROOT / "bench" / "results" / ("cache-quick.json" if args.quick else "cache.json"))
    torch.set_num_threads(2)

    passages = load_corpus([bundled_path(SQUAD_DEV)])
    if args.quick:
        passages = passages[:150]
    encoder = BiEncoder.from_pretrained()
    index = Index.build(passages, encoder, Path(args.work) / ("index-quick" if args.quick else "index"),
                        progress=False)
    rows = []
    for mode in ("dense", "hybrid"):
        plain = Retriever(index, encoder.question, mode=mode)
        cached = Retriever(index, encoder.question, mode=mode, cache=RetrievalCache())
        rows.append({"path": f"Retriever.retrieve ({mode}, k=5)",
                     "uncached_ms": median_ms(lambda r=plain: r.retrieve([QUESTION], k=5), repeats),
                     "cached_ms": median_ms(lambda r=cached: r.retrieve([QUESTION], k=5), repeats)})
    k = 2 if args.quick else 5
    rag = RAG.from_index(index, config=RAGConfig(n_docs=k))
    uncached = median_ms(lambda: rag.answer(QUESTION), 1 if args.quick else max(2, repeats // 2))
    rag.retriever.cache = RetrievalCache()
    rows.append({"path": f"RAG.answer (answer cached, k={k}, greedy)", "uncached_ms": uncached,
                 "cached_ms": median_ms(lambda: rag.answer(QUESTION), repeats)})
    for r in rows:
        r["speedup"] = r["uncached_ms"] / max(r["cached_ms"], 1e-9)
    print(f"passages: {len(index)}; median of {repeats} calls, one question per call")
    print("| path | uncached ms | cached ms | speed-up |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['uncached_ms']:.2f} | {r['cached_ms']:.3f} | {r['speedup']:.0f}x |")
    atomic_write_json(out, {"bench": "cache", "quick": args.quick, "passages": len(index), "repeats": repeats,
                                 "question": QUESTION, "rows": rows, "python": platform.python_version(),
                                 "torch": torch.__version__,
                                 "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    index.close()


if __name__ == "__main__":
    main()
