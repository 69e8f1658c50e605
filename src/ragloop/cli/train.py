"""`ragloop train`: train RAG end to end (question encoder + generator); its flags are TrainConfig's fields.

    $ ragloop train --train_file train.jsonl --index runs/idx --output_dir runs/rag --max_steps 300
"""

from __future__ import annotations

import argparse
import os

from ragloop.cli.options import add_config_command, progress
from ragloop.config import TrainConfig, config_from_args


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    add_config_command(sub, common, "train", "train RAG end to end (question encoder + generator)", TrainConfig, run)


def run(args) -> None:
    cfg = config_from_args(args, TrainConfig)  # a bad value is refused here, before torch loads
    from ragloop.training import train

    result = train(cfg, progress=progress(args))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch, process 0 reports
        return
    best = f"{result.best_f1:.4f}" if result.best_f1 is not None else "n/a (no validation data)"
    print(f"trained {result.steps} steps; best dev F1 {best}; best model: {result.best_dir}; "
          f"last checkpoint: {result.last_dir}")
