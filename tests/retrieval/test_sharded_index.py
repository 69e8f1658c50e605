"""Sharded indexing: shards merged into one index equal to a single-process build; clear errors when
shards are missing, from another encoder or from a run with another --num-shards."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ragloop import BiEncoder, Index, RagloopError
from ragloop.cli import main
from ragloop.retrieval.shards import build_shard, merge_shards, shard_bounds, shard_path, shards_root


@pytest.fixture
def single(index):
    """The single-process index of `passages` by `encoder`: the shared one (conftest.py)."""
    return index


QUESTIONS = ["Which team won Super Bowl 50?", "Where is Warsaw?", "What is the Amazon rainforest?"]


def assert_same_index(merged: Index, single: Index, encoder: BiEncoder) -> None:
    assert len(merged) == len(single)
    assert [p.id for p in merged.store] == [p.id for p in single.store]
    assert [(p.title, p.text) for p in merged.store] == [(p.title, p.text) for p in single.store]
    rows = np.arange(len(single))
    assert np.allclose(merged.vectors(rows), single.vectors(rows), atol=1e-5)
    q = encoder.encode_questions(QUESTIONS)
    (s1, r1), (s2, r2) = merged.search(q, 5), single.search(q, 5)
    assert (r1 == r2).all() and np.allclose(s1, s2, atol=1e-5)
    assert (merged.bm25.search(QUESTIONS, 5)[1] == single.bm25.search(QUESTIONS, 5)[1]).all()
    for key in ("encoder", "index", "passages", "bm25", "format", "format_version"):
        assert merged.manifest[key] == single.manifest[key], key


def test_shard_bounds_are_contiguous_and_balanced():
    for n in (0, 1, 5, 101):
        for shards in (1, 2, 3, 7):
            bounds = [shard_bounds(n, shards, i) for i in range(shards)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(e - s for s, e in bounds) - min(e - s for s, e in bounds) <= 1


def test_merged_shards_equal_a_single_process_index(tmp_path, passages, encoder, single):
    out = tmp_path / "index"
    for shard_id in (1, 0, 2):  # any order, as separate jobs would finish
        path = build_shard(passages, encoder, out, num_shards=3, shard_id=shard_id, progress=False)
        assert path == shard_path(out, shard_id, 3) and (path / "shard.json").is_file()
    assert not out.exists()  # nothing at --out until the merge
    merged = merge_shards(out)
    assert_same_index(merged, single, encoder)
    assert not shards_root(out).exists()  # merged shards are removed
    assert_same_index(Index.load(out), single, encoder)  # the folder verifies and loads on its own


def test_more_shards_than_passages_and_keep_shards(tmp_path, passages, encoder):
    few = passages[:3]
    out = tmp_path / "index"
    for shard_id in range(5):  # two shards are empty
        build_shard(few, encoder, out, num_shards=5, shard_id=shard_id, progress=False)
    merged = merge_shards(out, num_shards=5, keep_shards=True)
    assert [p.id for p in merged.store] == [p.id for p in few]
    assert len(list(shards_root(out).iterdir())) == 5


def test_bad_shards_are_one_clear_error(tmp_path, passages, encoder, other_bert_dir):
    out = tmp_path / "index"
    with pytest.raises(RagloopError, match=r"index\.shards: no index shards to merge"):
        merge_shards(out)
    with pytest.raises(RagloopError, match="--shard-id must be in 0..1"):
        build_shard(passages, encoder, out, num_shards=2, shard_id=2)
    build_shard(passages, encoder, out, num_shards=2, shard_id=0, progress=False)
    with pytest.raises(RagloopError, match=r"shard-1-of-2: missing; shard 1 of 2 was not built"):
        merge_shards(out)

    other = BiEncoder.from_pretrained(str(other_bert_dir))
    build_shard(passages, other, out, num_shards=2, shard_id=1, progress=False)
    with pytest.raises(RagloopError, match=r"shard-1-of-2: encoded with passage encoder .*shard-0-of-2 with"):
        merge_shards(out)

    build_shard(passages[:-1], encoder, out, num_shards=2, shard_id=1, progress=False)
    with pytest.raises(RagloopError, match=r"shard-1-of-2: built from another corpus than shard-0-of-2"):
        merge_shards(out)

    build_shard(passages, encoder, out, num_shards=2, shard_id=1, factory="HNSW32", progress=False)
    with pytest.raises(RagloopError, match=r"shard-1-of-2: built with other settings"):
        merge_shards(out)

    build_shard(passages, encoder, out, num_shards=2, shard_id=1, progress=False)
    build_shard(passages, encoder, out, num_shards=3, shard_id=2, progress=False)  # a stray from another run
    with pytest.raises(RagloopError, match=r"shard-2-of-3: built with --num-shards 3, other shards .* with 2"):
        merge_shards(out)
    with pytest.raises(RagloopError, match=r"shard-0-of-3: missing"):
        merge_shards(out, num_shards=3)

    vectors = shard_path(out, 1, 2) / "vectors.npy"
    vectors.write_bytes(vectors.read_bytes()[:-8])
    with pytest.raises(RagloopError, match=r"shard-1-of-2/vectors\.npy: does not match the checksum"):
        merge_shards(out, num_shards=2)
    assert not out.exists()  # every failed merge left --out alone


def test_cli_two_shards_then_merge(tmp_path, squad_small, tiny_bert_dir, encoder, single, capsys):
    out = tmp_path / "index"
    base = ["index", str(squad_small), "--out", str(out), "--encoder", str(tiny_bert_dir), "-q"]
    for shard_id in ("0", "1"):
        assert main([*base, "--num-shards", "2", "--shard-id", shard_id]) == 0
    assert "--merge-shards" in capsys.readouterr().out
    assert main(["index", "--out", str(out), "--merge-shards", "-q"]) == 0
    assert "merged shards" in capsys.readouterr().out
    assert_same_index(Index.load(out), single, encoder)

    assert main(["index", "--out", str(tmp_path / "none"), "--merge-shards", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ragloop: error:") and "no index shards to merge" in err and "\n" not in err
    assert main([*base, "--num-shards", "2"]) == 2
    assert "--num-shards and --shard-id go together" in capsys.readouterr().err
    assert main(["index", str(squad_small), "--out", str(out), "--merge-shards", "-q"]) == 2
    assert "--merge-shards takes only --out" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_encode_and_merge(tmp_path, squad_small, tiny_bert_dir, encoder, single):
    """Under torchrun every process encodes its shard, then process 0 merges (2 CPU processes, gloo)."""
    out = tmp_path / "index"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "ragloop",
           "index", str(squad_small), "--out", str(out), "--encoder", str(tiny_bert_dir), "-q"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("indexed") == 1  # process 0 alone merges and reports
    assert_same_index(Index.load(out), single, encoder)
    assert not shards_root(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no temporary folders left behind
    assert json.loads((out / "manifest.json").read_text())["passages"] == len(single)


def test_merge_does_not_touch_a_folder_that_is_not_an_index(tmp_path, passages, encoder):
    out = tmp_path / "index"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RagloopError, match="exists and is not a ragloop index"):
        build_shard(passages, encoder, out, num_shards=1, shard_id=0)
    shutil.rmtree(out)
    build_shard(passages, encoder, out, num_shards=1, shard_id=0, progress=False)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RagloopError, match="exists and is not a ragloop index"):
        merge_shards(out)
    assert (out / "notes.txt").read_text() == "mine" and shard_path(out, 0, 1).is_dir()
