"""Facts shared across layers, each written once: modes, defaults, scales and sizes. A leaf: it imports
nothing, so the CLI can offer choices and defaults without importing torch.

    >>> from ragloop.constants import READER_MODES, SEARCH_MODES, score_scale
    >>> list(READER_MODES)
    ['sequence', 'token', 'fid', 'span']
    >>> score_scale(normalized=True)
    20.0
"""

from __future__ import annotations

# -- models: the offline defaults, loaded by name (`bundled:` names ship in the ragloop package) ---------
DEFAULT_ENCODER = "bundled:all-MiniLM-L6-v2"
BUNDLED_GENERATOR = "bundled:minilm-bert2bert"
DEFAULT_GENERATOR = BUNDLED_GENERATOR

# -- retrieval -------------------------------------------------------------------------------------
SEARCH_MODES = ("dense", "bm25", "hybrid")  # the first stages: FAISS, BM25, or both fused
FUSION_DEPTH = 100  # each list hybrid fuses is at least this deep
RERANK_DEPTH = 20  # first-stage candidates a reranker rescores, unless told otherwise
DEFAULT_SEARCH_K = 5  # passages a search returns when k is not given (all of them, from a smaller index)


def reads_question_vectors(mode: str, pad_with_dense: bool = False) -> bool:
    """Whether a search in `mode` needs the questions' dense vectors (so a question encoder): every mode
    but BM25, and BM25 too when the lists it leaves short are padded with dense rows."""
    return mode != "bm25" or pad_with_dense


# -- index builds ----------------------------------------------------------------------------------
INDEX_CHUNK_SIZE = 4096  # passages an index build encodes, stores and adds to FAISS at a time
INDEX_REFINE_FACTOR = 8  # refine "disk": FAISS candidates re-scored exactly per result wanted

# -- readers: how the generator reads its k passages (the keys of `ragloop.generation.readers.READERS`) --
READER_MODES = {
    "sequence": "RAG-Sequence: one passage for the whole answer, marginalised over the k",
    "token": "RAG-Token: the passage may change at every answer token",
    "fid": "Fusion-in-Decoder: the k passages encoded apart, read together by one decoder pass; the question "
           "encoder learns by distilling the reader's per-passage likelihood",
    "span": "extractive span reader (DPR's reader, REALM): an encoder scores answer spans and passages; the "
            "answer is the best span of the k passages, trained by the marginal over passages and gold spans",
}
# What answers may be held to (`RAGConfig.constrain`, generation/constrain.py); None: nothing.
# spans: only token sequences that occur in the question's k passages.
ANSWER_CONSTRAINTS = ("spans",)
PRUNE_MASS = 0.1  # greedy RAG-Token: the most p(z|x) of passages left out while a bound proves them idle

# -- scores ----------------------------------------------------------------------------------------
# Multiplier on q·d before a softmax over passages: L2-normalised encoders give cosines in [-1, 1], which
# would make the softmax near-uniform; raw inner products (DPR) are already spread out.
NORMALIZED_SCORE_SCALE = 20.0


def score_scale(normalized: bool, given: float | None = None) -> float:
    """The similarity scale (1 / temperature): `given` if set, else 20 for normalised embeddings, else 1."""
    if given is not None:
        return float(given)
    return NORMALIZED_SCORE_SCALE if normalized else 1.0


# -- caches ----------------------------------------------------------------------------------------
CACHE_MAX_ENTRIES = 4096  # a question cache's default bound in entries ...
CACHE_MAX_BYTES = 64 << 20  # ... and in bytes

# Passages whose token ids a generator keeps (generation/inputs.py), least recently used dropped first: a
# long-running server reads ever new passages. ~5 KB an entry at 128 tokens, so at most ~40 MB.
PASSAGE_TOKEN_CACHE_ENTRIES = 8192
