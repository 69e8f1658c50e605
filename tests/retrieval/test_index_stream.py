"""Streaming index builds (chunks of passages in, the same index out) and the fast checksum check on load."""

import json

import numpy as np
import pytest

from ragloop import Index, Passage, RagloopError, Retriever
from ragloop.cli import main
from ragloop.retrieval.folder import encoder_entry
from ragloop.retrieval.settings import IndexSettings

QUESTIONS = ["Which team won Super Bowl 50?", "Where is Warsaw?", "Who were the Normans?"]


def test_streamed_build_equals_the_in_memory_build(tmp_path, passages, encoder, monkeypatch):
    calls = []
    encode = encoder.passage.encode
    monkeypatch.setattr(encoder.passage, "encode", lambda texts, *a, **k: calls.append(len(texts)) or
                        encode(texts, *a, **k))
    streamed = Index.build(iter(passages), encoder, tmp_path / "s", chunk_size=5, progress=False)
    # chunk by chunk, never the whole corpus at once (before them: the one-text probes that fingerprint it)
    assert calls[-4:] == [5, 5, 5, len(passages) - 15] and max(calls) == 5
    monkeypatch.undo()
    vectors = encoder.encode_passages([p.title for p in passages], [p.text for p in passages], progress=False)
    whole = Index.from_vectors(passages, vectors, encoder_entry(encoder), tmp_path / "m",
                               IndexSettings(chunk_size=len(passages)))
    assert list(streamed.store) == list(whole.store) == passages
    assert np.allclose(streamed.vectors(np.arange(len(passages))), vectors, atol=1e-5)
    q = encoder.encode_questions(QUESTIONS)
    assert (streamed.search(q, 5)[1] == whole.search(q, 5)[1]).all()
    for mode in ("bm25", "hybrid"):
        a, b = Retriever(streamed).search(QUESTIONS, k=5, mode=mode), Retriever(whole).search(QUESTIONS, k=5, mode=mode)
        assert [[h.passage.id for h in hits] for hits in a] == [[h.passage.id for h in hits] for hits in b]
    assert streamed.manifest["passages"] == len(passages) and not (tmp_path / "s" / "vectors.npy").exists()


@pytest.mark.parametrize("factory", ["IVF2,PQ4x4", "OPQ4,IVF2,PQ4x4fs"])
def test_chunked_filling_equals_one_fill(tmp_path, factory):
    """Trained on the same vectors, FAISS filled chunk by chunk from the file is the index filled at once."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    docs = [Passage(id=f"p{i}", title="", text=f"t{i}", doc_id=f"d{i}") for i in range(300)]
    entry = {side: {"name": "x", "dim": 16, "probe": [0.0] * 16} for side in ("passage", "question")}
    built = [Index.from_vectors(docs, vectors, entry, tmp_path / str(c),
                                IndexSettings(factory=factory, search_params={"nprobe": 2}, with_bm25=False,
                                              chunk_size=c)) for c in (7, 300)]
    a, b = (index.search(vectors[:20], 10) for index in built)
    assert (a[1] == b[1]).all() and np.array_equal(a[0], b[0])


def test_a_generator_builds_and_an_empty_or_repeating_one_is_a_clear_error(tmp_path, passages, encoder):
    index = Index.build((p for p in passages), encoder, tmp_path / "g", chunk_size=4, with_bm25=False)
    assert len(index) == len(passages)
    with pytest.raises(RagloopError, match="empty corpus"):
        Index.build(iter([]), encoder, tmp_path / "e")
    assert not (tmp_path / "e").exists()
    with pytest.raises(RagloopError, match="same id"):  # a repeat in a later chunk, caught by the store
        Index.build(iter(passages + passages[:1]), encoder, tmp_path / "d", chunk_size=4)
    assert not (tmp_path / "d").exists()


def test_fast_verify_reads_samples_of_large_files_and_still_catches_changes(tmp_path, passages, encoder,
                                                                              monkeypatch):
    import ragloop.io
    import ragloop.manifest

    monkeypatch.setattr(ragloop.manifest, "SAMPLE_ABOVE", 1000)  # every file here counts as large
    Index.build(passages, encoder, tmp_path / "i", with_bm25=False, factory="HNSW8")
    files = json.loads((tmp_path / "i" / "manifest.json").read_text())["files"]
    assert all("sample_sha256" in meta for meta in files.values())
    hashed = []
    full = ragloop.io.sha256_file
    monkeypatch.setattr(ragloop.io, "sha256_file", lambda p, *a: hashed.append(p) or full(p, *a))
    Index.load(tmp_path / "i")  # the default: "fast"
    assert hashed == []  # no file read whole
    Index.load(tmp_path / "i", verify="full")
    assert len(hashed) == len(files)
    faiss_file = tmp_path / "i" / "index.faiss"
    data = bytearray(faiss_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content: a swapped or corrupted file
    faiss_file.write_bytes(bytes(data))
    for verify in ("fast", "full", True):
        with pytest.raises(RagloopError, match=r"index\.faiss: does not match the checksum"):
            Index.load(tmp_path / "i", verify=verify)
    with pytest.raises(RagloopError, match="verify must be one of"):
        Index.load(tmp_path / "i", verify="quick")


def test_fast_verify_is_a_sample_full_verify_reads_everything(tmp_path, passages, encoder, monkeypatch):
    """The documented limit of the default: a change between the sampled blocks of a large file passes
    "fast" (sizes and the sampled digest agree); "full" hashes every byte and finds it."""
    import ragloop.manifest

    monkeypatch.setattr(ragloop.manifest, "SAMPLE_ABOVE", 1000)
    monkeypatch.setattr(ragloop.manifest, "SAMPLE_BLOCK", 16)  # 16 blocks of 16 bytes: most of the file unsampled
    Index.build(passages, encoder, tmp_path / "i", with_bm25=False)
    faiss_file = tmp_path / "i" / "index.faiss"
    data = bytearray(faiss_file.read_bytes())
    size, blocks = len(data), ragloop.manifest.SAMPLE_BLOCKS
    starts = [(size - 16) * i // (blocks - 1) for i in range(blocks)]
    sampled = {o for start in starts for o in range(start, start + 16)}
    spot = next(o for o in range(size // 3, size) if o not in sampled)
    data[spot] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    Index.load(tmp_path / "i", verify="fast")  # passes: the change is outside the sample
    with pytest.raises(RagloopError, match=r"index\.faiss: does not match the checksum"):
        Index.load(tmp_path / "i", verify="full")


def test_cli_streams_with_refine_and_add_keeps_the_vectors_in_step(tmp_path, squad_small, tiny_bert_dir, capsys):
    out = tmp_path / "idx"
    assert main(["index", str(squad_small), "--out", str(out), "--encoder", str(tiny_bert_dir), "--index-type",
                 "IVF2,Flat", "--refine", "disk", "--refine-factor", "3", "--chunk-size", "5", "--nprobe", "2",
                 "-q"]) == 0
    assert "refine disk x3" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["index"]["refine"]["factor"] == 3 and "vectors.npy" in manifest["files"]
    assert manifest["index"]["search_params"]["nprobe"] == 2 and Index.load(out).backend.index.nprobe == 2
    doc = tmp_path / "new.md"
    doc.write_text("# Zanzibar\n\nZanzibar is an archipelago off the coast of Tanzania.")
    assert main(["index", str(doc), "--out", str(out), "--add", "-q"]) == 0
    index = Index.load(out, verify="full")
    assert len(index) == manifest["passages"] + 1 == len(np.load(out / "vectors.npy", mmap_mode="r"))
    assert main(["index", str(doc), "--out", str(out), "--add", "--refine", "disk"]) == 2
    assert "--refine" in capsys.readouterr().err
    assert main(["index", str(doc), "--out", str(out), "--add", "--nprobe", "8"]) == 2
    assert "--nprobe is a build option" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["index", str(empty), "--out", str(tmp_path / "e")]) == 2
    assert "no passages found" in capsys.readouterr().err
    assert main(["index", str(doc), "--out", str(tmp_path / "f"), "--refine-factor", "4"]) == 2  # no --refine disk
    assert "add --refine disk" in capsys.readouterr().err and not (tmp_path / "f").exists()


def test_the_training_sample_spreads_over_the_whole_corpus(tmp_path):
    from ragloop.retrieval.vecfile import NpyAppender, sample_rows

    with NpyAppender(tmp_path / "v.npy", 2) as out:  # row i holds (i, -i): a corpus sorted by something
        for start in range(0, 1000, 64):
            rows = np.arange(start, min(start + 64, 1000), dtype=np.float32)
            out.append(np.stack([rows, -rows], axis=1))
    picked = sample_rows(tmp_path / "v.npy", 5)[:, 0].tolist()
    assert picked == [0.0, 250.0, 500.0, 749.0, 999.0]  # the end of the file as well as its start
    everything = sample_rows(tmp_path / "v.npy", 5000)
    assert everything.dtype == np.float32 and everything[:, 0].tolist() == list(range(1000))
