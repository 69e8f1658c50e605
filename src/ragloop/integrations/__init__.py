"""ragloop's indexes as retrievers of other frameworks (optional extras; nothing in ragloop imports these):

    $ pip install 'ragloop[langchain]'       # langchain.py: a LangChain `BaseRetriever` of `Document`s
    $ pip install 'ragloop[llamaindex]'      # llamaindex.py: a LlamaIndex `BaseRetriever` of `NodeWithScore`s

    >>> from ragloop.integrations.langchain import RagloopRetriever
    >>> RagloopRetriever.from_index("runs/idx", k=5, mode="hybrid").invoke("who won Super Bowl 50?")

Both wrap a ragloop `Retriever` (dense, BM25, hybrid, reranked: whatever it is set to do) and put a
passage's score, id, title, source, doc_id and row in the metadata. `import ragloop` never imports
LangChain or LlamaIndex; importing an adapter without its framework is one RagloopError naming the extra.
"""
