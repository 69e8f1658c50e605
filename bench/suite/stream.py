"""Section 7 "stream": peak RAM and time of a streaming `Index.build` as the corpus grows, and load time.

    python -m bench --only stream --big /work/cache/big    # real 5k / 10k, replayed 100k / 300k / 1M
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
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.suite import bigdata
from bench.suite.common import num, say, table
from bench.suite.goals import goal
from bench.suite.search import nlist_for

TITLE = "Streaming index builds: peak RAM and time vs N, load time"
NOISE = 0.01


def run(ctx) -> dict:
    big = getattr(ctx, "big", None) or bigdata.DEFAULT_BIG
    reason = bigdata.missing_reason(big)
    corpus_file = big / "corpus.jsonl"
    real_sizes, replay_sizes = ((1_000,), (20_000,)) if ctx.quick else ((5_000, 10_000), (100_000, 300_000, 1_000_000))
    if reason is not None:  # the bundled dev passages stand in, written as a corpus file
        say(f"  big corpus not used: {reason}; real rows use the bundled SQuAD dev passages")
        corpus_file = ctx.work / "dev-corpus.jsonl"
        with open(corpus_file, "w", encoding="utf-8") as f:
            for p in ctx.dev_passages:
                f.write(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n")
        real_sizes = tuple(min(n, len(ctx.dev_passages)) for n in real_sizes[:1])
    source = bigdata.load(ctx, max(real_sizes), 1)
    np.save(ctx.work / "replay-source.npy", source.vectors)
    rows = []
    for mode, sizes in (("real", real_sizes), ("replay", replay_sizes)):
        for n in sizes:
            largest = mode == "replay" and n == max(replay_sizes)
            say(f"  {mode} build, {n:,} passages (fresh process) ...")
            cmd = [sys.executable, "-m", "bench.suite.stream", "--mode", mode, "--n", str(n), "--corpus",
                   str(corpus_file), "--vectors", str(ctx.work / "replay-source.npy"), "--out",
                   str(ctx.work / f"stream-{mode}-{n}")] + (["--load"] if largest else [])
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"stream worker failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
            rows.append({"mode": mode, **json.loads(done.stdout.strip().splitlines()[-1])})
            say(f"    {rows[-1]['build_s']:.1f} s, peak RSS {rows[-1]['peak_rss_mb']:.0f} MiB")
    real = [r for r in rows if r["mode"] == "real"]
    pps = real[-1]["passages"] / real[-1]["encode_s"]
    for r in rows:
        r["build_s_total"] = r["build_s"] + (r["passages"] / pps if r["mode"] == "replay" else 0.0)
    return {"corpus": str(corpus_file), "real_passages_per_s": pps, "rows": rows}


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
    return "\n".join(lines)


def goals(res: dict) -> list[dict]:
    """Bounded: from the smallest to the largest replayed build, peak RSS grows by no more than the FAISS
    index does plus a tenth of what the raw vectors do (everything else O(N) stays small)."""
    replay = [r for r in res["rows"] if r["mode"] == "replay"]
    first, last = replay[0], replay[-1]
    what = "streaming index build: RAM bounded as the corpus grows"
    grew = last["peak_rss_mb"] - first["peak_rss_mb"]
    allowed = (last["faiss_mb"] - first["faiss_mb"]) + 0.1 * (last["vectors_mb"] - first["vectors_mb"])
    value = (f"peak RSS {first['peak_rss_mb']:.0f} MiB at {first['passages']:,} -> {last['peak_rss_mb']:.0f} MiB at "
             f"{last['passages']:,} (FAISS {last['faiss_mb']:.0f} MiB, vectors on disk {last['vectors_mb']:.0f} MiB)")
    if len(replay) < 2 or last["passages"] < 1_000_000:
        return [goal(what, value + "; judged at 1M passages (full run)", None)]
    # a replayed build loads no encoder: bound the real thing by adding the largest real build's whole peak
    # (the model and one chunk's activations), which does not grow with N
    real_peak = max(r["peak_rss_mb"] for r in res["rows"] if r["mode"] == "real")
    bound = last["peak_rss_mb"] + real_peak
    fits = goal("1M passages indexable in 24 GB", f"peak RSS {last['peak_rss_mb']:,.0f} MiB replayed + "
                f"{real_peak:,.0f} MiB for the encoder (the largest real build's peak) = {bound:,.0f} MiB "
                f"at {last['passages']:,}", bound <= 24 * 1024)
    return [goal(what, value, grew <= allowed), fits]


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
    p.add_argument("--mode", choices=("real", "replay"), required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--vectors", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--load", action="store_true", help="time Index.load with verify fast and full afterwards")
    args = p.parse_args(argv)

    from ragloop import BiEncoder, Index
    from ragloop.cli import quiet_libraries

    quiet_libraries()
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


if __name__ == "__main__":
    worker(sys.argv[1:])
