"""IndexSettings: every index build option checked once, with the same message for the CLI, the
recipe loader and Python callers; the old keyword arguments map onto it."""

import re

import pytest

from ragloop import RagloopError
from ragloop.constants import INDEX_CHUNK_SIZE, INDEX_REFINE_FACTOR
from ragloop.retrieval.settings import DEFAULT_SEARCH_PARAMS, IndexSettings


def test_defaults_and_the_manifest_entries():
    s = IndexSettings()
    assert (s.factory, s.with_bm25, s.refine, s.chunk_size, s.refine_factor) == \
        ("Flat", True, None, INDEX_CHUNK_SIZE, INDEX_REFINE_FACTOR)
    assert s.refine_entry() is None and s.search_params_or_defaults() == DEFAULT_SEARCH_PARAMS
    r = IndexSettings(refine="disk", refine_factor=4, refine_dtype="float16", search_params={"nprobe": 64})
    assert r.refine_entry() == {"kind": "disk", "factor": 4, "dtype": "float16", "file": "vectors.npy"}
    assert r.search_params_or_defaults() == {**DEFAULT_SEARCH_PARAMS, "nprobe": 64}
    assert IndexSettings(refine="none").refine is None


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 0}, "--batch-size must be at least 1 (got 0)"),
    ({"chunk_size": -1}, "--chunk-size must be at least 1 (got -1)"),
    ({"train_size": 0}, "train_size must be at least 1"),
    ({"refine": "ram"}, "--refine must be one of none, disk (got 'ram')"),
    ({"refine": "disk", "refine_factor": 0}, "--refine-factor must be at least 1 (got 0)"),
    ({"refine_dtype": "int8"}, "--refine-dtype must be one of float32, float16"),
    ({"factory": ""}, "FAISS index type must be a factory string"),
    ({"search_params": ["nprobe"]}, "search_params must map"),
    ({"quantize": "int4"}, "unknown quantization 'int4'"),
])
def test_a_bad_value_is_one_clear_error(options, message):
    with pytest.raises(RagloopError, match=re.escape(message)):
        IndexSettings(**options)


def test_keyword_arguments_map_onto_the_settings_in_one_place():
    assert IndexSettings.of(factory="HNSW32", with_bm25=False) == IndexSettings(factory="HNSW32", with_bm25=False)
    assert IndexSettings.of("IVF16,Flat").factory == "IVF16,Flat"  # Index.build's old positional factory
    base = IndexSettings(factory="HNSW32", batch_size=8)
    assert IndexSettings.of(base, batch_size=16) == IndexSettings(factory="HNSW32", batch_size=16)
    with pytest.raises(TypeError, match="unexpected index option"):
        IndexSettings.of(nlist=4)
    with pytest.raises(RagloopError, match="--batch-size"):
        IndexSettings.of(base, batch_size=0)


def test_a_manifest_gives_back_the_settings_that_rebuild_the_index():
    built = IndexSettings(factory="IVF4,PQ4x4", refine="disk", refine_factor=2, with_bm25=False)
    manifest = {"index": {"factory": built.factory, "search_params": built.search_params_or_defaults(),
                          "refine": built.refine_entry()}, "bm25": None}
    again = IndexSettings.of(**IndexSettings.from_manifest(manifest).build_options())
    assert again.refine_entry() == built.refine_entry() and again.factory == built.factory
    assert again.with_bm25 is False and again.search_params_or_defaults() == built.search_params_or_defaults()


def test_with_bm25_must_be_true_or_false():
    with pytest.raises(RagloopError, match="with_bm25: expected true or false"):
        IndexSettings(with_bm25="no")
