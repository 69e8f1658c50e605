"""Compressed indexes that keep their recall: OPQ, fast-scan PQ, and re-ranking from exact vectors on disk."""

import json

import numpy as np
import pytest

from ragloop import Index, Passage, RagloopError
from ragloop.retrieval.settings import IndexSettings

DIM, K = 32, 10


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 20 centres: structure PQ can learn, ties practically impossible."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM))
    x = centres[rng.integers(0, 20, n)] + 0.6 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fake_passages(n: int) -> list[Passage]:
    return [Passage(id=f"p{i}", title=f"t{i}", text=f"passage {i}", doc_id=f"d{i}") for i in range(n)]


ENCODER = {side: {"name": "synthetic", "dim": DIM, "probe": [0.0] * DIM} for side in ("passage", "question")}


def build(tmp_path, vectors, factory, refine=None, name="i", nprobe=16):
    settings = IndexSettings(factory=factory, search_params={"nprobe": nprobe}, with_bm25=False, **(refine or {}))
    return Index.from_vectors(fake_passages(len(vectors)), vectors, ENCODER, tmp_path / name, settings)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


@pytest.fixture(scope="module")
def data():
    vectors, queries = clustered(2000), clustered(50, seed=1)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :K]
    return vectors, queries, exact


def test_refine_recovers_the_exact_top_k(tmp_path, data):
    vectors, queries, exact = data
    plain = build(tmp_path, vectors, "IVF16,PQ4x4", name="plain")
    refined = build(tmp_path, vectors, "IVF16,PQ4x4", dict(refine="disk", refine_factor=4), name="refined")
    everything = build(tmp_path, vectors, "IVF16,PQ4x4", dict(refine="disk", refine_factor=len(vectors) // K),
                       name="all")
    r_plain = recall(plain.search(queries, K)[1], exact)
    r_refined = recall(refined.search(queries, K)[1], exact)
    assert r_plain < 0.7 and r_refined > r_plain + 0.2  # 16 bits a vector is crude; re-scoring 40 fixes much
    # all 16 lists probed and every row re-scored: exactly Flat's top 10, with exact scores
    scores, rows = everything.search(queries, K)
    assert (rows == exact).all()
    assert np.allclose(scores, np.take_along_axis(queries @ vectors.T, exact, axis=1), atol=1e-5)


def test_refined_vectors_are_exact_and_the_manifest_records_refine(tmp_path, data):
    vectors, queries, _ = data
    index = build(tmp_path, vectors, "IVF16,PQ4x4", dict(refine="disk", refine_factor=4))
    rows = np.array([[0, 5, 1999], [7, 7, 3]])
    assert np.array_equal(index.vectors(rows), vectors[rows])  # float32 on disk: bit for bit
    assert index.manifest["index"]["refine"] == {"kind": "disk", "factor": 4, "dtype": "float32",
                                                 "file": "vectors.npy"}
    assert "vectors.npy" in index.manifest["files"]
    assert isinstance(index.backend.exact, np.memmap)  # on disk, not a copy in RAM
    assert not build(tmp_path, vectors, "IVF16,PQ4x4", name="plain").refine
    assert not (tmp_path / "plain" / "vectors.npy").exists()  # the build's vectors file is not kept
    half = build(tmp_path, vectors, "IVF16,PQ4x4", dict(refine="disk", refine_factor=4, refine_dtype="float16"),
                 name="half")
    assert half.backend.exact.dtype == np.float16 and half.vectors(rows).dtype == np.float32
    assert np.allclose(half.vectors(rows), vectors[rows], atol=1e-3)
    assert (tmp_path / "half" / "vectors.npy").stat().st_size < (tmp_path / "i" / "vectors.npy").stat().st_size * 0.6


def test_rows_past_a_small_index_stay_minus_one(tmp_path, data):
    index = build(tmp_path, data[0][:300], "IVF4,PQ4x4", dict(refine="disk", refine_factor=2))
    scores, rows = index.search(data[1][:3], 400)
    assert (rows[:, :300] >= 0).all() and (rows[:, 300:] == -1).all()
    assert all(len(set(r[:300])) == 300 for r in rows)  # every row once
    assert (np.diff(scores[:, :300], axis=1) <= 0).all()


@pytest.mark.parametrize("truncate_to", [50, -100])
def test_truncated_vectors_file_is_a_clear_error_at_load(tmp_path, data, truncate_to):
    build(tmp_path, data[0][:300], "IVF4,PQ4x4", dict(refine="disk", refine_factor=2))
    f = tmp_path / "i" / "vectors.npy"
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(truncate_to if truncate_to > 0 else size + truncate_to)
    for verify in ("fast", "full", "size"):
        with pytest.raises(RagloopError, match=r"vectors\.npy: does not match the checksum"):
            Index.load(tmp_path / "i", verify=verify)
    # a manifest that lost track of the file: the vectors file itself is checked against the index
    meta = json.loads((tmp_path / "i" / "manifest.json").read_text())
    del meta["files"]["vectors.npy"]
    (tmp_path / "i" / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(RagloopError, match=r"vectors\.npy: (truncated|not a readable vectors file)"):
        Index.load(tmp_path / "i")


@pytest.mark.parametrize("factory", ["OPQ4,IVF4,PQ4x4", "IVF4,PQ8x4fs", "OPQ8,IVF4,PQ8x4fs", "PQ8x4fs"])
@pytest.mark.parametrize("refine", [None, "disk"])
def test_opq_and_fast_scan_build_search_and_return_vectors(tmp_path, data, factory, refine):
    vectors, queries, exact = data
    index = build(tmp_path, vectors[:600], factory, dict(refine=refine, refine_factor=8))
    loaded = Index.load(tmp_path / "i")
    assert loaded.factory == factory
    scores, rows = loaded.search(queries, K)
    assert (rows >= 0).all() and (np.diff(scores, axis=1) <= 1e-6).all()
    exact600 = np.argsort(-(queries @ vectors[:600].T), axis=1)[:, :K]
    assert recall(rows, exact600) > (0.75 if refine else 0.1)  # random rows: 0.017
    assert len(index) == 600
    if not refine and "fs" in factory:  # FAISS cannot reconstruct fast-scan codes read from disk
        with pytest.raises(RagloopError, match="fast-scan.*cannot return its stored vectors.*--refine disk"):
            loaded.vectors(rows[:2])
        return
    stored = loaded.vectors(rows[:2])
    assert stored.shape == (2, K, DIM)
    if refine:
        assert np.array_equal(stored, vectors[rows[:2]])
    else:  # decoded codes: close to the vectors they encode
        cos = np.sum(stored * vectors[rows[:2]], axis=-1)
        assert cos.min() > 0.5


def test_bad_refine_options_are_clear_errors():
    with pytest.raises(RagloopError, match="--refine must be one of"):
        IndexSettings(refine="ram")
    with pytest.raises(RagloopError, match="--refine-factor"):
        IndexSettings(refine="disk", refine_factor=0)
    with pytest.raises(RagloopError, match="--refine-dtype"):
        IndexSettings(refine="disk", refine_factor=4, refine_dtype="int8")
    assert IndexSettings(refine="none").refine_entry() is None


@pytest.fixture
def corpus(passages):
    return passages


def test_add_to_a_refined_index_keeps_vectors_in_step(tmp_path, corpus, encoder):
    index = Index.build(corpus[:10], encoder, tmp_path / "i", factory="IVF2,Flat", refine="disk",
                        refine_factor=4, with_bm25=False, chunk_size=4)
    assert index.add(corpus[8:], encoder) == len(corpus) - 10
    reloaded = Index.load(tmp_path / "i", verify="full")
    assert len(reloaded) == len(corpus) == np.load(tmp_path / "i" / "vectors.npy", mmap_mode="r").shape[0]
    titles, texts = [p.title for p in corpus[10:]], [p.text for p in corpus[10:]]
    fresh = encoder.encode_passages(titles, texts, progress=False)
    assert np.allclose(reloaded.vectors(np.arange(10, len(corpus))), fresh, atol=1e-5)
    rows = reloaded.search(fresh, 1)[1][:, 0]
    assert (rows == np.arange(10, len(corpus))).all()  # each added passage finds itself first
    # rebuilding with the recorded options (what RAG.save_pretrained does after re-encoding) keeps them
    again = Index.build(reloaded.store, encoder, tmp_path / "again", progress=False, **reloaded.build_options())
    assert again.manifest["index"] == reloaded.manifest["index"] and len(again) == len(corpus)

