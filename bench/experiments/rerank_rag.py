"""Experiment "rerank-rag": what reranked candidates do to the demo's reader's answers.

    python -m bench.experiments --only rerank-rag

The reader is the trained model in settings.model (default runs/demo/rag/best_model, what `make demo`
trains: the span reader, hybrid top 5); where that folder holds none, the experiment's recipe (the
demo's, recipes/readers.json) is trained into settings.work first (~17 min on 2 cores). The reranker is
settings.reranker, trained with `ragloop train-reranker` and settings.reranker_flags where missing
(the "rerank" experiment's reranker started from the demo's reader).

Scored on settings.questions questions of dev articles the reader and the reranker never trained on
(the reranker trains on the training articles, so their held-out questions would not be fair to it),
for each first stage in settings.stages: the model reading that stage's own top k, then the reranking
stage's top k of that stage's top settings.depth, as the reranker folder configures it per stage (its
cross-encoder order, its saved combination with the first stage's evidence, or the first stage's own
order where nothing beat it on held-out questions: the `rerank_use` column). Same model, no retraining.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bench.experiments.pipeline import prepare, stamp, write_results
from bench.experiments.rerank import ensure_reranker, rows_table
from bench.suite.tables import say


def trained_model(recipe, settings: dict) -> Path:
    """settings.model if it holds a trained RAG model, else the recipe trained into settings.work."""
    from ragloop.recipes import demo

    model = Path(settings["model"])
    if (model / "rag_config.json").is_file():
        return model
    say(f"no trained model in {model}: training the recipe into {settings['work']} ...")
    work = Path(settings["work"])
    prep = prepare(recipe, work)
    cfg = demo.train_config(recipe, prep.files.train, prep.index_dir, work / "rag")
    return demo.train_rag(replace(cfg, validation_file=str(prep.files.heldout)), progress=False).best_dir


def answers(model, reranker, examples: list, stages: list[str], depth: int) -> list[dict]:
    """One evaluate_answers row per (first stage, with or without the reranking stage)."""
    from ragloop.evaluation import evaluate_answers

    retriever, out = model.retriever, []
    for mode in stages:
        retriever.mode = mode
        for stage in (None, reranker):
            retriever.set_reranker(stage, depth if stage is not None else None)
            r = evaluate_answers(model, examples, "rag", progress=None)
            r.update(first_stage=mode, candidates=f"{mode} + rerank@{depth}" if stage is not None else mode,
                     rerank_use=retriever.rerank_use(mode) or "-")
            say(f"  {r['candidates']} ({r['rerank_use']}): F1 {r['f1']:.3f}")
            out.append(r)
    return out


def run(exp, results: Path) -> None:
    from ragloop.cli import quiet_libraries
    from ragloop.model import RAG
    from ragloop.recipes import demo
    from ragloop.retrieval.rerank import Reranker

    quiet_libraries()
    recipe, s = exp.recipe(), exp.settings
    ensure_reranker(s["reranker"], s.get("reranker_flags"))
    folder = trained_model(recipe, s)
    model = RAG.from_pretrained(folder)
    examples = demo.eval_sets(demo.load_data(recipe), s["questions"])[1][1]  # dev articles never trained on
    res = {**stamp(exp), "reranker": s["reranker"], "model": str(folder), "reader": model.config.mode,
           "k": model.config.n_docs, "set": demo.NEW_ARTICLES,
           "answers": answers(model, Reranker.from_pretrained(s["reranker"]), examples, s["stages"], s["depth"])}
    hit = f"hit@{model.config.n_docs}"
    print(rows_table(res["answers"], ["candidates", "rerank_use", "f1", "em", hit],
                     ["candidates", "reranking stage uses", "F1", "EM", hit]))
    write_results(results, res)
