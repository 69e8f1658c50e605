"""`ragloop demo`: the main job on the bundled data, offline, through `ragloop.recipes.demo`: index the
SQuAD train + dev contexts, train RAG on the train articles for the recipe's fixed number of steps,
score held-out questions and dev questions with retrieval, closed book and the gold paragraph, and
answer a few with their sources. This module prints; the pipeline's steps log.

    $ ragloop demo --out runs/demo                       # the pinned recipe (ragloop/recipes/demo.json)
    $ ragloop demo --recipe my.json --steps 50           # another recipe, fewer steps (said in the output)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ragloop.cli.options import POSITIVE, HelpFormatter, progress
from ragloop.cli.output import format_table, snippet

CONTEXT_LABELS = {"rag": "retrieved (RAG)", "closed-book": "none (closed book)",
                  "oracle": "the gold paragraph (oracle)"}


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="index, train, evaluate and answer on the bundled SQuAD data",
                       formatter_class=HelpFormatter)
    p.add_argument("--out", default="runs/demo", help="where the index and the model go (default runs/demo)")
    p.add_argument("--recipe", metavar="FILE",
                   help="a recipe file (JSON: models, k, learning rates, batch, steps, data; see "
                        "ragloop/recipes/demo.json; default: the pinned demo recipe)")
    p.add_argument("--steps", type=POSITIVE,
                   help="train this many steps instead of the recipe's (the output says the numbers are not the "
                        "recipe's; default: the recipe's)")
    p.add_argument("--questions", type=POSITIVE, help="questions to score in each held-out set (default: the "
                   "recipe's)")
    p.add_argument("--retrain", action="store_true",
                   help="train again even if --out holds a model trained with the same settings")
    p.set_defaults(func=run)


def run(args) -> None:
    import time

    from ragloop.model import RAG
    from ragloop.recipes import demo, load_recipe

    t_start = time.time()
    recipe = load_recipe(args.recipe)
    print(f"recipe: {recipe.path}", flush=True)
    out = Path(args.out)
    data = demo.load_data(recipe)
    files = demo.write_data(data, out / "data")
    index_dir = _index(args, recipe, data, out / "index")
    cfg = demo.train_config(recipe, files.train, index_dir, out / "rag", steps=args.steps)
    not_recipe = (f"--steps {cfg.max_steps}, not the recipe's {recipe.steps}: these are not the recipe's numbers"
                  if cfg.max_steps != recipe.steps else None)
    run_ = _train(args, recipe, data, files, cfg, not_recipe)
    model = RAG.from_pretrained(run_.best_dir)
    trained = f"{run_.steps} steps of {cfg.batch_size} in {run_.seconds / 60:.1f} min of training"
    _score(args, recipe, data, model, trained)
    _samples(recipe, data, model)
    print(f"\n{recipe.path.name}: {trained}" + (f" ({not_recipe})" if not_recipe else "")
          + f"; the demo took {(time.time() - t_start) / 60:.1f} min in all")


def _index(args, recipe, data, index_dir: Path) -> Path:
    """[1/4]: the index of the contexts (built once), and its retrieval table on dev questions."""
    from ragloop.recipes import demo

    if not demo.index_exists(index_dir):
        print(f"[1/4] indexing the contexts of {recipe.train_data.name} and {recipe.dev_data.name} ...", flush=True)
    demo.ensure_index(recipe, data, index_dir, progress=progress(args))
    table = demo.retrieval_table(recipe, data, index_dir)
    print(f"      {index_dir}; retrieval on {table[0]['questions']} dev questions:")
    print(format_table(table))
    return index_dir


def _train(args, recipe, data, files, cfg, not_recipe: str | None):
    """[2/4]: train the recipe's steps, or reuse a model trained earlier with the same settings."""
    from ragloop.recipes import demo

    run_ = None if args.retrain else demo.trained_earlier(cfg)
    if run_ is not None:
        print(f"\n[2/4] using the model trained earlier with these settings in {run_.best_dir} "
              "(--retrain to train again)")
        return run_
    print(f"\n[2/4] training {cfg.rag_mode} RAG on {len(data.train)} questions of {recipe.train_data.name} "
          f"(every {recipe.holdout_every}th held out: {files.heldout}) for {cfg.max_steps} steps, batch "
          f"{cfg.batch_size}, k={cfg.n_docs}, {cfg.precision} ...", flush=True)
    if not_recipe:
        print(f"      {not_recipe}", flush=True)
    run_ = demo.train_rag(cfg, progress=progress(args))
    print(f"      model saved to {run_.best_dir}")
    return run_


def _score(args, recipe, data, model, trained: str) -> None:
    """[3/4]: EM / F1 (and hit@k) of held-out and new-article questions, with each kind of context."""
    from ragloop.recipes import demo

    questions = args.questions or recipe.questions
    print(f"\n[3/4] answering {questions} held-out questions of the training articles and {questions} "
          f"questions of dev articles the model never trained on (model: {trained}) ...", flush=True)
    hit = f"hit@{model.config.n_docs}"
    print(f"| questions | passages read | EM | F1 | {hit} |\n|---|---|---|---|---|")
    for row in demo.score(model, demo.eval_sets(data, questions), progress=progress(args)):
        em, f1 = ("n/a", f"n/a ({row['not_applicable']})") if row["f1"] is None else (
            f"{row['em']:.3f}", f"{row['f1']:.3f}")
        print(f"| {row['set']} ({row['questions']}) | {CONTEXT_LABELS[row['context']]} | {em} | {f1} "
              f"| {row.get(hit, '')} |", flush=True)


def _samples(recipe, data, model) -> None:
    """[4/4]: a few answers with their sources."""
    from ragloop.recipes import demo

    if recipe.sample_answers:
        print("\n[4/4] sample answers with their sources:")
    for ex, ans in demo.sample_answers(model, data, recipe.sample_answers):
        print(f"\nQ: {ex.question}\nA: {ans.answer}    (gold: {ex.answers[0]})")
        for i, p in enumerate(ans.passages, 1):
            print(f"   [{i}] {p['title']} (score {p['score']:.2f}): {snippet(p['text'], p.get('copied'), 120)}")
