"""Quantized inference: what `--quantize int8` buys (speed) and costs (quality), on CPU.

    python bench/bench_quantize.py --quick                          # a smoke run: small sizes, < 2 min
    python bench/bench_quantize.py                                  # the measurement (quiet machine)
    python bench/bench_quantize.py --rag runs/demo/rag/best_model   # + F1 of a trained model, fp32 vs int8

Goals (issue "further optimizations", item 1): int8 at least 1.5x faster than float32 for encoding
and for answering, at most 1 point of gold@5 and 2 points of F1 lost.

1. Encoding: passages/s of the bundled all-MiniLM-L6-v2 (`bundled:all-MiniLM-L6-v2`), float32 vs
   int8, on --passages passages of the bundled SQuAD dev sample (title + text, batch 64), in the same
   process, alternating rounds (A B, B A, ...) after a warm-up; the speed-up is the median of the
   per-round ratios. Also the cosine of each int8 vector to its float32 twin.
2. Retrieval: an index built with each encoder over the sample's passages (--articles of them), and
   gold@1/5/20, hit@5 of dense search on --retrieval-questions questions spread evenly over those
   articles: fp32 index + fp32 queries, int8 index + int8 queries, and int8 index + fp32 queries
   (the mix the index's probe check allows).
3. Answering: seconds per question of `RAG.answer(question)` (one question per call, k = --k), float32
   vs int8 with the LM head in float32 (the default) vs int8 with the LM head quantized too. The model
   is --rag DIR, or else an untrained `RAG.from_index(fp32 index, generator="bundled:minilm-bert2bert")`.
   For the timing every variant generates exactly --tokens tokens (eos set to an unused token), so an
   answer that stops earlier cannot look faster. Then, decoding normally, the share of answers
   identical to float32's on --answer-questions questions, and with --rag their EM/F1 (the untrained
   model's F1 means nothing, so it is not reported).

Writes bench/results/quantize.json (quantize-quick.json with --quick) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: find the bench package and this checkout's ragloop
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.suite.common import (  # noqa: E402
    RESULTS_DIR,
    alternate,
    load_average,
    machine_info,
    machine_line,
    median,
    num,
    say,
    source_version,
    speed_summary,
    table,
)
from ragloop.data import load_qa  # noqa: E402
from ragloop.data.bundled import SQUAD_DEV, bundled_path  # noqa: E402
from ragloop.data.corpus import load_corpus  # noqa: E402
from ragloop.data.qa import sample_evenly  # noqa: E402
from ragloop.evaluation import evaluate_retrieval  # noqa: E402
from ragloop.evaluation.metrics import exact_match, f1_score  # noqa: E402
from ragloop.generation import Generator  # noqa: E402
from ragloop.io import atomic_write_json  # noqa: E402
from ragloop.model import RAG, RAGConfig  # noqa: E402
from ragloop.retrieval import BiEncoder, Encoder, Index, Retriever  # noqa: E402
from ragloop.retrieval.encoders import PROBE_TEXT  # noqa: E402

ENCODER = "bundled:all-MiniLM-L6-v2"
FULL = dict(passages=512, rounds=7, articles=32, retrieval_questions=2000, answer_questions=200, k=5, tokens=16,
            latency_questions=8)
QUICK = dict(passages=16, rounds=2, articles=1, retrieval_questions=40, answer_questions=3, k=2, tokens=4,
             latency_questions=1)


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


# -- 1. encoding ----------------------------------------------------------------------------------


def encoding(fp32: Encoder, passages: list, rounds: int) -> dict:
    int8 = copy.deepcopy(fp32).quantize("int8")
    titles, texts = [p.title for p in passages], [p.text for p in passages]
    encoders = {"fp32": fp32, "int8": int8}
    seconds = alternate({name: (lambda r, e=enc: e.encode(titles, texts, progress=False))
                         for name, enc in encoders.items()}, rounds, progress="encoding")
    speed = speed_summary(seconds, len(passages), baseline="fp32")
    a, b = fp32.encode(titles, texts, progress=False), int8.encode(titles, texts, progress=False)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    p8, p32 = int8.encode([PROBE_TEXT], progress=False)[0], fp32.probe()  # int8.probe() is fp32's, by design
    probe_cos = float(np.dot(p8, p32) / np.linalg.norm(p8) / np.linalg.norm(p32))
    return {"passages": len(passages), "speed": speed,
            "cosine": {"min": float(cos.min()), "mean": float(cos.mean()), "probe_int8_vs_fp32": probe_cos}}


# -- 2. retrieval ---------------------------------------------------------------------------------


def retrieval(fp32: Encoder, passages: list, examples: list, workdir: Path) -> tuple[dict, Index]:
    built, seconds = {}, {}
    for name in ("fp32", "int8"):
        enc = fp32 if name == "fp32" else copy.deepcopy(fp32).quantize("int8")
        start = time.perf_counter()
        built[name] = Index.build(passages, BiEncoder(enc), workdir / f"index-{name}", with_bm25=False,
                                  progress=False)
        seconds[name] = time.perf_counter() - start
        say(f"  index {name}: {len(passages)} passages in {seconds[name]:.1f} s")
    rows = {}
    for name, index_name, quantize in (("fp32 index, fp32 queries", "fp32", None),
                                       ("int8 index, int8 queries", "int8", "int8"),
                                       ("int8 index, fp32 queries", "int8", None)):
        question = fp32 if quantize is None else copy.deepcopy(fp32).quantize(quantize)
        retriever = Retriever(built[index_name], question)
        rows[name] = evaluate_retrieval(retriever, examples, (1, 5, 20), "dense", progress=False)
        say(f"  {name}: gold@5 {rows[name]['gold@5']:.3f}")
    built["int8"].close()
    summary = {"passages": len(passages), "questions": len(examples), "index_seconds": seconds, "rows": rows}
    return summary, built["fp32"]


# -- 3. answering ---------------------------------------------------------------------------------


@contextlib.contextmanager
def fixed_length(rags: list[RAG]):
    """Every generator's eos set to a token it never produces, so each answer is exactly max_new_tokens."""
    saved = []
    for rag in rags:
        gen = rag.generator
        unused = gen.tokenizer.convert_tokens_to_ids("[unused0]")
        if unused is None or unused == gen.tokenizer.unk_token_id:
            unused = len(gen.tokenizer) - 1
        saved.append((gen.model.generation_config, gen.model.generation_config.eos_token_id,
                      gen.model.config, getattr(gen.model.config, "eos_token_id", None)))
        gen.model.generation_config.eos_token_id = unused
        gen.model.config.eos_token_id = unused
    try:
        yield
    finally:
        for gcfg, geos, cfg, eos in saved:
            gcfg.eos_token_id, cfg.eos_token_id = geos, eos


def rag_variants(rag_dir: str | None, index: Index, qenc: Encoder, k: int) -> dict[str, RAG]:
    """Three copies of one model; untrained: `RAG.from_index(index, generator="bundled:minilm-bert2bert")`
    built once (the index's own question encoder) and copied."""
    if rag_dir:
        loaded = {name: RAG.from_pretrained(rag_dir) for name in ("fp32", "int8", "int8 + LM head")}
    else:
        gen = Generator.from_pretrained("bundled:minilm-bert2bert")
        config = RAGConfig(n_docs=k)
        loaded = {name: RAG(index, copy.deepcopy(qenc), copy.deepcopy(gen), config)
                  for name in ("fp32", "int8", "int8 + LM head")}
    loaded["int8"].quantize("int8")
    loaded["int8 + LM head"].quantize("int8", lm_head=True)
    return loaded


def answering(rags: dict[str, RAG], questions: list[str], examples: list, rounds: int, k: int, tokens: int,
              trained: bool) -> dict:
    def run(rag: RAG):
        def once(r: int) -> float:
            start = time.perf_counter()
            for q in questions:
                rag.answer(q, k=k, max_new_tokens=tokens)
            return (time.perf_counter() - start) / len(questions)
        return once

    with fixed_length(list(rags.values())):
        seconds = alternate({name: run(rag) for name, rag in rags.items()}, rounds, progress="answering")
    speed = speed_summary(seconds, 1, baseline="fp32")
    predictions = {name: [a.answer for a in rag.answer([e.question for e in examples], k=k)]
                   for name, rag in rags.items()}
    quality = {}
    for name, preds in predictions.items():
        row = {"same_as_fp32": float(np.mean([p == f for p, f in zip(preds, predictions["fp32"])]))}
        if trained:
            row["em"] = float(np.mean([exact_match(p, e.answers) for p, e in zip(preds, examples)]))
            row["f1"] = float(np.mean([f1_score(p, e.answers) for p, e in zip(preds, examples)]))
        quality[name] = row
    return {"questions_timed": len(questions), "k": k, "tokens": tokens, "speed": speed,
            "answer_questions": len(examples), "quality": quality, "trained": trained}


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument("--rag", metavar="DIR", help="a trained RAG model folder: answer F1 fp32 vs int8")
    for key, value in FULL.items():
        parser.add_argument("--" + key.replace("_", "-"), type=int, help=f"default {value} ({QUICK[key]} with --quick)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="JSON results (default bench/results/quantize[-quick].json)")
    args = parser.parse_args()
    sizes = {key: getattr(args, key) if getattr(args, key) is not None else (QUICK if args.quick else FULL)[key]
             for key in FULL}
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or RESULTS_DIR / ("quantize-quick.json" if args.quick else "quantize.json")
    machine = {**machine_info(), "ragloop_commit": source_version(), "load_average_start": load_average()}
    say(f"# Quantized inference{' (quick: not a measurement)' if args.quick else ''}\n{machine_line(machine)}")

    examples = load_qa(bundled_path(SQUAD_DEV))
    titles = list(dict.fromkeys(e.title for e in examples))[: sizes["articles"]]
    examples = [e for e in examples if e.title in titles]
    passages = [p for p in load_corpus([bundled_path(SQUAD_DEV)]) if p.title in titles]
    started = time.perf_counter()
    fp32 = Encoder.from_pretrained(ENCODER)

    sections = {"load": time.perf_counter() - started}

    def section(name: str) -> None:
        sections[name] = time.perf_counter() - started - sum(sections.values())

    say("## 1. encoding")
    enc = encoding(fp32, sample_evenly(passages, sizes["passages"]), sizes["rounds"])
    section("encoding")
    say("## 2. retrieval")
    with tempfile.TemporaryDirectory() as tmp:
        ret, index = retrieval(fp32, passages, sample_evenly(examples, sizes["retrieval_questions"]), Path(tmp))
        section("retrieval")
        say("## 3. answering")
        rags = rag_variants(args.rag, index, fp32, sizes["k"])
        asked = sample_evenly(examples, sizes["answer_questions"])
        timed_questions = [e.question for e in sample_evenly(examples, sizes["latency_questions"])]
        ans = answering(rags, timed_questions, asked, sizes["rounds"], sizes["k"], sizes["tokens"], bool(args.rag))
        for rag in rags.values():
            if rag.index is not index:
                rag.index.close()
        index.close()
    section("answering")

    result = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
              "sizes": sizes, "encoder": ENCODER, "rag": args.rag or "untrained bundled:minilm-bert2bert",
              "machine": {**machine, "load_average_end": load_average()},
              "seconds": round(time.perf_counter() - started, 1),
              "section_seconds": {name: round(x, 1) for name, x in sections.items()},
              "encoding": enc, "retrieval": ret, "answering": ans}
    atomic_write_json(out, result)

    s = enc["speed"]
    print(f"\n## Encoding ({enc['passages']} passages, {sizes['rounds']} rounds, {ENCODER})\n")
    print(table(["encoder", "passages/s", "speed-up (median of rounds)", "cosine to fp32 (min / mean)"],
                [["fp32", num(s["fp32"]["per_s"]), "1.00", "—"],
                 ["int8", num(s["int8"]["per_s"]), f"{s['int8']['ratio']:.2f}",
                  f"{enc['cosine']['min']:.4f} / {enc['cosine']['mean']:.4f}"]]))
    print(f"\nprobe vector, int8 vs fp32 cosine: {enc['cosine']['probe_int8_vs_fp32']:.4f} (the index check "
          "compares fp32 fingerprints; its threshold is 0.999)")
    print(f"\n## Dense retrieval ({ret['passages']} passages, {ret['questions']} questions)\n")
    print(table(["index / queries", "gold@1", "gold@5", "gold@20", "hit@5", "mrr@10"],
                [[name, pct(r["gold@1"]), pct(r["gold@5"]), pct(r["gold@20"]), pct(r["hit@5"]), pct(r["mrr@10"])]
                 for name, r in ret["rows"].items()]))
    a = ans["speed"]
    print(f"\n## Answering ({ans['questions_timed']} questions one at a time, k={ans['k']}, {ans['tokens']} tokens "
          f"each; {result['rag']})\n")
    head = ["model", "s / question", "speed-up (median of rounds)",
            f"same answer as fp32 ({ans['answer_questions']} q)"]
    if ans["trained"]:
        head += ["EM", "F1"]
    rows = []
    for name in a:
        q = ans["quality"][name]
        row = [name, f"{median(a[name]['seconds']):.3f}", f"{a[name]['ratio']:.2f}", pct(q["same_as_fp32"])]
        if ans["trained"]:
            row += [pct(q["em"]), pct(q["f1"])]
        rows.append(row)
    print(table(head, rows))
    print(f"\n{result['seconds']:.0f} s (" + ", ".join(f"{n} {x:.0f}" for n, x in sections.items())
          + f"); load average {machine['load_average_start']:.1f} -> "
          f"{result['machine']['load_average_end']:.1f}; results: {out}")


if __name__ == "__main__":
    main()
