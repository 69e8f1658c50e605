"""`ragloop search`: one question against an index, dense, BM25 or hybrid, optionally reranked.

    $ ragloop search runs/idx "who wrote hamlet?" -k 3 --mode hybrid --json
"""

from __future__ import annotations

import argparse
import json

from ragloop.cli.loading import build_retriever
from ragloop.cli.options import POSITIVE, HelpFormatter, add_quantize_option, add_search_options
from ragloop.cli.output import from_source
from ragloop.constants import DEFAULT_SEARCH_K, SEARCH_MODES, reads_question_vectors


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("search", parents=[common], help="search an index", formatter_class=HelpFormatter)
    p.add_argument("index_dir", help="an index folder written by `ragloop index`")
    p.add_argument("question", help="the question to search for")
    p.add_argument("-k", type=POSITIVE, help=f"passages to show; left out, all of an index smaller than "
                   f"{DEFAULT_SEARCH_K} (default: {DEFAULT_SEARCH_K})")
    p.add_argument("--mode", choices=SEARCH_MODES, default="dense",
                   help="dense: question encoder + FAISS; bm25: shared words, no model loaded; hybrid: both, fused")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_search_options(p)
    add_quantize_option(p, "the question encoder and the reranker")
    p.set_defaults(func=run)


def run(args) -> None:
    retriever = build_retriever(args)
    hits = retriever.search([args.question], k=args.k, mode=args.mode)[0]
    if args.json:
        quantized = {"quantize": args.quantize} if args.quantize and reads_question_vectors(args.mode) else {}
        if retriever.reranker is not None and retriever.reranker.quantization:
            quantized["rerank_quantize"] = retriever.reranker.quantization
        print(json.dumps({"question": args.question, "mode": args.mode, **quantized,
                          "hits": [h.to_dict() for h in hits]}))
        return
    if not hits:
        print(f"no passages found for {args.question!r} in {args.index_dir} ({args.mode} search)")
        return
    for rank, h in enumerate(hits, 1):
        text = h.passage.text if len(h.passage.text) <= 300 else h.passage.text[:297] + "..."
        print(f"{rank}. [{h.score:.4f}] {h.passage.title} ({h.passage.id}{from_source(h.passage.source)})\n   {text}")
