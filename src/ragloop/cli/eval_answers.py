"""`ragloop eval` (eval_answers.py): EM/F1 of a trained RAG model on QA data, with retrieved passages, none (closed
book) or the question's own paragraph (oracle).

    $ ragloop eval runs/rag/best_model --data dev.json --limit 100 --json
    $ ragloop eval runs/rag/best_model --data dev.json --predictions preds.json   # for SQuAD's evaluate-v1.1.py
"""

from __future__ import annotations

import argparse
import json
import sys

from ragloop.cli.loading import load_rag
from ragloop.cli.options import (
    POSITIVE,
    HelpFormatter,
    add_answer_options,
    add_cache_dir_option,
    add_data_options,
    add_model_options,
    progress,
)
from ragloop.errors import RagloopError


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("eval", parents=[common], help="EM/F1 of a trained RAG model on QA data",
                       formatter_class=HelpFormatter)
    p.add_argument("model_dir", help="a folder written by training (e.g. runs/rag/best_model)")
    add_data_options(p)
    p.add_argument("--index", help="search this index instead of the model's own (same passage encoder)")
    add_answer_options(p)
    p.add_argument("--limit", type=POSITIVE, help="only the first N questions")
    p.add_argument("--closed-book", action="store_true", help="answer without passages")
    p.add_argument("--oracle", action="store_true", help="answer from the question's own paragraph")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--predictions", metavar="FILE",
                   help="also write {question id: answer} JSON, as the official SQuAD v1.1 evaluate script reads it")
    add_model_options(p, add_cache_dir_option)
    p.set_defaults(func=run)


def run(args) -> None:
    from ragloop.data import load_qa
    from ragloop.evaluation import evaluate_answers
    from ragloop.evaluation.answers import check_answer_args

    if args.closed_book and args.oracle:
        raise RagloopError("choose one of --closed-book and --oracle")
    examples = load_qa(args.data, split=args.split)
    if args.limit:
        examples = examples[: args.limit]
    context = "closed-book" if args.closed_book else "oracle" if args.oracle else "rag"
    check_answer_args(examples, context, args.k)  # before the model loads: a bad file fails in a second
    model = load_rag(args)
    predictions = {} if args.predictions else None
    result = evaluate_answers(model, examples, context, k=args.k, num_beams=args.num_beams, progress=progress(args),
                              predictions=predictions)
    if predictions is not None and "not_applicable" in result:
        print(f"ragloop: note: --predictions: nothing written ({result['not_applicable']})", file=sys.stderr)
    elif predictions is not None:
        from ragloop.evaluation.files import write_predictions

        write_predictions(args.predictions, predictions)
    if args.json:
        print(json.dumps(result))
    else:
        print(" ".join(f"{key}={value}" for key, value in result.items()))
