"""The LangChain adapter: `invoke`/`ainvoke` give LangChain Documents, best first, k of them, with the
passage's score, id, title and source in the metadata, for every way a ragloop Retriever searches."""

import asyncio

import pytest

pytest.importorskip("langchain_core")
pytestmark = pytest.mark.usefixtures("one_thread")
QUESTION = "Which NFL team represented the AFC at Super Bowl 50?"  # the tiny index holds its paragraph

from langchain_core.documents import Document  # noqa: E402

from ragloop import RagloopError  # noqa: E402
from ragloop.integrations.langchain import RagloopRetriever  # noqa: E402


def test_invoke_gives_documents_with_metadata(ragloop_retriever):
    retriever = RagloopRetriever(retriever=ragloop_retriever, k=3)
    docs = retriever.invoke(QUESTION)
    hits = ragloop_retriever.search(QUESTION, k=3)[0]
    assert len(docs) == 3 and all(isinstance(d, Document) for d in docs)
    assert [d.page_content for d in docs] == [h.passage.text for h in hits]
    for d, h in zip(docs, hits):
        assert d.id == h.passage.id == d.metadata["id"]
        assert d.metadata["score"] == pytest.approx(h.score)
        assert (d.metadata["title"], d.metadata["source"]) == (h.passage.title, h.passage.source)
        assert d.metadata["source"].endswith("squad-dev-small.json")
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)


def test_ainvoke_and_batch_agree_with_invoke(index):
    from ragloop.retrieval.retriever import Retriever

    retriever = RagloopRetriever(retriever=Retriever(index, mode="bm25"), k=2)
    sync = retriever.invoke(QUESTION)
    assert asyncio.run(retriever.ainvoke(QUESTION)) == sync
    assert retriever.batch([QUESTION, "Where is Warsaw?"])[0] == sync
    assert any("Broncos" in d.page_content for d in sync)  # bm25 finds the answer's paragraph


def test_k_and_mode_per_retriever(index):
    from ragloop.retrieval.retriever import Retriever

    ragloop_retriever = Retriever(index, mode="dense")
    for k in (1, 5):
        assert len(RagloopRetriever(retriever=ragloop_retriever, k=k).invoke(QUESTION)) == k
    bm25 = RagloopRetriever(retriever=ragloop_retriever, k=4, mode="bm25").invoke(QUESTION)
    assert [d.id for d in bm25] == [h.passage.id for h in ragloop_retriever.search(QUESTION, 4, mode="bm25")[0]]


def test_from_index_and_bad_settings(index, tiny_ce_dir):
    retriever = RagloopRetriever.from_index(index.path, k=2, mode="hybrid", rerank=str(tiny_ce_dir))
    assert retriever.retriever.mode == "hybrid" and retriever.retriever.reranker is not None
    assert len(retriever.invoke(QUESTION)) == 2
    with pytest.raises(RagloopError, match="k must be at least 1"):
        RagloopRetriever(retriever=retriever.retriever, k=0)
    with pytest.raises(RagloopError, match="retriever must be a ragloop Retriever"):
        RagloopRetriever(retriever=index)
    with pytest.raises(RagloopError, match="holds 17 passages"):
        RagloopRetriever(retriever=retriever.retriever, k=18).invoke(QUESTION)
