"""The index folder: build, load, search, add, checks against the wrong encoder or corrupt files."""

import dataclasses
import json
import os

import faiss
import numpy as np
import pytest

from ragloop import BiEncoder, Index, Passage, RagloopError, Retriever
from ragloop.retrieval.hybrid import fuse


@pytest.fixture
def built(index):
    """The shared index of `passages` by `encoder` (conftest.py)."""
    return index


def test_build_writes_manifest_store_and_rows_line_up(built, passages, encoder):
    m = built.manifest
    assert m["passages"] == len(passages) == len(built)
    assert m["encoder"]["passage"]["dim"] == encoder.passage.dim == built.dim
    assert m["encoder"]["passage"]["pooling"] == "mean" and m["encoder"]["passage"]["normalize"] is True
    assert {"index.faiss", "passages.sqlite"} <= set(m["files"])
    # FAISS row i is passage i: each stored vector finds itself first, and the store returns its passage
    rows = np.arange(len(passages))
    scores, found = built.search(built.vectors(rows), 1)
    assert (found[:, 0] == rows).all()
    assert [p.id for p in built.store.get_rows(rows.tolist())] == [p.id for p in passages]


def test_dense_vectors_are_the_encoder_output(built, passages, encoder):
    titles, texts = [passages[3].title], [passages[3].text]
    vec = encoder.encode_passages(titles, texts, progress=False)
    assert np.allclose(vec[0], built.vectors(np.array([3]))[0], atol=1e-5)
    assert abs(np.linalg.norm(vec[0]) - 1) < 1e-5  # the folder's 2_Normalize module is honoured


def test_retriever_modes_return_passages(built):
    r = Retriever(built)
    for mode in ("dense", "bm25", "hybrid"):
        [hits] = r.search(["Which team won Super Bowl 50?"], k=3, mode=mode)
        assert 1 <= len(hits) <= 3 and all(isinstance(h.passage, Passage) for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    [hits] = r.search(["Warsaw Vistula river"], k=1, mode="bm25")
    assert hits[0].passage.title == "Warsaw"  # keyword match is deterministic
    with pytest.raises(RagloopError, match="question 0 is empty"):
        r.search([" "], k=3)
    with pytest.raises(RagloopError, match="unknown search mode"):
        r.search(["x"], mode="sparse")


def test_bm25_only_query_matching_nothing_returns_no_hits(built):
    [hits] = Retriever(built).search(["zzqx qqzzv"], k=5, mode="bm25")
    assert hits == []


@pytest.mark.parametrize("factory", ["HNSW32", "IVF4,PQ8x4"])
def test_compressed_and_graph_indexes_build_and_search(tmp_path, passages, encoder, factory):
    index = Index.build(passages, encoder, tmp_path / "i", factory=factory, with_bm25=False)
    assert index.manifest["index"]["factory"] == factory
    scores, rows = index.search(encoder.encode_questions(["Super Bowl"]), 5)
    assert (rows >= 0).all()
    # RAG recomputes q.d from stored vectors: they must come back (PQ: approximately) from a loaded index
    stored = Index.load(tmp_path / "i").vectors(rows[0])
    assert stored.shape == (5, encoder.passage.dim)
    assert np.allclose(stored @ encoder.encode_questions(["Super Bowl"])[0], scores[0], atol=1e-3)


def test_ivf_with_too_few_passages_is_a_clear_error(tmp_path, passages, encoder):
    with pytest.raises(RagloopError, match="needs at least 1024 passages"):
        Index.build(passages, encoder, tmp_path / "i", factory="IVF1024,Flat")
    assert not (tmp_path / "i").exists()
    with pytest.raises(RagloopError, match="not valid"):
        Index.build(passages, encoder, tmp_path / "i", factory="Bogus12")


def test_querying_with_another_encoder_is_refused(built, other_bert_dir, tiny_dpr_dirs):
    with pytest.raises(RagloopError, match="built with question encoder .* other weights"):
        Retriever.from_index(built.path, encoder=str(other_bert_dir))
    with pytest.raises(RagloopError, match="dim"):
        small = BiEncoder.from_pretrained(str(tiny_dpr_dirs[1]))
        built.check_question_encoder(_resized(small.question))


def _resized(enc):
    enc.spec.dim = enc.dim + 1
    return enc


def test_same_weights_under_another_path_are_accepted(built, tiny_bert_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_dir, copy)
    r = Retriever.from_index(built.path, encoder=str(copy))
    assert r.search("Warsaw", k=1)[0]


def test_corrupt_or_missing_files_name_the_file(tmp_path, passages, encoder):
    index = Index.build(passages, encoder, tmp_path / "i", with_bm25=False)
    with open(index.path / "index.faiss", "r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    with pytest.raises(RagloopError, match=r"index\.faiss: does not match the checksum in manifest\.json"):
        Index.load(tmp_path / "i")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("x")
    with pytest.raises(RagloopError, match="not a ragloop index"):
        Index.load(tmp_path / "plain")
    (tmp_path / "i" / "manifest.json").write_text("{trunc")
    with pytest.raises(RagloopError, match=r"corrupt manifest\.json"):
        Index.load(tmp_path / "i")


def test_failed_build_keeps_the_previous_index_and_leaves_no_temp(tmp_path, passages, encoder, monkeypatch):
    target = tmp_path / "i"
    Index.build(passages[:5], encoder, target, with_bm25=False)
    before = json.loads((target / "manifest.json").read_text())

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(OSError):
        Index.build(passages, encoder, target, with_bm25=False)
    assert json.loads((target / "manifest.json").read_text()) == before
    assert len(Index.load(target)) == 5
    assert os.listdir(tmp_path) == ["i"]


def test_refuses_to_overwrite_a_folder_that_is_not_an_index(tmp_path, passages, encoder):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(RagloopError, match="not a ragloop index; refusing"):
        Index.build(passages, encoder, tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_add_new_documents_to_an_existing_index(tmp_path, passages, encoder):
    index = Index.build(passages[:6], encoder, tmp_path / "i")
    added = index.add(passages[4:], encoder)
    assert added == len(passages) - 6  # the two already present are skipped
    reloaded = Index.load(tmp_path / "i")
    assert len(reloaded) == len(passages)
    assert [p.id for p in reloaded.store] == [p.id for p in passages[:6]] + [p.id for p in passages[6:]]
    [hits] = Retriever(reloaded).search(["Normans Normandy"], k=1, mode="bm25")
    assert hits[0].passage.title == "Normans"  # the added article is in BM25 too


def test_rrf_and_score_fusion():
    dense = (np.array([[0.9, 0.8, 0.1]]), np.array([[1, 2, 3]]))
    sparse = (np.array([[12.0, 3.0, 0.0]]), np.array([[3, 2, -1]]))
    s, r = fuse(dense, sparse, k=3, method="rrf", weight=0.5)
    # 2 is ranked 2nd by both: 0.5/62 + 0.5/62 beats 1 (0.5/61) and 3 (0.5/63 + 0.5/61)? 3 wins
    assert r[0].tolist() == [3, 2, 1]
    assert s[0][0] == pytest.approx(0.5 / 63 + 0.5 / 61)
    s, r = fuse(dense, sparse, k=2, method="score", weight=0.9)
    # dense-heavy: 1 -> 0.9*1, 2 -> 0.9*0.875 + 0.1*0, 3 -> 0 + 0.1*1
    assert r[0].tolist() == [1, 2] and s[0][0] == pytest.approx(0.9)
    s, r = fuse((np.zeros((1, 1)), np.array([[-1]])), (np.zeros((1, 1)), np.array([[-1]])), k=2)
    assert r[0].tolist() == [-1, -1]


def test_index_written_under_the_old_name_still_loads(tmp_path, passages, encoder):
    """Folders from before the rename (format "ragsys-index", ragsys_encoder.json) keep loading."""
    import shutil

    old = tmp_path / "old-index"
    shutil.copytree(Index.build(passages[:5], encoder, tmp_path / "new").path, old)
    meta = json.loads((old / "manifest.json").read_text())
    meta["format"] = "ragsys-index"
    (old / "manifest.json").write_text(json.dumps(meta))
    assert len(Index.load(old)) == 5
    meta["format"] = "someone-else-index"
    (old / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(RagloopError, match="not a"):
        Index.load(old)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_index_files_follow_the_umask(tmp_path, passages, encoder, umask):
    """A shared index is readable by others under umask 022 and private under 077: the temporary
    folder and files of the atomic writes do not keep tempfile's 0700/0600."""
    old = os.umask(umask)
    try:
        index = Index.build(passages[:5], encoder, tmp_path / "i")
        index.add(passages[5:8], encoder)  # rewrites the folder and the manifest again
    finally:
        os.umask(old)
    paths = [tmp_path / "i", *(tmp_path / "i").rglob("*")]
    assert (tmp_path / "i" / "manifest.json") in paths
    for p in paths:
        expected = (0o777 if p.is_dir() else 0o666) & ~umask
        assert p.stat().st_mode & 0o777 == expected, p


def test_hits_carry_their_source_file(built, squad_small):
    [hits] = Retriever(built).search(["Warsaw Vistula"], k=2, mode="bm25")
    assert hits[0].passage.source == squad_small.name  # the file's name, not this machine's path to it
    assert hits[0].to_dict()["source"] == squad_small.name


def test_index_from_before_sources_loads_and_grows(tmp_path, passages, encoder):
    """An index whose passage store has no `source` column (written before passages recorded it)
    still searches, and `add` gives it the column."""
    import sqlite3

    from ragloop.manifest import checksum_files

    folder = Index.build(passages[:5], encoder, tmp_path / "old").path
    db = sqlite3.connect(folder / "passages.sqlite")
    db.executescript("CREATE TABLE p2 (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc_id TEXT NOT NULL, "
                     "title TEXT NOT NULL, text TEXT NOT NULL); INSERT INTO p2 SELECT row, id, doc_id, title, text "
                     "FROM passages; DROP TABLE passages; ALTER TABLE p2 RENAME TO passages; VACUUM;")
    db.close()
    meta = json.loads((folder / "manifest.json").read_text())
    meta["files"] = checksum_files(folder, sorted(p for p in folder.rglob("*") if p.is_file()
                                                  and p.name != "manifest.json"))
    (folder / "manifest.json").write_text(json.dumps(meta))
    old = Index.load(folder)
    [hits] = Retriever(old).search([passages[0].text], k=1, mode="bm25")
    assert hits[0].passage.id == passages[0].id and hits[0].to_dict()["source"] == ""
    assert old.add(passages[5:7], encoder) == 2
    grown = list(Index.load(folder).store)
    assert [p.source for p in grown] == [""] * 5 + [passages[5].source, passages[6].source]


def test_k_is_a_whole_number_within_the_index(built):
    r = Retriever(built)
    n = len(built)
    with pytest.raises(RagloopError, match=rf"k={n + 1} but .*index holds {n} passages"):
        r.search(["Warsaw"], k=n + 1, mode="bm25")  # not a traceback after a huge allocation
    for bad in (0, -3, True, float("nan"), 2.5, "5"):
        with pytest.raises(RagloopError, match="k must be"):
            r.search(["Warsaw"], k=bad, mode="bm25")
    assert len(r.search(["Warsaw"], k=n, mode="bm25")[0]) <= n


def test_fusion_weight_and_method_are_checked(built):
    for weight in (float("nan"), 1.5, -0.1, True, float("inf")):
        with pytest.raises(RagloopError, match=r"weight of hybrid fusion must be a number in \[0, 1\]"):
            Retriever(built, weight=weight)
    with pytest.raises(RagloopError, match="unknown fusion method 'max'"):
        Retriever(built, fusion="max")
    one = (np.array([[1.0]]), np.array([[0]]))
    with pytest.raises(RagloopError, match="weight"):
        fuse(one, one, k=1, weight=2.0)
    assert Retriever(built, fusion="score", weight=1).search(["Warsaw"], k=1, mode="hybrid")[0]


def test_questions_that_are_not_strings_are_named(built):
    r = Retriever(built)
    with pytest.raises(RagloopError, match=r"question 0 is not a string \(got bytes\)"):
        r.search([b"Warsaw"], mode="bm25")
    with pytest.raises(RagloopError, match=r"question 1 is not a string \(got dict\)"):
        r.search(["Warsaw", {"q": "Warsaw"}], mode="bm25")
    with pytest.raises(RagloopError, match=r"questions must be a string or a list of strings \(got dict\)"):
        r.search({"Warsaw": 1}, mode="bm25")  # not a silent search of the key
    with pytest.raises(RagloopError, match="question 0 is empty"):
        r.search(["  "], mode="bm25")
    assert len(r.search(("Warsaw", "Normans"), k=1, mode="bm25")) == 2


def test_models_and_indexes_load_from_path_objects(built, tiny_bert_dir, tiny_dpr_dirs):
    question, ctx = tiny_dpr_dirs
    assert BiEncoder.from_pretrained(ctx).question.spec.name == str(question.resolve())  # DPR tower inferred
    r = Retriever.from_index(built.path, encoder=tiny_bert_dir)  # both pathlib.Path
    assert r.search(["Warsaw"], k=1)[0]


def test_answers_missing_from_their_context_are_counted_or_refused(built, squad_small, caplog):
    import logging

    from ragloop import load_qa
    from ragloop.evaluation import evaluate_retrieval, has_answer

    examples = [ex for ex in load_qa(squad_small) if has_answer(ex.answers, ex.context)][:6]
    r = Retriever(built)
    assert evaluate_retrieval(r, examples, (1, 5), "bm25")["answers_not_in_context"] == 0
    moved = [*examples[:4], *(dataclasses.replace(ex, answers=["zzqx nowhere"]) for ex in examples[4:])]
    with caplog.at_level(logging.WARNING):
        res = evaluate_retrieval(r, moved, (1, 5), "bm25")
    assert res["answers_not_in_context"] == 2
    assert "have no answer in their context paragraph" in caplog.text
    wrong = [dataclasses.replace(ex, answers=["zzqx nowhere"]) for ex in examples]
    with pytest.raises(RagloopError, match=r"squad-dev-small\.json: none of the 6 questions has an answer in its "
                                           "context"):
        evaluate_retrieval(r, wrong, (1, 5), "bm25")
    with pytest.raises(RagloopError, match="k must be"):
        evaluate_retrieval(r, examples, (0, 5), "bm25")
