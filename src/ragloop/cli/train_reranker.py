"""`ragloop train-reranker`: fine-tune a cross-encoder reranker on QA data; flags from RerankerTrainConfig.

    $ ragloop train-reranker --output_dir runs/reranker          # every bundled training question
    $ ragloop train-reranker --train_file train.jsonl --loss bce --negative_sources hybrid,random
    $ ragloop search runs/idx "who wrote hamlet?" --rerank runs/reranker      # then rerank with it
"""

from __future__ import annotations

import argparse

from ragloop.cli.options import add_config_command, progress
from ragloop.cli.output import print_combinations, report_training
from ragloop.config import RerankerTrainConfig, config_from_args


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    add_config_command(sub, common, "train-reranker",
                       "fine-tune a cross-encoder reranker on QA data (negatives from BM25, dense, hybrid or "
                       "random; the checkpoint chosen on held-out articles)",
                       RerankerTrainConfig, run)


def run(args) -> None:
    cfg = config_from_args(args, RerankerTrainConfig)  # a bad value is refused here, before torch loads
    from ragloop.training.reranker_trainer import train_reranker

    result = train_reranker(cfg, progress=progress(args))
    report_training(result, f" ({result['seconds_per_step']:.2f}s a step, after {result['data_seconds']:.0f}s finding "
                            "negatives)", lambda v: f"{v['questions']} questions, BM25 top {v['candidates']}")
    held = result["heldout"]
    if held and held["best"]:
        b = held["best"]
        n = len(held["articles"])
        print(f"held out ({n} article{'s' * (n != 1)}, {held['scored_questions']} questions, BM25 top "
              f"{held['candidates']}): BM25 gold@1 {b['gold@1']} mrr@10 {b['mrr@10']}; reranked gold@1 "
              f"{b['reranked gold@1']} mrr@10 {b['reranked mrr@10']} (step {b['step']}, saved)")
    if result["combination"]:
        print_combinations(result["combination"])
    print(f"reranker: {result['output_dir']} (Reranker.from_pretrained({result['output_dir']!r}))")
