"""The ragloop retrievers both framework adapters are tested over."""

import pytest


@pytest.fixture(params=["dense", "bm25", "hybrid", "reranked"])
def ragloop_retriever(request, index, tiny_ce_dir):
    """A ragloop Retriever over the tiny index in each of its ways of searching."""
    from ragloop.retrieval.retriever import Retriever

    if request.param == "reranked":
        return Retriever(index, mode="bm25", reranker=str(tiny_ce_dir), rerank_depth=6)
    return Retriever(index, mode=request.param)
