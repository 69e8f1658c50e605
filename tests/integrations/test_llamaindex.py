"""The LlamaIndex adapter: `retrieve`/`aretrieve` give NodeWithScore/TextNode, best first, k of them, with the
passage's score, id, title and source in the metadata, for every way a ragloop Retriever searches."""

import asyncio

import pytest

pytest.importorskip("llama_index.core")
pytestmark = pytest.mark.usefixtures("one_thread")
QUESTION = "Which NFL team represented the AFC at Super Bowl 50?"  # the tiny index holds its paragraph

from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode  # noqa: E402

from ragloop import RagloopError  # noqa: E402
from ragloop.integrations.llamaindex import RagloopRetriever  # noqa: E402


def test_retrieve_gives_nodes_with_scores_and_metadata(ragloop_retriever):
    retriever = RagloopRetriever(ragloop_retriever, k=3)
    nodes = retriever.retrieve(QUESTION)
    hits = ragloop_retriever.search(QUESTION, k=3)[0]
    assert len(nodes) == 3 and all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes)
    for n, h in zip(nodes, hits):
        assert n.node.node_id == h.passage.id == n.node.metadata["id"]
        assert n.node.text == h.passage.text
        assert n.score == pytest.approx(h.score) == n.node.metadata["score"]
        assert (n.node.metadata["title"], n.node.metadata["source"]) == (h.passage.title, h.passage.source)
    assert [n.score for n in nodes] == sorted((n.score for n in nodes), reverse=True)
    # what an LLM reads: title, source and text, not the bookkeeping
    shown = nodes[0].node.get_content(metadata_mode=MetadataMode.LLM)
    assert hits[0].passage.title in shown and "row:" not in shown and "score:" not in shown


def test_aretrieve_agrees_and_k_and_mode_are_kept(index):
    from ragloop.retrieval.retriever import Retriever

    ragloop_retriever = Retriever(index, mode="bm25")
    retriever = RagloopRetriever(ragloop_retriever, k=2)
    sync = retriever.retrieve(QUESTION)
    assert [(n.node.node_id, n.score) for n in asyncio.run(retriever.aretrieve(QUESTION))] == \
        [(n.node.node_id, n.score) for n in sync]
    assert any("Broncos" in n.node.text for n in sync)
    for k in (1, 5):
        assert len(RagloopRetriever(ragloop_retriever, k=k).retrieve(QUESTION)) == k
    dense = RagloopRetriever(ragloop_retriever, k=4, mode="dense").retrieve(QUESTION)
    assert [n.node.node_id for n in dense] == [h.passage.id for h in ragloop_retriever.search(QUESTION, 4, "dense")[0]]


def test_from_index_and_bad_settings(index, tiny_ce_dir):
    retriever = RagloopRetriever.from_index(index.path, k=2, mode="bm25", rerank=str(tiny_ce_dir))
    assert retriever.retriever.reranker is not None and len(retriever.retrieve(QUESTION)) == 2
    with pytest.raises(RagloopError, match="k must be at least 1"):
        RagloopRetriever(retriever.retriever, k=0)
    with pytest.raises(RagloopError, match="retriever must be a ragloop Retriever"):
        RagloopRetriever("runs/idx")
