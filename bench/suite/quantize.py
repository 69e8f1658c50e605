"""Section 6: int8 quantized inference vs float32 (`--quantize int8`): what it buys and what it costs.

    python -m bench --only quantize                  # full sizes
    python -m bench --quick --only quantize          # the same code paths on subsets
    python -m bench --only quantize --rag-model DIR  # answers of a trained model (default:
                                                     # runs/demo/rag/best_model when it exists)

1. Encoding: passages/s of the bundled all-MiniLM-L6-v2, float32 vs a quantized copy, on a slice of
   the dev passages (title + text, batch 64), alternating rounds; the speed-up is the median of the
   per-round ratios. Also the cosine of each int8 vector to its float32 twin.
2. Retrieval: gold@1/5/20, hit@5 and mrr@10 of dense search on the section-1 questions: the run's
   float32 index with float32 queries, an index built with the int8 encoder with int8 queries, and
   that index with float32 queries (the mix the index's probe check allows).
3. Answering: seconds per question of `RAG.answer(question, k=5)`, one question per call, float32 vs
   int8 with the LM head in float32 (the default) vs int8 with the LM head quantized too, alternating
   rounds. Every variant generates exactly the same number of tokens (eos set to an unused token), so
   an answer that stops earlier cannot look faster. Then, decoding normally, EM/F1 on the held-out
   questions and the share of answers identical to float32's. The model is the trained one
   (`--rag-model`) or else `RAG.from_index(float32 index, generator="bundled:minilm-bert2bert")`, whose
   F1 says little (it was never trained to read), so the F1 goal is only judged for a trained model.

Goals (issue 14, item 1): int8 >= 1.5x faster than float32 for encoding and for answering, <= 1 point
of gold@5 and <= 2 points of F1 lost.
"""

from __future__ import annotations

import contextlib
import copy
import time

import numpy as np

from bench.suite.common import alternate, median, num, say, speed_summary, table
from bench.suite.goals import goal, sentence
from ragloop.data.qa import sample_evenly

TITLE = "Quantized inference: int8 vs float32"
ENCODER = "bundled:all-MiniLM-L6-v2"
GOAL_SPEED, GOAL_GOLD_POINTS, GOAL_F1_POINTS = 1.5, 1.0, 2.0
VARIANTS = ("fp32", "int8", "int8 + LM head")
RETRIEVAL_ROWS = (("fp32 index, fp32 queries", "fp32", None), ("int8 index, int8 queries", "int8", "int8"),
                  ("int8 index, fp32 queries", "int8", None))
K = 5
ANSWER_BATCH = 8  # questions per RAG.answer call when scoring (k passages each)


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


# -- 1. encoding ----------------------------------------------------------------------------------


def encoding(fp32, passages: list, rounds: int) -> dict:
    from ragloop.retrieval.encoders import PROBE_TEXT

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
    return {"passages": len(passages), "rounds": rounds, "speed": speed,
            "cosine": {"min": float(cos.min()), "mean": float(cos.mean()), "probe_int8_vs_fp32": probe_cos}}


# -- 2. retrieval ---------------------------------------------------------------------------------


def retrieval(ctx, fp32) -> dict:
    """The run's float32 index (`ctx.dev_index`) against one built with the int8 encoder."""
    from ragloop.evaluation import evaluate_retrieval
    from ragloop.retrieval import BiEncoder, Index, Retriever

    built = {"fp32": ctx.dev_index}
    passages = ctx.dev_passages
    say(f"  building an index with the int8 encoder: {len(passages)} passages ...")
    start = time.perf_counter()
    built["int8"] = Index.build(passages, BiEncoder(copy.deepcopy(fp32).quantize("int8")), ctx.work / "index-int8",
                                with_bm25=False, progress=False)
    int8_build_s = time.perf_counter() - start
    examples = ctx.quality_examples
    rows = {}
    for name, index_name, quantize in RETRIEVAL_ROWS:
        question = fp32 if quantize is None else copy.deepcopy(fp32).quantize(quantize)
        rows[name] = evaluate_retrieval(Retriever(built[index_name], question), examples, (1, 5, 20), "dense",
                                        progress=False)
        say(f"  {name}: gold@5 {rows[name]['gold@5']:.3f}")
    built["int8"].close()
    return {"passages": len(passages), "questions": len(examples), "int8_index_build_s": int8_build_s, "rows": rows}


# -- 3. answering ---------------------------------------------------------------------------------


@contextlib.contextmanager
def fixed_length(rags: list):
    """Every generator's eos set to a token it never produces, so each answer is exactly max_new_tokens (a span
    reader extracts: its work does not depend on an answer's length)."""
    saved = []
    for rag in rags:
        if rag.reader.extractive:
            continue
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


def rag_variants(ctx, fp32) -> dict:
    """Three copies of one model: `ctx.rag_model` loaded three times, or else one untrained
    `RAG(dev index, fp32 encoder, bundled:minilm-bert2bert)` copied; then two of them quantized. A span
    reader has no LM head: two copies, fp32 and int8."""
    from ragloop.generation import Generator
    from ragloop.model import RAG, RAGConfig

    if ctx.rag_model:
        loaded = {name: RAG.from_pretrained(ctx.rag_model) for name in VARIANTS}
    else:
        gen = Generator.from_pretrained("bundled:minilm-bert2bert")
        loaded = {name: RAG(ctx.dev_index, copy.deepcopy(fp32), copy.deepcopy(gen), RAGConfig(n_docs=K))
                  for name in VARIANTS}
    loaded["int8"].quantize("int8")
    if loaded["int8 + LM head"].reader.extractive:
        del loaded["int8 + LM head"]
    else:
        loaded["int8 + LM head"].quantize("int8", lm_head=True)
    return loaded


def answering(ctx, rags: dict) -> dict:
    from ragloop.evaluation.metrics import exact_match, f1_score

    sizes = ctx.sizes
    questions = [e.question for e in sample_evenly(ctx.heldout, sizes.quantize_timed)]

    def timer(rag):
        def once(r: int) -> float:
            start = time.perf_counter()
            for q in questions:
                rag.answer(q, k=K, max_new_tokens=sizes.answer_tokens)
            return (time.perf_counter() - start) / len(questions)
        return once

    with fixed_length(list(rags.values())):
        seconds = alternate({name: timer(rag) for name, rag in rags.items()}, sizes.rounds, progress="answering")
    speed = speed_summary(seconds, 1, baseline="fp32")
    examples = sample_evenly(ctx.heldout, sizes.quantize_answers)
    say(f"  answers of {len(examples)} held-out questions, decoding normally ...")
    asked = [e.question for e in examples]
    predictions = {name: [a.answer for i in range(0, len(asked), ANSWER_BATCH)
                          for a in rag.answer(asked[i : i + ANSWER_BATCH], k=K)]
                   for name, rag in rags.items()}
    quality = {}
    for name, preds in predictions.items():
        quality[name] = {
            "same_as_fp32": float(np.mean([p == f for p, f in zip(preds, predictions["fp32"])])),
            "em": float(np.mean([exact_match(p, e.answers) for p, e in zip(preds, examples)])),
            "f1": float(np.mean([f1_score(p, e.answers) for p, e in zip(preds, examples)]))}
    return {"questions_timed": len(questions), "k": K, "tokens": sizes.answer_tokens, "rounds": sizes.rounds,
            "speed": speed, "answer_questions": len(examples), "quality": quality}


# -- the section ----------------------------------------------------------------------------------


def goals(res: dict) -> list[dict]:
    enc, ans = res["encoding"]["speed"]["int8"]["ratio"], res["answering"]["speed"]["int8"]["ratio"]
    rows = res["retrieval"]["rows"]
    gold32, gold8 = rows["fp32 index, fp32 queries"]["gold@5"], rows["int8 index, int8 queries"]["gold@5"]
    gold_lost = 100 * (gold32 - gold8)
    q = res["answering"]["quality"]
    f1_lost = 100 * (q["fp32"]["f1"] - q["int8"]["f1"])
    trained = res["trained"]
    return [
        goal(f"int8 encoding speed vs float32 (>= {GOAL_SPEED}x)", f"{enc:.2f}x", enc >= GOAL_SPEED),
        goal(f"int8 answering speed vs float32, RAG.answer k={K} (>= {GOAL_SPEED}x)", f"{ans:.2f}x",
             ans >= GOAL_SPEED),
        goal(f"int8 gold@5 lost (<= {GOAL_GOLD_POINTS:g} point)",
             f"{gold_lost:+.1f} pts ({pct(gold32)} -> {pct(gold8)})", gold_lost <= GOAL_GOLD_POINTS),
        goal(f"int8 answer F1 lost (<= {GOAL_F1_POINTS:g} points)",
             f"{f1_lost:+.1f} pts ({pct(q['fp32']['f1'])} -> {pct(q['int8']['f1'])}; {res['model']})",
             f1_lost <= GOAL_F1_POINTS if trained else None),
    ]


def run(ctx) -> dict:
    fp32 = ctx.minilm.passage  # the run's index encoder (question and passage tower are one model)
    say("encoding ...")
    enc = encoding(fp32, sample_evenly(ctx.dev_passages, ctx.sizes.quantize_passages), ctx.sizes.rounds)
    say("retrieval ...")
    ret = retrieval(ctx, fp32)
    say("answering ...")
    rags = rag_variants(ctx, fp32)
    ans = answering(ctx, rags)
    if ctx.rag_model:
        for rag in rags.values():
            rag.index.close()
    return {"encoder": ENCODER, "model": f"trained {ctx.rag_model}" if ctx.rag_model
           else "untrained: bundled:minilm-bert2bert over the dev index", "trained": bool(ctx.rag_model),
           "encoding": enc, "retrieval": ret, "answering": ans}


def report(res: dict) -> str:
    enc, ret, ans = res["encoding"], res["retrieval"], res["answering"]
    s = enc["speed"]
    out = [f"Encoding: {enc['passages']} dev passages, {ENCODER}, batch 64, {enc['rounds']} alternating rounds; "
           "speed-up = median of per-round ratios.\n",
           table(["encoder", "passages/s", "speed-up", "cosine to fp32 (min / mean)"],
                 [["fp32", num(s["fp32"]["per_s"]), "1.00", "—"],
                  ["int8", num(s["int8"]["per_s"]), f"**{s['int8']['ratio']:.2f}x**",
                   f"{enc['cosine']['min']:.4f} / {enc['cosine']['mean']:.4f}"]]),
           f"\nProbe vector, int8 vs fp32 cosine {enc['cosine']['probe_int8_vs_fp32']:.4f} (an index checks "
           "fp32 fingerprints; its threshold is 0.999).\n",
           f"Dense retrieval, {ret['passages']:,} passages, {ret['questions']:,} questions (int8 index built in "
           f"{ret['int8_index_build_s']:.0f} s), in %:\n",
           table(["index / queries", "gold@1", "gold@5", "gold@20", "hit@5", "mrr@10"],
                 [[name, pct(r["gold@1"]), pct(r["gold@5"]), pct(r["gold@20"]), pct(r["hit@5"]), pct(r["mrr@10"])]
                  for name, r in ret["rows"].items()]),
           f"\nAnswering, model: {res['model']}. Latency: {ans['questions_timed']} question(s) one at a time, "
           f"k={ans['k']}, exactly {ans['tokens']} tokens, {ans['rounds']} alternating rounds. Quality: "
           f"{ans['answer_questions']} held-out questions, greedy, normal stopping (EM/F1 in %"
           + ("" if res["trained"] else "; an untrained model's F1 says little") + "):\n"]
    rows = []
    for name, sp in ans["speed"].items():
        q = ans["quality"][name]
        rows.append([name, f"{median(sp['seconds']) * 1e3:.0f}",
                     "1.00" if name == "fp32" else f"**{sp['ratio']:.2f}x**", pct(q["same_as_fp32"]),
                     pct(q["em"]), pct(q["f1"])])
    out.append(table(["model", "ms / answer", "speed-up", "same answer as fp32 %", "EM", "F1"], rows))
    out.append("\n" + sentence(goals(res)))
    return "\n".join(out)


PLOTS: dict = {}
