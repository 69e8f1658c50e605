"""`ragloop train-retriever`: fine-tune the retrieval encoder(s) on QA data; flags from RetrieverTrainConfig.

    $ ragloop train-retriever --train_file train.jsonl --output_dir runs/retriever

It prints where the encoder(s) went and the `ragloop index` command that indexes with them.
"""

from __future__ import annotations

import argparse

from ragloop.cli.options import add_config_command, progress
from ragloop.cli.output import report_training
from ragloop.config import RetrieverTrainConfig, config_from_args


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    # the trainers import torch: registered here from their configs, so `--help` stays light
    add_config_command(sub, common, "train-retriever",
                       "fine-tune the retrieval encoder(s) on QA data (in-batch + BM25 hard negatives)",
                       RetrieverTrainConfig, run)


def run(args) -> None:
    cfg = config_from_args(args, RetrieverTrainConfig)  # a bad value is refused here, before torch loads
    from ragloop.training.retriever_trainer import train_retriever

    result = train_retriever(cfg, progress=progress(args))
    report_training(result, "", "dense")
    print(_how_to_index(result))


def _how_to_index(result: dict) -> str:
    """Where the trained encoder(s) went, and the `ragloop index` command that uses them."""
    if result["shared"]:
        return (f"encoder: {result['output_dir']}\n"
                f"index with: ragloop index CORPUS --out INDEX --encoder {result['output_dir']}")
    return (f"encoders: {result['question_encoder']}, {result['passage_encoder']}\n"
            f"index with: ragloop index CORPUS --out INDEX --encoder {result['passage_encoder']} "
            f"--question-encoder {result['question_encoder']}")
