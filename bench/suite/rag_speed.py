"""Section 4: RAG training and answering, ragloop vs transformers' RagSequenceForGeneration and
RagTokenForGeneration, with the same models (DPR-MiniLM question encoder, small T5 generator, see
`models.py`), the same passages and vectors, n_docs, batch and inputs.

- Training examples/s: one optimizer step = loss, backward, gradient clipping, AdamW (the same
  `models.train_step` for every side); the four sides alternate in one process, each round every side
  runs the same batches; median over rounds, ratios from the per-round pairs.
- Peak memory: each side alone in a fresh subprocess (`python -m bench.suite.worker`), which builds
  the side and trains a few steps; peak RSS from getrusage (ru_maxrss).
- Answer latency: one question end to end (encode, retrieve, generate greedily, decode): ragloop
  `RAG.answer(q)` vs `generate(input_ids)` + decode. Both generators' eos is set to an unused token
  for this measurement, so every answer is exactly the same number of tokens (the models are untrained;
  otherwise each side would stop at a different random point).
- Where the time goes: the calls of one step / one answer are timed stage by stage (`Spans`), and
  where a goal is missed, torch.profiler's top operators for both sides.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import defaultdict

from bench.suite.common import (
    BENCH_DIR,
    Spans,
    alternate,
    median,
    num,
    paired_ratios,
    percentile,
    quiet_stderr,
    rotated,
    say,
    table,
)
from bench.suite.goals import goal, sentence
from bench.suite.models import LABELS, SIDES, HFSide, Side, fixed_batches, make_side, optimizer_for, train_step

TITLE = "RAG training and answering: ragloop vs transformers RAG"
GOAL_TRAIN, GOAL_LATENCY = 1.5, 0.5
UNUSED_TOKEN = "[unused0]"
PAIRS = (("ragloop-sequence", "hf-sequence"), ("ragloop-token", "hf-token"))


@contextlib.contextmanager
def fixed_length(sides: dict[str, Side], token_id: int):
    """Make every generator's eos a token it never produces, so all answers run to max_new_tokens."""
    saved = []
    for side in sides.values():
        gen = side.generator_model()
        targets = [gen.generation_config, gen.config]
        if isinstance(side, HFSide):
            targets += [side.rag.config.generator]
            if getattr(side.rag, "generation_config", None) is not None:  # RagTokenForGeneration has one
                targets.append(side.rag.generation_config)
        for obj in targets:
            saved.append((obj, getattr(obj, "eos_token_id", None)))
            obj.eos_token_id = token_id
    try:
        yield
    finally:
        for obj, value in saved:
            obj.eos_token_id = value


def stage_targets(side: Side) -> list[tuple[str, object, str]]:
    from transformers import DPRQuestionEncoder, RagRetriever, T5ForConditionalGeneration
    from transformers.models.rag.modeling_rag import RagSequenceForGeneration, RagTokenForGeneration

    from ragloop.generation import Generator
    from ragloop.generation import readers as rag_module
    from ragloop.retrieval import Index, PassageStore

    t5 = side.generator_model()
    common = [("question encoder", DPRQuestionEncoder, "forward"),
              ("T5 LM head + glue", T5ForConditionalGeneration, "forward"),  # minus the two stacks inside
              ("T5 encoder", t5.encoder, "forward"),  # also when generate() or rescoring call it alone
              ("T5 decoder", t5.decoder, "forward")]
    if isinstance(side, HFSide):
        return common + [
            ("retrieval", RagRetriever, "retrieve"),
            ("generator inputs", RagRetriever, "postprocess_docs"),
            ("loss", RagSequenceForGeneration, "get_nll"),
            ("loss", RagTokenForGeneration, "get_nll"),
        ]
    return common + [
        ("retrieval", Index, "search"),
        ("retrieval", PassageStore, "get_rows"),
        ("retrieval", Index, "vectors"),
        ("generator inputs", Generator, "build_inputs"),
        ("generator inputs", Generator, "tokenize_targets"),
        ("loss", Generator, "forward"),  # log-softmax + gather of the gold tokens (the T5 call inside is split out)
        ("loss", rag_module.READERS["sequence"], "loss"),  # the reader table holds the loss functions
        ("loss", rag_module.READERS["token"], "loss"),
    ]


STAGES = ("question encoder", "retrieval", "generator inputs", "T5 encoder", "T5 decoder", "T5 LM head + glue",
          "loss")
CALLS = ("question encoder", "T5 encoder", "T5 decoder")


def flatten(spans: Spans) -> dict[str, float]:
    """Seconds per stage, each counted once: a stage nested in another (T5 forward inside ragloop's
    Generator.forward, labelled "loss") is taken out of its parent."""
    out = defaultdict(float)
    for path, s in spans.seconds.items():
        parts = path.split("/")
        out[parts[-1]] += s
        if len(parts) > 1:
            out[parts[-2]] -= s
    return dict(out)


def top_calls(spans: Spans) -> dict[str, int]:
    """Calls per stage, not counting calls made inside a call of the same stage."""
    calls = defaultdict(int)
    for path, n in spans.calls.items():
        parts = path.split("/")
        if len(parts) < 2 or parts[-2] != parts[-1]:
            calls[parts[-1]] += n
    return calls


def step_stages(side: Side, optimizer, batches) -> dict[str, float]:
    """Mean seconds per stage of a training step (forward stages, backward, optimizer), `batches` steps."""
    import torch

    spans = Spans(stage_targets(side))
    extra = defaultdict(float)
    side.module.train()
    for batch in batches:
        start = time.perf_counter()
        with spans.active():
            loss = side.loss([e.question for e in batch], [e.answers[0] for e in batch])
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        torch.nn.utils.clip_grad_norm_([p for p in side.module.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        extra["forward total"] += forward - start
        extra["backward"] += backward - forward
        extra["clip + AdamW"] += end - backward
        extra["total"] += end - start
    stages = flatten(spans)
    out = {s: stages.get(s, 0.0) for s in STAGES}
    out["other forward"] = extra["forward total"] - sum(out.values())
    out.update(extra)
    return {k: v / len(batches) for k, v in out.items()}


def answer_stages(side: Side, questions: list[str], tokens: int) -> dict:
    spans = Spans(stage_targets(side))
    side.module.eval()
    start = time.perf_counter()
    with spans.active():
        for q in questions:
            side.answer(q, tokens)
    total = time.perf_counter() - start
    stages = flatten(spans)
    out = {s: stages.get(s, 0.0) / len(questions) for s in STAGES}
    out["other (generation loop, marginalising, decoding)"] = total / len(questions) - sum(out.values())
    out["total"] = total / len(questions)
    calls = top_calls(spans)
    out["calls per answer"] = {s: calls[s] / len(questions) for s in CALLS}
    return out


def top_ops(fn, n: int = 12) -> list[list]:
    """torch.profiler's operators by self CPU time for one call of `fn`: [name, ms, calls]."""
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr((1, 2)), profile(activities=[ProfilerActivity.CPU]) as prof:  # kineto prints to both
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [[e.key, e.self_cpu_time_total / 1e3, e.count] for e in events]


def peak_memory(ctx, setup_file, train_file) -> dict:
    out = {}
    for name in SIDES:
        cmd = [sys.executable, "-m", "bench.suite.worker", "--setup", str(setup_file), "--train", str(train_file),
               "--side", name, "--steps", str(ctx.sizes.rss_steps)]
        say(f"  peak memory: {name} in a subprocess ...")
        proc = subprocess.run(cmd, cwd=BENCH_DIR.parent, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"worker for {name} failed:\n{proc.stderr[-2000:]}")
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def run(ctx) -> dict:
    setup = ctx.rag_setup
    sizes = ctx.sizes
    from ragloop.retrieval import Index

    shared_index = Index.load(setup.index_dir, verify=False)
    sides = {name: make_side(setup, name, shared_index) for name in SIDES}
    questions = [e.question for e in ctx.heldout]

    # -- answer latency (untrained weights, fixed length) ----------------------------------------
    say("answer latency ...")
    unused = sides["hf-sequence"].g_tokenizer.convert_tokens_to_ids(UNUSED_TOKEN)
    lat: dict[str, list[float]] = defaultdict(list)
    per_round: dict[str, list[float]] = defaultdict(list)
    lengths: dict[str, list[int]] = defaultdict(list)
    nq = sizes.latency_questions
    with fixed_length(sides, unused):
        for side in sides.values():
            side.module.eval()
            side.answer(questions[-1], sizes.answer_tokens)  # warm-up
        for r in range(sizes.speed_rounds):
            spent = defaultdict(float)
            for i in range(nq):
                q = questions[(r * nq + i) % len(questions)]
                for name in rotated(list(sides), r + i):
                    start = time.perf_counter()
                    sides[name].answer(q, sizes.answer_tokens)
                    seconds = time.perf_counter() - start
                    lat[name].append(seconds)
                    spent[name] += seconds
                    lengths[name].extend(sides[name].last_tokens)
            for name in sides:
                per_round[name].append(spent[name] / nq)
            say(f"  latency round {r + 1}/{sizes.speed_rounds}: "
                + ", ".join(f"{n} {per_round[n][-1] * 1e3:.0f} ms" for n in sides))
        answer_breakdown = {name: answer_stages(side, questions[:2], sizes.answer_tokens)
                            for name, side in sides.items()}
    latency = {name: {"p50_ms": percentile(v, 50) * 1e3, "p95_ms": percentile(v, 95) * 1e3,
                      "mean_tokens": sum(lengths[name]) / len(lengths[name])} for name, v in lat.items()}
    for ours, theirs in PAIRS:
        latency[ours]["ratio_per_round"] = paired_ratios(per_round[ours], per_round[theirs])
        latency[ours]["ratio"] = median(latency[ours]["ratio_per_round"])

    # -- training throughput ---------------------------------------------------------------------
    say("training throughput ...")
    steps = sizes.speed_steps
    batches = fixed_batches(ctx.train_examples, setup.batch_size, (sizes.speed_rounds + 1) * steps + 2)
    optimizers = {name: optimizer_for(side, setup.learning_rate) for name, side in sides.items()}

    def trainer(name):
        def fn(r: int) -> None:
            first = (r + 1) * steps  # round -1 (warm-up) takes the first batches
            for batch in batches[first : first + steps]:
                train_step(sides[name], optimizers[name], batch)
        return fn

    seconds = alternate({name: trainer(name) for name in sides}, sizes.speed_rounds, progress="training")
    examples = steps * setup.batch_size
    training = {name: {"seconds": s, "examples_per_s": examples / median(s)} for name, s in seconds.items()}
    for ours, theirs in PAIRS:
        training[ours]["ratio_per_round"] = paired_ratios(seconds[theirs], seconds[ours])
        training[ours]["ratio"] = median(training[ours]["ratio_per_round"])
    step_breakdown = {name: step_stages(side, optimizers[name], batches[-2:]) for name, side in sides.items()}

    # -- profiles where a goal is missed ---------------------------------------------------------
    profiles = {}
    for ours, theirs in PAIRS:
        if training[ours]["ratio"] < GOAL_TRAIN:
            profiles[f"training {ours} vs {theirs}"] = {
                name: top_ops(lambda name=name: train_step(sides[name], optimizers[name], batches[-1]))
                for name in (ours, theirs)}
        if latency[ours]["ratio"] > GOAL_LATENCY:
            with fixed_length(sides, unused):
                for name in (ours, theirs):
                    sides[name].module.eval()
                profiles[f"answer {ours} vs {theirs}"] = {
                    name: top_ops(lambda name=name: sides[name].answer(questions[0], sizes.answer_tokens))
                    for name in (ours, theirs)}

    # -- peak memory, one subprocess per side ----------------------------------------------------
    setup_file, train_file = ctx.work / "setup.json", ctx.work / "train.json"
    setup.save(setup_file)
    train_file.write_text(json.dumps([[e.question, e.answers[0]] for e in ctx.train_examples[:2000]]))
    shared_index.store.close()
    sides.clear()  # free the models before the subprocesses run
    optimizers.clear()
    memory = peak_memory(ctx, setup_file, train_file)
    return {"setup": setup.__dict__ | {"train_questions": len(ctx.train_examples), "passages": len(ctx.rag_passages)},
            "rounds": sizes.speed_rounds, "steps_per_round": steps, "latency_questions_per_round": nq,
            "answer_tokens": sizes.answer_tokens, "training": training, "latency": latency, "memory": memory,
            "step_breakdown_s": step_breakdown, "answer_breakdown_s": answer_breakdown, "profiles": profiles}


def goals(res: dict) -> list[dict]:
    """Per reader: training throughput >= 1.5x theirs (issue 4), answer latency <= 0.5x theirs (issues 4, 14)."""
    out = []
    for ours, theirs in PAIRS:
        t, lr = res["training"][ours]["ratio"], res["latency"][ours]["ratio"]
        out += [goal(f"{LABELS[ours]} training examples/s vs {LABELS[theirs]} (>= {GOAL_TRAIN}x)", f"{t:.2f}x",
                     t >= GOAL_TRAIN),
                goal(f"{LABELS[ours]} answer latency vs {LABELS[theirs]}, {res['answer_tokens']} tokens "
                     f"(<= {GOAL_LATENCY}x)", f"{lr:.2f}x", lr <= GOAL_LATENCY)]
    return out


def report(res: dict) -> str:
    s, tr, la, mem = res["setup"], res["training"], res["latency"], res["memory"]
    rows = []
    for name in SIDES:
        ratio_t = f"**{tr[name]['ratio']:.2f}x**" if "ratio" in tr[name] else ""
        ratio_l = f"**{la[name]['ratio']:.2f}x**" if "ratio" in la[name] else ""
        rows.append([LABELS[name], num(tr[name]["examples_per_s"], 2), ratio_t, num(mem[name]["peak_rss_mb"]),
                     num(mem[name]["peak_rss_mb"] - mem[name]["rss_imports_mb"]), num(la[name]["p50_ms"]),
                     num(la[name]["p95_ms"]), ratio_l])
    out = [f"Question encoder DPR with all-MiniLM-L6-v2 weights, generator T5 (d_model 256, 4+4 layers) from a "
           f"config, {s['passages']:,} passages (Flat), n_docs {s['n_docs']}, batch {s['batch_size']}, "
           f"max source length {s['max_source_length']}, AdamW lr {s['learning_rate']}. Training: "
           f"{res['steps_per_round']} step(s) per side per round, {res['rounds']} alternating rounds; answers: "
           f"{res['latency_questions_per_round']} question(s) per side per round, greedy, exactly "
           f"{res['answer_tokens']} tokens. Ratios: ragloop over transformers in the same round (training: "
           "throughput, higher is better; answer: latency, lower is better), median over rounds. Peak RSS: each "
           "side alone in a subprocess; \"above imports\" = peak minus the RSS once torch, transformers, "
           "datasets and faiss are imported.\n",
           table(["implementation", "train ex/s", "speed-up", "peak RSS MiB", "above imports", "answer p50 ms",
                  "answer p95 ms", "latency ratio"], rows)]
    out.append("\n" + sentence(goals(res)))
    sb = res["step_breakdown_s"]
    keys = [k for k in next(iter(sb.values())) if k != "forward total"]
    out += ["\nWhere a training step goes (ms per step, stage timers on):\n",
            table(["stage", *(LABELS[n].replace("transformers ", "HF ") for n in SIDES)],
                  [[k, *(num(sb[n][k] * 1e3) for n in SIDES)] for k in keys])]
    ab = res["answer_breakdown_s"]
    keys = [k for k in next(iter(ab.values())) if k != "calls per answer"]
    rows = [[k, *(num(ab[n][k] * 1e3) for n in SIDES)] for k in keys]
    rows.append(["calls per answer: question encoder / T5 encoder / T5 decoder",
                 *(" / ".join(f"{v:g}" for v in ab[n]["calls per answer"].values()) for n in SIDES)])
    out += ["\nWhere one answer goes (ms per answer):\n",
            table(["stage", *(LABELS[n].replace("transformers ", "HF ") for n in SIDES)], rows)]
    for title, prof in res["profiles"].items():
        names = list(prof)
        rows = [[f"`{a[0]}`", num(a[1]), a[2], f"`{b[0]}`", num(b[1]), b[2]] for a, b in zip(*prof.values())]
        out += [f"\ntorch.profiler, {title} (top operators by self CPU time, one call):\n",
                table([names[0], "ms", "calls", names[1], "ms", "calls"], rows)]
    return "\n".join(out)


PLOTS: dict = {}
