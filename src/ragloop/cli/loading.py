"""What the commands build from their flags: the retrieval cache, a Retriever over an index, a trained
RAG model with the reranker, cache and precision asked for. Imports torch only when called.

    >>> retriever = build_retriever(args)     # search, eval-retrieval: --encoder, --fusion, --rerank ...
    >>> model = load_rag(args)                # eval, answer: --index, --rerank, --cache-*, --constrain, --quantize, -k
"""

from __future__ import annotations

from ragloop.constants import CACHE_MAX_ENTRIES


def build_cache(args):
    """The retrieval cache the command's flags ask for: on disk (`--cache-dir`), in memory (`answer`,
    `serve`: on unless `--no-cache`), or None."""
    cache_dir, size = getattr(args, "cache_dir", None), getattr(args, "cache_size", None)
    if getattr(args, "no_cache", False) or (cache_dir is None and size is None):
        return None
    from ragloop.retrieval.cache import RetrievalCache

    return RetrievalCache(max_entries=CACHE_MAX_ENTRIES if size is None else size, directory=cache_dir)


def build_retriever(args):
    """A Retriever over `args.index_dir` with the search, rerank, cache and quantize flags."""
    from ragloop.retrieval import Retriever

    return Retriever.from_index(args.index_dir, encoder=args.encoder, fusion=args.fusion, weight=args.weight,
                                rerank=args.rerank, rerank_depth=args.rerank_depth, cache=build_cache(args),
                                quantize=args.quantize)


def load_rag(args):
    """`args.model_dir` as a RAG model, searching `--index` if given, with the rerank, cache,
    --constrain and quantize flags applied and -k checked against the index."""
    from ragloop.model import RAG
    from ragloop.retrieval import Index

    index = Index.load(args.index) if getattr(args, "index", None) else None  # a bad --index: before the model loads
    try:
        model = RAG.from_pretrained(args.model_dir)
    except BaseException:
        if index is not None:
            index.close()
        raise
    if index is not None:
        model.index = index  # checked against the model's question encoder
    if args.rerank or args.rerank_depth:  # another reranker, or another depth for the model's own
        model.retriever.set_reranker(args.rerank or model.retriever.reranker, args.rerank_depth)
    model.retriever.cache = build_cache(args)
    if getattr(args, "constrain", None):  # answers held to the passages, or not, whatever the model was saved with
        from dataclasses import replace

        model.config = replace(model.config, constrain=args.constrain)  # the config reads "none" as None
    if getattr(args, "k", None) is not None:
        from ragloop.retrieval.retriever import check_k

        check_k(args.k, len(model.index), model.index.path)  # k=10**7: one clear error, not a huge allocation
    return model.quantize(args.quantize)
