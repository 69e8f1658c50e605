"""Section 7 "stream": peak RAM and time of a streaming `Index.build` as the corpus grows, and load time.

    python -m bench --only stream --big /work/cache/big    # real 5k / 10k, replayed 100k / 300k / 1M / 3M
    python -m bench --only stream --quick                   # real 1k, replayed 20k

Each build runs alone in a fresh process (`python -m bench.suite.stream`, one JSON line back), so its peak
RSS (VmHWM) is its own: `Index.build` over an iterator of passages, chunks of 4096, IVF-PQ48 with
`refine="disk"`, no BM25 (bm25s builds in RAM from every text: O(N), measured elsewhere). Real rows
encode real passages with all-MiniLM-L6-v2. Replayed rows are for sizes whose encoding would take hours
on 2 cores: real passages' texts repeated under new ids, each made unique by one word and passed through
the duplicate check `ragloop index` runs (`iter_passages`), and as vectors the real passage vectors
repeated with a small perturbation (N(0, 0.01^2) a dimension, renormalised) in place of the encoder; their
build time adds the encoding time the real rows' passages/s would take (marked "est."). At the largest N the
folder is loaded with verify="fast" (the default) and "full".

Serving at 1M and 3M (the road to DPR's 21M passages, docs/scaling.md): each replayed folder of at least
SERVE_FROM passages (and the largest of a quick run) is then opened by another fresh process (`--mode
serve`) as a server opens it (`Index.load`, verify "fast"), which answers question vectors one at a time
(k = 10, the folder's nprobe, then a wider one): its peak RSS, p50/p95 ms a search, and recall@10 against
exact search over the same vectors (brute force over vectors.npy, after the timing and the RSS reading).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.suite import bigdata
from bench.suite.common import num, percentile, say, single_query_seconds, table
from bench.suite.goals import goal
from bench.suite.search import nlist_for

TITLE = "Streaming index builds: peak RAM and time vs N, load time"
NOISE = 0.01
SERVE_FROM = 1_000_000  # replayed folders this large are opened and searched as a server would
SERVE_QUESTIONS, SERVE_K, WIDER_NPROBE = 200, 10, 64
MEMORY_SLACK = 1.15  # the goal: peak(1M) <= 1.15 x peak(100k) + the FAISS index's own growth


def run(ctx) -> dict:
    big = getattr(ctx, "big", None) or bigdata.DEFAULT_BIG
    reason = bigdata.missing_reason(big)
    corpus_file = big / "corpus.jsonl"
    real_sizes, replay_sizes = (((1_000,), (20_000,)) if ctx.quick
                                else ((5_000, 10_000), (100_000, 300_000, 1_000_000, 3_000_000)))
    if reason is not None:  # the bundled dev passages stand in, written as a corpus file
        say(f"  big corpus not used: {reason}; real rows use the bundled SQuAD dev passages")
        corpus_file = ctx.work / "dev-corpus.jsonl"
        with open(corpus_file, "w", encoding="utf-8") as f:
            for p in ctx.dev_passages:
                f.write(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n")
        real_sizes = tuple(min(n, len(ctx.dev_passages)) for n in real_sizes[:1])
    source = bigdata.load(ctx, None, SERVE_QUESTIONS)  # every real vector: replays repeat each the fewest times
    np.save(ctx.work / "replay-source.npy", source.vectors)
    np.save(ctx.work / "questions.npy", np.ascontiguousarray(source.questions, dtype=np.float32))
    rows = []
    for mode, sizes in (("real", real_sizes), ("replay", replay_sizes)):
        for n in sizes:
            largest = mode == "replay" and n == max(replay_sizes)
            say(f"  {mode} build, {n:,} passages (fresh process) ...")
            out = ctx.work / f"stream-{mode}-{n}"
            rows.append({"mode": mode, **_worker(mode, n, corpus_file, ctx.work, out, ["--load"] if largest else [])})
            say(f"    {rows[-1]['build_s']:.1f} s, peak RSS {rows[-1]['peak_rss_mb']:.0f} MiB")
            if mode == "replay" and (n >= SERVE_FROM or largest):
                say(f"  serving the {n:,}-passage folder (fresh process) ...")
                rows[-1]["serve"] = _worker("serve", n, corpus_file, ctx.work, out, [])
            if mode == "replay" and not largest:
                shutil.rmtree(out, ignore_errors=True)  # the 3M folder alone is ~6 GiB
    real = [r for r in rows if r["mode"] == "real"]
    pps = real[-1]["passages"] / real[-1]["encode_s"]
    for r in rows:
        r["build_s_total"] = r["build_s"] + (r["passages"] / pps if r["mode"] == "replay" else 0.0)
    return {"corpus": str(corpus_file), "real_passages_per_s": pps, "replay_source_vectors": len(source.vectors),
            "rows": rows}


def _worker(mode: str, n: int, corpus_file: Path, work: Path, out: Path, extra: list[str]) -> dict:
    """One `python -m bench.suite.stream` process; its JSON line."""
    cmd = [sys.executable, "-m", "bench.suite.stream", "--mode", mode, "--n", str(n), "--corpus", str(corpus_file),
           "--vectors", str(work / "replay-source.npy"), "--questions", str(work / "questions.npy"),
           "--out", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"stream worker failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(res: dict) -> str:
    head = ["N", "passages", "build s", "of which encoding s", "peak RSS MiB", "folder MiB", "FAISS MiB"]
    body = []
    for r in res["rows"]:
        est = r["mode"] == "replay"
        body.append([f"{r['passages']:,}", "replayed vectors" if est else "real (MiniLM)",
                     ("est. " if est else "") + num(r["build_s_total"], 0),
                     ("est. " if est else "") + num(r["build_s_total"] - r["build_s"] + r["encode_s"], 0),
                     num(r["peak_rss_mb"], 0), num(r["folder_mb"], 0), num(r["faiss_mb"], 1)])
    last = res["rows"][-1]
    lines = [f"`Index.build` from an iterator, chunks of 4096, IVF-PQ48 + refine disk, no BM25; each build a fresh "
             f"process. Replayed rows: real vectors repeated with N(0, {NOISE}^2) noise instead of the encoder; their "
             f"encoding time is extrapolated from the real rows' {res['real_passages_per_s']:.1f} passages/s.", "",
             table(head, body), ""]
    if "load_fast_s" in last:
        lines.append(f"Loading the {last['passages']:,}-passage folder: verify=\"fast\" (default) "
                     f"{last['load_fast_s']:.2f} s, verify=\"full\" (sha256 of every file) "
                     f"{last['load_full_s']:.2f} s.")
    served = [r for r in res["rows"] if "serve" in r]
    if served:
        lines += ["", serving_report(served)]
    return "\n".join(lines)


def serving_report(rows: list[dict]) -> str:
    head = ["N", "factory", "folder GiB", "serving peak RSS MiB", "load s", "nprobe", "p50 ms", "p95 ms", "recall@10"]
    body = []
    for r in rows:
        sv = r["serve"]
        for name in ("default", "wider"):
            body.append([f"{r['passages']:,}", r["factory"], num(r["folder_mb"] / 1024, 2), num(sv["peak_rss_mb"], 0),
                         num(sv["load_s"], 2), str(sv[name]["nprobe"]), num(sv[name]["p50_ms"], 2),
                         num(sv[name]["p95_ms"], 2), f"{sv[name]['recall@10']:.3f}"])
    sv = rows[-1]["serve"]
    return (f"Serving the replayed folders: a fresh process opens each as `ragloop serve` does (`Index.load`, verify "
            f"\"fast\") and searches {sv['questions']} real question vectors one at a time, k = {sv['k']}, refine "
            f"x{sv['refine_factor']} from the memory-mapped vectors.npy; recall@10 against exact search over the "
            "same vectors. Replayed vectors are real ones repeated with noise, so a question's neighbours are "
            "near-copies of each other: a harder recall test than real text.\n\n" + table(head, body))


def goals(res: dict) -> list[dict]:
    """Issue 25: peak RSS at 1M <= MEMORY_SLACK x the peak at 100k plus the FAISS index's own growth; and 1M
    passages indexable in 24 GB (the replayed peak plus the largest real build's, for the encoder)."""
    replay = [r for r in res["rows"] if r["mode"] == "replay"]
    first = replay[0]
    last = next((r for r in replay if r["passages"] == 1_000_000), replay[-1])
    what = (f"streaming index build: peak RSS at 1M passages <= {MEMORY_SLACK}x the peak at 100k + the FAISS "
            "index's growth")
    allowed = MEMORY_SLACK * first["peak_rss_mb"] + (last["faiss_mb"] - first["faiss_mb"])
    value = (f"peak RSS {first['peak_rss_mb']:.0f} MiB at {first['passages']:,} -> {last['peak_rss_mb']:.0f} MiB at "
             f"{last['passages']:,} (allowed {allowed:.0f}: FAISS {first['faiss_mb']:.0f} -> {last['faiss_mb']:.0f} "
             f"MiB; vectors on disk {last['vectors_mb']:.0f} MiB)")
    if len(replay) < 2 or last["passages"] < 1_000_000:
        return [goal(what, value + "; judged at 1M passages (full run)", None)]
    # a replayed build loads no encoder: bound the real thing by adding the largest real build's whole peak
    # (the model and one chunk's activations), which does not grow with N
    real_peak = max(r["peak_rss_mb"] for r in res["rows"] if r["mode"] == "real")
    bound = last["peak_rss_mb"] + real_peak
    fits = goal("1M passages indexable in 24 GB", f"peak RSS {last['peak_rss_mb']:,.0f} MiB replayed + "
                f"{real_peak:,.0f} MiB for the encoder (the largest real build's peak) = {bound:,.0f} MiB "
                f"at {last['passages']:,}", bound <= 24 * 1024)
    return [goal(what, value, last["peak_rss_mb"] <= allowed), fits]


PLOTS: dict = {}


# -- the worker: one build in this process --------------------------------------------------------------


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _passages(corpus: Path, n: int, replay: bool):
    from ragloop.data import iter_corpus
    from ragloop.data.corpus import iter_passages

    if not replay:
        yield from itertools.islice(iter_corpus([corpus]), n)
        return
    source = list(itertools.islice(iter_corpus([corpus]), 50_000))
    # every replayed passage a document of its own with a text of its own, through the duplicate check
    # `ragloop index` runs (iter_passages), so what it keeps per passage is measured as N grows
    documents = ({"doc_id": f"replay-doc-{i}", "title": source[i % len(source)].title,
                  "text": f"{source[i % len(source)].text} r{i}"} for i in range(n))
    yield from iter_passages(documents, chunk_size=10**6)


def worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description="one streaming build, for section 7 of python -m bench")
    p.add_argument("--mode", choices=("real", "replay", "serve"), required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--vectors", type=Path, required=True)
    p.add_argument("--questions", type=Path, help="question vectors (.npy), for --mode serve")
    p.add_argument("--out", type=Path, required=True, help="the folder to build (to open, with --mode serve)")
    p.add_argument("--load", action="store_true", help="time Index.load with verify fast and full afterwards")
    args = p.parse_args(argv)

    from ragloop import BiEncoder, Index
    from ragloop.cli import quiet_libraries

    quiet_libraries()
    if args.mode == "serve":
        print(json.dumps(serve(args.out, np.load(args.questions))))
        return
    encoder = BiEncoder.from_pretrained()
    spent = [0.0]
    if args.mode == "replay":
        source = np.load(args.vectors, mmap_mode="r")
        rng = np.random.default_rng(0)
        row = [0]

        def replay(titles, texts, **_):
            idx = (row[0] + np.arange(len(texts))) % len(source)
            row[0] += len(texts)
            out = source[idx] + NOISE * rng.standard_normal((len(texts), source.shape[1]), dtype=np.float32)
            return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

        encoder.encode_passages = replay
    else:
        encode = encoder.encode_passages

        def timed_encode(*a, **k):
            t0 = time.perf_counter()
            try:
                return encode(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t0

        encoder.encode_passages = timed_encode
    start = time.perf_counter()
    index = Index.build(_passages(args.corpus, args.n, args.mode == "replay"), encoder, args.out,
                        factory=f"IVF{nlist_for(args.n)},PQ48", refine="disk", with_bm25=False, progress=False)
    out = {"passages": len(index), "build_s": time.perf_counter() - start, "encode_s": spent[0],
           "peak_rss_mb": _status_mb("VmHWM"), "factory": index.factory,
           "folder_mb": sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 2**20,
           "faiss_mb": (args.out / "index.faiss").stat().st_size / 2**20,
           "vectors_mb": (args.out / "vectors.npy").stat().st_size / 2**20}
    index.close()
    if args.load:
        for verify in ("fast", "full"):
            t0 = time.perf_counter()
            Index.load(args.out, verify=verify).close()
            out[f"load_{verify}_s"] = time.perf_counter() - t0
    print(json.dumps(out))


def serve(folder: Path, queries: np.ndarray) -> dict:
    """Open `folder` as a server does and answer `queries` one at a time: peak RSS, p50/p95 ms at the folder's
    nprobe and at WIDER_NPROBE, recall@10 of each against exact search over the folder's vectors.npy."""
    from ragloop import Index
    from ragloop.retrieval.backend import FaissBackend

    start = time.perf_counter()
    index = Index.load(folder, verify="fast")
    out = {"load_s": time.perf_counter() - start, "nprobe": index.backend.search_params.get("nprobe"),
           "refine_factor": index.backend.refine_factor, "questions": len(queries), "k": SERVE_K}
    b = index.backend

    def widened() -> FaissBackend:  # it sets nprobe on the FAISS index b shares: made after b's rows
        return FaissBackend(b.index, b.factory, dict(b.search_params, nprobe=WIDER_NPROBE), b.exact, b.refine_factor)

    found = {}
    for name, make in (("default", lambda: b), ("wider", widened)):
        backend = make()
        seconds = single_query_seconds(backend.search, queries, SERVE_K, n=len(queries))
        found[name] = backend.search(queries, SERVE_K)[1]
        out[name] = {"nprobe": backend.search_params.get("nprobe"), "p50_ms": percentile(seconds, 50) * 1e3,
                     "p95_ms": percentile(seconds, 95) * 1e3}
    out["peak_rss_mb"] = _status_mb("VmHWM")  # before the exact search below maps every vector
    # of which pages of the memory-mapped files (vectors.npy read by the refine, with the kernel's readahead):
    # page cache the kernel can reclaim, unlike the anonymous memory (FAISS, Python, torch)
    out["rss_anon_mb"], out["rss_file_mb"] = _status_mb("RssAnon"), _status_mb("RssFile")
    truth = exact_top_k(b.exact, queries, SERVE_K)
    for name, rows in found.items():
        out[name]["recall@10"] = float(np.mean([len(set(a) & set(t)) / SERVE_K
                                                for a, t in zip(rows.tolist(), truth.tolist())]))
    index.close()
    return out


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 262_144) -> np.ndarray:
    """Rows of the k largest inner products of each query over `vectors` (read in blocks), best first."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_r = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(vectors), block):
        scores = queries @ np.asarray(vectors[start : start + block], dtype=np.float32).T
        s = np.concatenate([best_s, scores], axis=1)
        r = np.concatenate([best_r, np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)], axis=1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s, best_r = np.take_along_axis(s, top, 1), np.take_along_axis(r, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_r, order, 1)


if __name__ == "__main__":
    worker(sys.argv[1:])
