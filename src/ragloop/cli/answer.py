"""`ragloop answer`: answer questions with a trained RAG model, each with its sources.

    $ ragloop answer runs/rag/best_model "who wrote hamlet?" -k 3
"""

from __future__ import annotations

import argparse
import json

from ragloop.cli.loading import load_rag
from ragloop.cli.options import HelpFormatter, add_answer_options, add_cache_options, add_model_options
from ragloop.cli.output import from_source, snippet


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("answer", parents=[common], help="answer questions with their sources",
                       formatter_class=HelpFormatter)
    p.add_argument("model_dir", help="a RAG model folder written by `ragloop train` (e.g. runs/rag/best_model)")
    p.add_argument("question", nargs="+", help="one or more questions, each quoted")
    p.add_argument("--index", help="search this index instead of the model's own")
    add_answer_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per question")
    add_model_options(p, add_cache_options)
    p.set_defaults(func=run)


def run(args) -> None:
    model = load_rag(args)
    answers = model.answer(args.question, k=args.k, num_beams=args.num_beams)
    for ans in answers:
        if args.json:
            print(json.dumps(ans.to_dict()))
            continue
        print(f"Q: {ans.question}\nA: {ans.answer}")
        if not ans.passages:
            print("  (no passages found)")
        for i, p in enumerate(ans.passages, 1):
            print(f"  [{i}] {p['title']} ({p['id']}{from_source(p.get('source', ''))}, score {p['score']:.3f}): "
                  f"{snippet(p['text'], p.get('copied'))}")
