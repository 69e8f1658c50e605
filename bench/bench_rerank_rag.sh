#!/usr/bin/env bash
# What reranked candidates do to a trained RAG model's answers, and the training curves the README shows.
# Trains the demo's pinned recipe (as RAG-Sequence, k=2) through its pipeline (ragloop.recipes.demo) for a
# fixed 150 steps instead of the recipe's own, then scores 100 held-out questions of the training articles and
# 100 questions of dev articles, with and without the reranker
# (runs/reranker, from `ragloop train-reranker --output_dir runs/reranker`). About 15 min on 2 cores.
#   bash bench/bench_rerank_rag.sh        -> bench/results/rerank-rag.json, runs/rr-demo/rag/metrics.png
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
from dataclasses import replace

from ragloop.recipes import demo, load_recipe

out = "runs/rr-demo"
# the demo's pinned recipe and split (every 5th question of each article held out), with the reader the README's
# table was measured with: RAG-Sequence reading k=2 (the recipe now reads k=5 with FiD)
recipe = load_recipe().with_train(rag_mode="sequence", n_docs=2, warmup_steps=50)
data = demo.load_data(recipe)
files = demo.write_data(data, f"{out}/data")
demo.ensure_index(recipe, data, f"{out}/index", progress=False)
cfg = demo.train_config(recipe, files.train, f"{out}/index", f"{out}/rag", steps=150)
# the curves: 50 held-out questions scored every 50 steps, the loss every 10
demo.train_rag(replace(cfg, validation_file=str(files.heldout), max_eval_examples=50, eval_steps=50,
                       logging_steps=10), progress=False)
PY
python3 bench/bench_rerank.py --reranker runs/reranker --rag runs/rr-demo/rag/best_model --skip quality,cost \
    --rag-questions 100 --out bench/results/rerank-rag.json
