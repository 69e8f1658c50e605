#!/usr/bin/env bash
# What reranked candidates do to a trained RAG model's answers, and the training curves the README shows.
# Trains the demo's recipe for a fixed 150 steps (not a time budget), then scores 100 held-out questions
# of the training articles and 100 questions of dev articles, with and without the reranker
# (runs/reranker, from `ragloop train-reranker --output_dir runs/reranker`). About 15 min on 2 cores.
#   bash bench/bench_rerank_rag.sh        -> bench/results/rerank-rag.json, runs/rr-demo/rag/metrics.png
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/rr-demo
mkdir -p $OUT/data
python3 - <<'PY'
from pathlib import Path

from ragloop.cli import split_heldout, write_qa_jsonl
from ragloop.data import load_qa
from ragloop.data.bundled import SQUAD_TRAIN, bundled_path

train, held = split_heldout(load_qa(bundled_path(SQUAD_TRAIN)))  # the demo's split: every 5th question held out
write_qa_jsonl(Path("runs/rr-demo/data/train.jsonl"), train)
write_qa_jsonl(Path("runs/rr-demo/data/heldout.jsonl"), held)
PY
ragloop -q index src/ragloop/_bundled/squad-v1.1-train.first12articles.json \
    src/ragloop/_bundled/squad-v1.1-dev.articles-00-31.json --out $OUT/index
ragloop -q train --train_file $OUT/data/train.jsonl --validation_file $OUT/data/heldout.jsonl \
    --max_eval_examples 50 --eval_steps 50 --index $OUT/index --n_docs 2 --batch_size 8 --learning_rate 1e-4 \
    --question_encoder_lr 1e-5 --warmup_steps 50 --max_source_length 192 --logging_steps 10 --max_steps 150 \
    --output_dir $OUT/rag
python3 bench/bench_rerank.py --reranker runs/reranker --rag $OUT/rag/best_model --skip quality,cost \
    --rag-questions 100 --out bench/results/rerank-rag.json
