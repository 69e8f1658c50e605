"""`ragloop eval-retrieval`: hit@k, gold@k and mrr@10 of an index on QA data, per search mode.

    $ ragloop eval-retrieval runs/idx --data dev.json -k 1 5 20 --mode all
    $ ragloop eval-retrieval runs/idx --data dev.json --mode bm25 --run bm25.run   # a TREC run for trec_eval
"""

from __future__ import annotations

import argparse
import json

from ragloop.cli.loading import build_retriever
from ragloop.cli.options import (
    POSITIVE,
    HelpFormatter,
    add_cache_dir_option,
    add_data_options,
    add_quantize_option,
    add_search_options,
    progress,
)
from ragloop.cli.output import format_table
from ragloop.constants import SEARCH_MODES
from ragloop.errors import RagloopError


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("eval-retrieval", parents=[common], help="hit@k, gold@k, mrr@10 on QA data",
                       formatter_class=HelpFormatter)
    p.add_argument("index_dir", help="an index folder written by `ragloop index`")
    add_data_options(p)
    p.add_argument("-k", type=POSITIVE, nargs="+", default=[1, 5, 20], help="cut-offs for hit@k and gold@k")
    p.add_argument("--mode", choices=[*SEARCH_MODES, "all"], default="dense",
                   help="search mode to score; all: dense, bm25 and hybrid, one row each")
    p.add_argument("--limit", type=POSITIVE, help="only the first N questions")
    p.add_argument("--json", action="store_true", help="print one JSON object per mode")
    p.add_argument("--run", metavar="FILE", help="also write the rankings as a TREC run file "
                   "(qid Q0 docid rank score tag; tag ragloop-MODE) for trec_eval, ranx or pytrec_eval")
    add_cache_dir_option(p)
    add_search_options(p)
    add_quantize_option(p, "the question encoder and the reranker")
    p.set_defaults(func=run)


def run(args) -> None:
    from ragloop.data import load_qa
    from ragloop.evaluation import evaluate_retrieval

    if args.run and args.mode == "all":
        raise RagloopError("--run writes the run of one search mode; give --mode dense, bm25 or hybrid")
    examples = load_qa(args.data, split=args.split)
    if args.limit:
        examples = examples[: args.limit]
    retriever = build_retriever(args)
    modes = list(SEARCH_MODES) if args.mode == "all" else [args.mode]
    rankings = {} if args.run else None
    results = [evaluate_retrieval(retriever, examples, tuple(args.k), m, progress=progress(args), rankings=rankings)
               for m in modes]
    if rankings is not None:
        from ragloop.evaluation.files import write_trec_run

        write_trec_run(args.run, rankings, tag=f"ragloop-{args.mode}")
    if args.json:
        for r in results:
            print(json.dumps(r))
        return
    print(format_table(results))
    if results[0]["answers_not_in_context"]:
        print(f"note: {results[0]['answers_not_in_context']} of {results[0]['questions']} questions have no answer "
              "in their own context paragraph; hit@k cannot count them")
