"""Experiment "rerank-rag": what reranked candidates do to a trained RAG model's answers, and the
training curves the README shows.

    python -m bench.experiments --only rerank-rag

Trains recipes/rerank.json (the demo's data, RAG-Sequence, k=2, a fixed 150 steps) through the demo
pipeline into settings.work, with settings.curve_questions held-out questions scored every
settings.curve_every steps (the curves: <work>/rag/metrics.png). Then scores evaluate.questions
held-out questions of the training articles and as many of dev articles, the model reading its own
dense top k and then the reranker's (settings.reranker, which the "rerank" experiment trains; depth
settings.depth): no retraining, the same model with other candidates.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bench.experiments.pipeline import prepare, stamp, write_results
from bench.experiments.rerank import ensure_reranker, rows_table
from bench.suite.tables import say


def answers(model, reranker, sets: list, depth: int) -> list[dict]:
    from ragloop.evaluation import evaluate_answers

    first = model.retriever.describe()["mode"]
    out = []
    for stage in (None, reranker):
        model.retriever.set_reranker(stage, depth if stage is not None else None)
        for name, examples in sets:
            r = evaluate_answers(model, examples, "rag", progress=None)
            r.update(set=name, candidates=f"{first} + rerank@{depth}" if stage is not None else first)
            say(f"  {r['candidates']}, {name}: F1 {r['f1']:.3f}")
            out.append(r)
    return out


def run(exp, results: Path) -> None:
    from ragloop.model import RAG
    from ragloop.recipes import demo
    from ragloop.retrieval.rerank import Reranker

    recipe, s = exp.recipe(), exp.settings
    work = Path(s["work"])
    ensure_reranker(s["reranker"])
    prep = prepare(recipe, work)
    cfg = demo.train_config(recipe, prep.files.train, prep.index_dir, work / "rag")
    run = demo.train_rag(replace(cfg, validation_file=str(prep.files.heldout), max_eval_examples=s["curve_questions"],
                                 eval_steps=s["curve_every"]), progress=False)
    model = RAG.from_pretrained(run.best_dir)
    res = {**stamp(exp), "reranker": s["reranker"], "model": str(run.best_dir), "steps": run.steps,
           "answers": answers(model, Reranker.from_pretrained(s["reranker"]),
                              demo.eval_sets(prep.data, recipe.questions), s["depth"])}
    print(rows_table(res["answers"], ["candidates", "set", "f1", "em"], ["candidates", "questions", "F1", "EM"]))
    write_results(results, res)
