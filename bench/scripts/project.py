"""Project an index of DPR's Wikipedia (21M passages) from what the suite measured up to 1M and 3M.

    python -m bench.scripts.project                       # 21,015,324 passages, from bench/results/
    python -m bench.scripts.project --passages 50000000 --gpu-passages-per-s 5000 --gpus 8

It reads two results files of a full run and measures nothing itself:
- search.json (section 3, scale curve): bytes, build seconds and p50 ms of Flat, HNSW32 and IVF-PQ32 over
  synthetic vectors up to 1M;
- stream.json (section 9): streaming builds of IVF-PQ48 with the disk refine stage from replayed vectors up to
  3M passages (peak RSS, folder size, FAISS size, build seconds), the 1M and 3M folders opened as a server
  opens them (peak RSS, p50/p95 ms, recall@10), and the encoder's passages/s on real passages (2 CPU cores).

Each quantity is fitted to the two largest measured sizes with the growth its algorithm has, and
extrapolated: bytes and build seconds linear in N; search time linear in N for Flat (every vector scored),
in log N for HNSW (graph depth) and in sqrt(N) for IVF (the lists probed hold N / nlist vectors each and
nlist grows as sqrt(N)). The passage store (SQLite) adds its measured bytes a passage to every factory's disk.
Vectors are 384-d (all-MiniLM-L6-v2); DPR's BERT-base encoders give 768-d, twice the vector bytes.
docs/scaling.md says where this can be wrong.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bench.suite.tables import table

DPR_WIKIPEDIA = 21_015_324  # passages of 100 words in DPR's psgs_w100.tsv
RESULTS = Path(__file__).resolve().parents[1] / "results"
MIB, GIB = 2**20, 2**30
GROWTH = {"Flat": lambda n: n, "HNSW32": math.log, "IVF-PQ32": math.sqrt}


def fit(points: list[tuple[float, float]], growth, at: float) -> float:
    """y = a + b * growth(n) through the two largest points, evaluated at `at`."""
    (n0, y0), (n1, y1) = sorted(points)[-2:]
    b = (y1 - y0) / (growth(n1) - growth(n0))
    return y0 + b * (growth(at) - growth(n0))


def load(results: Path) -> tuple[dict, dict, str]:
    search, stream = (json.loads((results / f"{name}.json").read_text()) for name in ("search", "stream"))
    where = f"search.json {search['date'][:10]}, stream.json {stream['date'][:10]}"
    return search["result"]["scale"], stream["result"], where


def project(scale: dict, stream: dict, n: int, gpus: int, gpu_rate: float | None) -> str:
    replay = [r for r in stream["rows"] if r["mode"] == "replay"]
    served = [r for r in replay if "serve" in r]
    last = replay[-1]
    store_b = (last["folder_mb"] - last["faiss_mb"] - last["vectors_mb"]) * MIB / last["passages"]
    vec_b = last["vectors_mb"] * MIB / last["passages"]
    rows = []
    for name, curve in scale["curve"].items():
        ram = fit([(p["n"], p["bytes"]) for p in curve], GROWTH["Flat"], n)
        p50 = fit([(p["n"], p["p50_ms"]) for p in curve], GROWTH[name], n)
        rows.append([name, f"{ram / GIB:,.1f}", f"{(ram + store_b * n) / GIB:,.1f}", f"{p50:,.1f}",
                     f"{curve[-1]['n']:,}"])
    name = f"IVF-PQ48 + refine disk, nprobe {served[-1]['serve']['wider']['nprobe']}"
    faiss = fit([(r["passages"], r["faiss_mb"] * MIB) for r in replay], GROWTH["Flat"], n)
    folder = fit([(r["passages"], r["folder_mb"] * MIB) for r in replay], GROWTH["Flat"], n)
    # the wider probe's rows: a run before commit 47a3f0a measured its "default" rows at the wider nprobe too
    p50 = fit([(r["passages"], r["serve"]["wider"]["p50_ms"]) for r in served], math.sqrt, n)
    rows.append([name, f"{faiss / GIB:,.1f}", f"{folder / GIB:,.1f}", f"{p50:,.1f}", f"{served[-1]['passages']:,}"])
    rss = fit([(r["passages"], r["serve"]["peak_rss_mb"]) for r in served], GROWTH["Flat"], n)
    build = fit([(r["passages"], r["build_s"]) for r in replay], GROWTH["Flat"], n)
    cpu_h = n / stream["real_passages_per_s"] / 3600
    lines = [f"Projected to {n:,} passages, 384-d vectors (768-d DPR encoders: double every vector figure; "
             f"vectors.npy alone is {vec_b * n / GIB:,.1f} GiB at 384-d).", "",
             table(["index", "FAISS in RAM GiB", "on disk GiB (+ store)", "p50 ms a search", "largest N measured"],
                   rows), "",
             f"- A server of the IVF-PQ48 + refine disk folder: peak RSS {rss / 1024:,.1f} GiB (from "
             f"{served[0]['serve']['peak_rss_mb']:,.0f} MiB at {served[0]['passages']:,} and "
             f"{served[-1]['serve']['peak_rss_mb']:,.0f} MiB at "
             f"{served[-1]['passages']:,}; it counts the pages of the memory-mapped vectors.npy the refine "
             "has read, which the kernel can reclaim).",
             f"- Building it, encoding aside: {build / 3600:,.1f} h (FAISS training, adding, the store and the "
             f"duplicate check; replayed builds took {replay[-2]['build_s']:,.0f} s at {replay[-2]['passages']:,} and "
             f"{last['build_s']:,.0f} s at {last['passages']:,}).",
             f"- Encoding with all-MiniLM-L6-v2 on this machine's 2 CPU cores ({stream['real_passages_per_s']:.1f} "
             f"passages/s): {cpu_h:,.0f} h ({cpu_h / 24:,.1f} days)."]
    if gpu_rate:
        lines.append(f"- Encoding on {gpus} GPU(s) at {gpu_rate:,.0f} passages/s each (given, not measured here): "
                     f"{n / (gpus * gpu_rate) / 3600:,.1f} h with `torchrun --nproc_per_node {gpus} -m ragloop index`.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passages", type=int, default=DPR_WIKIPEDIA, help="N to project to (default: %(default)s)")
    p.add_argument("--results", type=Path, default=RESULTS, help="the run's results folder (default: bench/results)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs for the encoding line (default: %(default)s)")
    p.add_argument("--gpu-passages-per-s", type=float,
                   help="one GPU's encoding rate, measured elsewhere (ragloop index on one GPU); no GPU line without")
    args = p.parse_args(argv)
    if args.passages <= 0 or args.gpus <= 0 or (args.gpu_passages_per_s is not None and
                                                 not args.gpu_passages_per_s > 0):
        p.error("--passages, --gpus and --gpu-passages-per-s must be positive")
    try:
        scale, stream, where = load(args.results)
    except (OSError, KeyError, ValueError) as e:
        p.error(f"cannot read the full run's search.json and stream.json in {args.results}: {e}")
    if sum(1 for r in stream["rows"] if "serve" in r) < 2:
        p.error(f"{args.results}/stream.json has fewer than two served folders: run "
                "`python -m bench --only stream --big DIR` (a full run, not --quick)")
    print(f"From {where}.\n")
    print(project(scale, stream, args.passages, args.gpus, args.gpu_passages_per_s))


if __name__ == "__main__":
    main()
