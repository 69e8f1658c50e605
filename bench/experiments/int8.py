"""Experiment "int8": what int8 answering costs in F1 and buys in latency, per reader: the measurement
that decides `--quantize`'s default (issue 25: at most 1 point of F1 lost on >= 300 questions).

    python -m bench.experiments --only int8

Nothing trains. It loads the readers experiment's trained models (settings.models: each a reader name,
its folder and the decoding it is scored with, as the readers experiment scored it; the folders are
where that experiment keeps them, `<its settings.work>/<mode>-trained/best_model`). A folder that is
not there is skipped with a message (run `--only readers` first), never trained here.

Each model is loaded once per settings.precisions entry (null: fp32; "int8": `RAG.quantize("int8")`,
its LM head in fp32; "int8-lm-head": the LM head int8 too, for generative readers only: the span reader
has no LM head, so that entry is skipped for it) and scored with `evaluate_answers(model, examples,
"rag", k=settings.k)` on settings.questions held-out questions of the training articles and as many of
dev articles never trained on (`demo.eval_sets`), then timed: p50 ms of one-question `answer` calls on
settings.latency_questions dev questions after two warm-ups. Each row says the F1 it lost against the
reader's fp32 row, in points (x100; per set and over both sets' questions together), its speed-up
(fp32 p50 / its p50) and whether the loss over both sets is within settings.max_f1_loss_points.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from bench.experiments.pipeline import stamp, write_results
from bench.experiments.readers import WARMUP, answer_latency_ms, short
from bench.suite.tables import say, table

FP32 = "fp32"  # what a row's "precision" says for settings.precisions' null
ALL = "all"  # the scores over both sets' questions together


def load(folder: str | Path, constrain: str | None):
    """The RAG model in `folder` at full precision, decoding with `constrain` (None: free)."""
    from ragloop.model import RAG

    model = RAG.from_pretrained(folder)
    model.config = replace(model.config, constrain=constrain)
    return model


def score(model, sets: list[tuple[str, list]], k: int) -> dict[str, dict]:
    """{set name: {"f1", "em", "questions"}} of RAG answers, and ALL: both over every question."""
    from ragloop.evaluation import evaluate_answers

    out = {}
    for name, examples in sets:
        r = evaluate_answers(model, examples, "rag", k=k, progress=False)
        out[name] = {"f1": r["f1"], "em": r["em"], "questions": r["questions"]}
    n = sum(s["questions"] for s in out.values())
    out[ALL] = {m: round(sum(s[m] * s["questions"] for s in out.values()) / max(n, 1), 4) for m in ("f1", "em")}
    out[ALL]["questions"] = n
    return out


def measure(spec: dict, precision: str | None, sets: list, latency_qs: list[str], k: int) -> dict | None:
    """One row: `spec`'s model at `precision`, scored and timed; None when `precision` quantizes an LM
    head the reader does not have (the span reader)."""
    from ragloop.quantize import covers_lm_head

    model = load(spec["model"], spec.get("constrain"))
    if covers_lm_head(precision) and model.reader.extractive:
        say(f"  {spec['reader']}: no LM head, {precision} skipped")
        return None
    model.quantize(precision)
    start = time.perf_counter()
    scores = score(model, sets, k)
    row = {"reader": spec["reader"], "model": str(spec["model"]), "constrain": spec.get("constrain"),
           "precision": precision or FP32, "applied": model.quantization,
           "lm_head_quantized": model.generator.lm_head_quantized, "scores": scores,
           "eval_s": round(time.perf_counter() - start, 1), "answer_ms_p50": answer_latency_ms(model, latency_qs, k)}
    say(f"  {row['reader']}, {row['precision']}: F1 {scores[ALL]['f1']:.4f} over {scores[ALL]['questions']} "
        f"questions ({row['eval_s']} s), {row['answer_ms_p50']} ms/question p50")
    return row


def compare(rows: list[dict], max_loss: float) -> list[dict]:
    """Each row with what it lost against the first fp32 row (F1 points per set and ALL), its speed-up
    and "within": ALL's loss <= `max_loss` points. None for all three without an fp32 row."""
    base = next((r for r in rows if r["precision"] == FP32), None)
    for r in rows:
        if base is None:
            r.update(f1_lost_points=None, speedup=None, within=None)
            continue
        r["f1_lost_points"] = {s: round((base["scores"][s]["f1"] - r["scores"][s]["f1"]) * 100, 2) + 0.0
                               for s in r["scores"]}
        r["speedup"] = round(base["answer_ms_p50"] / r["answer_ms_p50"], 2)
        r["within"] = r["f1_lost_points"][ALL] <= max_loss
    return rows


def score_reader(spec: dict, precisions: list, sets: list, latency_qs: list[str], k: int,
                 max_loss: float = 1.0) -> list[dict]:
    """The rows of one reader (settings.models entry `spec`), one per precision it has, compared."""
    rows = [measure(spec, p, sets, latency_qs, k) for p in precisions]
    return compare([r for r in rows if r is not None], max_loss)


def markdown(res: dict) -> str:
    sets = res["sets"]
    head = ["reader", "precision", *[f"{s}: F1 (EM)" for s in sets],
            f"F1 lost vs fp32 (points, {res['questions_per_reader']} questions)", "ms/question p50",
            "speed-up vs fp32", f"within {res['max_f1_loss_points']:g} point"]
    rows = []
    for r in res["rows"]:
        lost = r["f1_lost_points"]
        rows.append([r["reader"], r["precision"] + (" (LM head int8)" if r["lm_head_quantized"] else ""),
                     *[f"{r['scores'][s]['f1']:.3f} ({r['scores'][s]['em']:.3f})" for s in sets],
                     "—" if lost is None else f"{lost[ALL]:+.2f}", r["answer_ms_p50"],
                     "—" if r["speedup"] is None else f"{r['speedup']:.2f}x",
                     "—" if r["within"] is None else ("yes" if r["within"] else "no")])
    return table(head, rows, left=2)


def run(exp, results: Path) -> None:
    from ragloop.cli import quiet_libraries
    from ragloop.model_io import CONFIG_FILE
    from ragloop.recipes import demo

    quiet_libraries()
    s = exp.settings
    k, max_loss = s["k"], s.get("max_f1_loss_points", 1.0)
    data = demo.load_data(exp.recipe())
    sets = [(short(name), examples) for name, examples in demo.eval_sets(data, s["questions"])]
    latency_qs = [e.question for e in demo.eval_sets(data, s["latency_questions"] + WARMUP)[1][1]]
    present = [m for m in s["models"] if (Path(m["model"]) / CONFIG_FILE).is_file()]
    missing = [m["reader"] for m in s["models"] if m not in present]
    for m in s["models"]:
        if m not in present:
            say(f"skipping {m['reader']}: no trained model in {m['model']} (python -m bench.experiments --only readers "
                "trains it there)")
    res = {**stamp(exp), "k": k, "sets": [name for name, _ in sets], "questions": s["questions"],
           "questions_per_reader": sum(len(examples) for _, examples in sets),
           "latency_questions": len(latency_qs) - WARMUP, "precisions": s["precisions"],
           "max_f1_loss_points": max_loss, "skipped_readers": missing, "rows": []}
    for spec in present:
        say(f"{spec['reader']} ({spec['model']}, decoding {spec.get('constrain') or 'free'}) ...")
        res["rows"].extend(score_reader(spec, s["precisions"], sets, latency_qs, k, max_loss))
        write_results(results, res)  # after every reader, so an interrupted run keeps what it measured
    write_results(results, res)
    print(markdown(res))
