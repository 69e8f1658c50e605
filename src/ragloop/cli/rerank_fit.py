"""`ragloop rerank-fit`: fit a trained reranker's combination with the first stage on held-out questions.

    $ ragloop rerank-fit runs/reranker --data held_out.json           # rewrites runs/reranker/ragloop_reranker.json
    $ ragloop search runs/idx "who wrote hamlet?" --mode bm25 --rerank runs/reranker   # applies the bm25 one

Per first-stage mode (dense, bm25, hybrid) the weights of the reranker's score, the first stage's rank
and its score are fitted on the questions (ragloop/training/rerank_fit.py); a mode where no combination
beats the first stage keeps the first stage's order. The reranker's weights are not changed. Give
questions the reranker did not train on and that you will not evaluate on: fitting on the evaluation
questions would flatter the combination.
"""

from __future__ import annotations

import argparse

from ragloop.cli.options import POSITIVE, HelpFormatter, progress
from ragloop.cli.output import print_combinations
from ragloop.constants import DEFAULT_ENCODER, RERANK_DEPTH


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("rerank-fit", parents=[common], formatter_class=HelpFormatter,
                       help="fit a reranker folder's combination with the first stage on held-out questions")
    p.add_argument("reranker_dir", help="a reranker folder written by ragloop (train-reranker)")
    p.add_argument("--data", required=True, metavar="QA_FILE",
                   help="SQuAD-style file of held-out questions (searched in all its paragraphs)")
    p.add_argument("--limit", type=POSITIVE, default=300, help="questions used, spread over the file")
    p.add_argument("--depth", type=POSITIVE, default=RERANK_DEPTH, help="first-stage candidates reranked")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help="dense encoder of the dense and hybrid first stages")
    p.add_argument("--chunk-words", type=POSITIVE, default=100, help="words per passage, as the index chunks")
    p.set_defaults(func=run)


def run(args) -> None:
    from ragloop.retrieval.rerank_fusion import entries
    from ragloop.training.rerank_fit import refit_folder

    combos = refit_folder(args.reranker_dir, args.data, max_questions=args.limit, depth=args.depth,
                          chunk_words=args.chunk_words, encoder=args.encoder, progress=progress(args))
    print_combinations(entries(combos))
    print(f"saved in {args.reranker_dir}: `--rerank {args.reranker_dir}` applies it")

