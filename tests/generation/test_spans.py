"""Copied spans (generation/spans.py): the characters of each passage an answer was copied from, on
hand-made examples where the copied span is known, through `RAG.answer`, `ragloop answer` and /answer."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ForcedCopy
from fastapi.testclient import TestClient
from transformers.modeling_outputs import BaseModelOutput

from ragloop import BiEncoder, Encoder, Index
from ragloop.cli import main
from ragloop.data.corpus import Passage
from ragloop.errors import RagloopError
from ragloop.generation import CopyHead, Generator
from ragloop.generation.spans import copied_spans, copy_positions, fuse, row_maps, spans_from_positions
from ragloop.model import RAG, RAGConfig
from ragloop.serving import create_app

QUESTION = "Who wrote the play Hamlet?"
ANSWER = "Jean-Luc Godárd"
PLAYS = Passage("plays", "Plays", "Hamlet is a tragedy.  Nobody here copied it.")
AUTHOR = Passage("author", "Jean-Luc Godárd and Hamlet",  # the title holds the answer too: never a span
                 "The play Hamlet was   written by Jean-Luc Godárd, not by Shakespeare, around 1600.")
START = AUTHOR.text.index(ANSWER)
EXPECTED = {"start": START, "end": START + len(ANSWER), "text": ANSWER}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bert2bert(tiny_bert_dir) -> Generator:
    """A tiny BERT2BERT with a copy head (the bundled generator's shape, hidden 32)."""
    torch.manual_seed(0)
    gen = Generator.from_encoder_decoder(tiny_bert_dir, tiny_bert_dir, copy=True)
    gen.model.eval()
    return gen


def forced(gen: Generator, **how) -> Generator:
    """`gen` with a `ForcedCopy` head (the same model otherwise)."""
    out = Generator(gen.model, gen.tokenizer, gen.name, copy_head=ForcedCopy.like(gen.copy_head, **how))
    out.model.eval()
    return out


def answer_ids(gen: Generator, text: str = ANSWER) -> list[int]:
    """Token ids as a decoder gives them: the answer, then eos."""
    return gen.tokenizer(text, add_special_tokens=False)["input_ids"] + [gen.eos_token_id]


def test_a_forced_copy_points_at_the_known_characters_of_the_passage_text(bert2bert):
    gen = forced(bert2bert)  # the last place of the answer in each row: in the text, not the title
    got = copied_spans(gen, [QUESTION], [[PLAYS, AUTHOR]], [answer_ids(gen)])
    assert got == [[None, EXPECTED]]
    assert AUTHOR.text[got[0][1]["start"] : got[0][1]["end"]] == ANSWER


def test_copies_from_the_title_or_the_question_are_no_span(bert2bert):
    title_first = forced(bert2bert, occurrence=0)  # the title's "Jean-Luc Godárd" comes before the text's
    assert copied_spans(title_first, [QUESTION], [[AUTHOR]], [answer_ids(title_first)]) == [[None]]
    asked = "Did Jean-Luc Godárd write it?"  # the question's copy is the first place in the row
    assert copied_spans(title_first, [asked], [[PLAYS]], [answer_ids(title_first)]) == [[None]]


def test_tokens_the_vocabulary_gave_are_not_copied(bert2bert):
    gen = forced(bert2bert, gate_bias=30.0)  # the same attention, but g ~ 1: the vocabulary's answer
    assert copied_spans(gen, [QUESTION], [[PLAYS, AUTHOR]], [answer_ids(gen)]) == [[None, None]]


def test_a_generator_without_a_copy_head_gives_no_spans(tiny_t5_dir):
    gen = Generator.from_pretrained(str(tiny_t5_dir))
    assert gen.copy_head is None
    assert copied_spans(gen, [QUESTION, "What is it?"], [[PLAYS, AUTHOR], [AUTHOR, PLAYS]],
                        [answer_ids(gen), answer_ids(gen, "a tragedy")]) == [[None, None], [None, None]]


def test_each_question_of_a_batch_gets_its_own_answers_span(bert2bert):
    gen = forced(bert2bert)
    got = copied_spans(gen, [QUESTION, "What is Hamlet?"], [[PLAYS, AUTHOR], [AUTHOR, PLAYS]],
                       [answer_ids(gen), answer_ids(gen, "a tragedy")])
    assert got == [[None, EXPECTED], [None, {"start": 10, "end": 19, "text": "a tragedy"}]]


def test_position_maps_follow_the_rows_as_built_even_when_cut(bert2bert):
    gen = Generator(bert2bert.model, bert2bert.tokenizer, max_source_length=24, copy_head=bert2bert.copy_head)
    inputs = gen.build_inputs([QUESTION], [[PLAYS, AUTHOR]])
    maps = row_maps(gen, [QUESTION], [[PLAYS, AUTHOR]])
    for row, (passage, m) in enumerate(zip((PLAYS, AUTHOR), maps)):
        ids = inputs["input_ids"][row].tolist()
        assert m and max(m) < inputs["attention_mask"][row].sum() - 1  # inside the row, before its [SEP]
        for pos, (k, start, end) in m.items():
            assert k == row
            piece = gen.tokenizer.convert_ids_to_tokens(ids[pos]).removeprefix("##")
            assert passage.text[start:end].lower() == piece  # the token at the position spells those characters
        assert max(m) == 22  # both cut at max_source_length (24): the last token kept, then [SEP]


def test_a_fused_source_maps_positions_to_the_right_passage(bert2bert):
    """Fusion-in-Decoder reads a question's k rows side by side: positions of the second row's
    half map to the second passage, however the passages' texts line up."""
    gen = forced(bert2bert)
    first = Passage("first", "One", f"It was {ANSWER} who wrote it.")
    passages = [first, AUTHOR]
    inputs = gen.build_inputs([QUESTION], [passages])
    width = inputs["input_ids"].shape[1]
    states = gen.encode(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state
    fused_ids, fused_mask = inputs["input_ids"].reshape(1, -1), inputs["attention_mask"].reshape(1, -1)
    fused = BaseModelOutput(last_hidden_state=states.reshape(1, 2 * width, -1))
    position_map = fuse(row_maps(gen, [QUESTION], [passages]), width)
    texts = [p.text for p in passages]

    last = copy_positions(gen, fused_ids, fused_mask, [answer_ids(gen)], encoder_outputs=fused)[0]
    assert min(last) >= width  # the answer's last place is in the second row
    assert spans_from_positions(last, position_map, texts) == [None, EXPECTED]

    gen.copy_head.occurrence = 0  # the answer's places: the first text, the second title, the second text
    at = copy_positions(gen, fused_ids, fused_mask, [answer_ids(gen)], encoder_outputs=fused)[0]
    start = first.text.index(ANSWER)
    assert spans_from_positions(at, position_map, texts) == [
        {"start": start, "end": start + len(ANSWER), "text": ANSWER}, None]
    gen.copy_head.occurrence = 1
    title = copy_positions(gen, fused_ids, fused_mask, [answer_ids(gen)], encoder_outputs=fused)[0]
    assert title and spans_from_positions(title, position_map, texts) == [None, None]


def test_fid_answers_find_their_spans_over_the_fused_source(bert2bert):
    """What RAG.answer does for the fid reader (`fused=True`): one pass over the question's passages side
    by side, so the forced head's "last place of the answer" is in the second passage only, where a
    row-by-row pass finds one in each passage."""
    gen = forced(bert2bert)
    first = Passage("first", "One", f"It was {ANSWER} who wrote it.")
    start = first.text.index(ANSWER)
    row_by_row = copied_spans(gen, [QUESTION], [[first, AUTHOR]], [answer_ids(gen)])
    assert row_by_row == [[{"start": start, "end": start + len(ANSWER), "text": ANSWER}, EXPECTED]]
    assert copied_spans(gen, [QUESTION], [[first, AUTHOR]], [answer_ids(gen)], fused=True) == [[None, EXPECTED]]
    with pytest.raises(RagloopError, match="same number of passages"):
        copied_spans(gen, [QUESTION, QUESTION], [[first, AUTHOR], [AUTHOR]], [answer_ids(gen)] * 2, fused=True)


def test_spans_merge_neighbouring_positions_and_take_the_longest_run():
    texts = ["abc def ghi", "xyz"]
    position_map = {5: (0, 0, 3), 6: (0, 4, 7), 7: (0, 8, 11), 9: (1, 0, 3)}
    assert spans_from_positions([7, 6, 6, 2, 40], position_map, texts) == [
        {"start": 4, "end": 11, "text": "def ghi"}, None]  # 2 and 40 are not passage text
    assert spans_from_positions([5, 7, 9], position_map, texts) == [  # two runs of one: the first
        {"start": 0, "end": 3, "text": "abc"}, {"start": 0, "end": 3, "text": "xyz"}]
    assert spans_from_positions([], position_map, texts) == [None, None]


# -- through the model, the CLI and the server ----------------------------------------------------


class DecodedRAG(RAG):
    """A RAG model whose reader decodes `decoded` for every question (the decoder is not under test
    here: spans come from a teacher-forced pass of whatever it answered)."""

    decoded: list[int] = []

    def _generate_ids(self, questions, ctx, num_beams, max_new_tokens):
        return [list(self.decoded) for _ in questions]


@pytest.fixture(scope="module")
def copying_rag(tmp_path_factory, tiny_encoder, bert2bert) -> RAG:
    index = Index.build([PLAYS, AUTHOR], tiny_encoder, tmp_path_factory.mktemp("spans") / "idx", progress=False)
    gen = forced(bert2bert)
    rag = DecodedRAG(index, tiny_encoder.question, gen, RAGConfig(n_docs=2, max_source_length=gen.max_source_length))
    rag.decoded = answer_ids(gen)
    return rag


def test_rag_answer_carries_each_passages_copied_span(copying_rag):
    ans = copying_rag.answer(QUESTION)
    assert ans.answer == ANSWER.lower().replace("á", "a")  # the MiniLM vocabulary is uncased, unaccented
    copied = {p["id"]: p["copied"] for p in ans.passages}
    assert copied == {"plays": None, "author": EXPECTED}
    assert {p["id"]: p["copied"] for p in ans.to_dict()["passages"]} == copied


def test_cached_answers_keep_their_spans_and_hand_out_copies(copying_rag):
    from ragloop.retrieval.cache import RetrievalCache

    copying_rag.retriever.cache = RetrievalCache()
    try:
        first = copying_rag.answer(QUESTION)
        next(p for p in first.passages if p["id"] == "author")["copied"]["text"] = "changed by a caller"
        again = copying_rag.answer(QUESTION)
        assert copying_rag.retriever.cache.stats()["answers"]["hits"] == 1
        assert next(p for p in again.passages if p["id"] == "author")["copied"] == EXPECTED
    finally:
        copying_rag.retriever.cache = None


@pytest.mark.parametrize("mode", ["sequence", "token"])
def test_answer_finds_spans_without_encoding_the_passages_again(tmp_path, tiny_bert_dir, bert2bert, mode):
    """Whichever reader decodes, the spans' teacher-forced pass reuses the decoder's encoding."""
    head = CopyHead(bert2bert.copy_head.hidden_size, bert2bert.copy_head.key.in_features)
    head.load_state_dict(bert2bert.copy_head.state_dict())
    with torch.no_grad():
        head.gate.bias.fill_(-30.0)  # copies whatever its (untrained) attention points at: a non-empty answer
    gen = Generator(bert2bert.model, bert2bert.tokenizer, copy_head=head)
    encoder = Encoder.from_pretrained(str(tiny_bert_dir))
    rag = RAG(Index.build([PLAYS, AUTHOR], BiEncoder(encoder), tmp_path / "idx", progress=False), encoder, gen,
              RAGConfig(n_docs=2, mode=mode))
    calls = []
    hook = gen.model.get_encoder().register_forward_hook(lambda module, args, out: calls.append(1))
    try:
        ans = rag.answer(QUESTION, max_new_tokens=3)
    finally:
        hook.remove()
    assert ans.answer and len(calls) == 1
    spans = [p["copied"] for p in ans.passages if p["copied"]]
    assert spans and all(p["text"][c["start"] : c["end"]] == c["text"] for p in ans.passages if (c := p["copied"]))


def test_ragloop_answer_marks_the_copied_span(copying_rag, monkeypatch, capsys):
    monkeypatch.setattr(RAG, "from_pretrained", classmethod(lambda cls, path, verify=True: copying_rag))
    capsys.readouterr()
    assert main(["answer", "some/model", QUESTION, "--json", "--no-cache"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {p["id"]: p["copied"] for p in out["passages"]} == {"plays": None, "author": EXPECTED}
    assert main(["answer", "some/model", QUESTION, "--no-cache"]) == 0
    printed = capsys.readouterr().out
    assert f"written by «{ANSWER}», not by" in printed
    assert printed.count("«") == 1  # the passage it did not copy from is printed unmarked


def test_a_span_deep_in_a_long_passage_is_printed_in_view():
    from ragloop.cli import _snippet

    text = "word " * 80 + ANSWER + " wrote it" + " and more" * 40
    start = text.index(ANSWER)
    shown = _snippet(text, {"start": start, "end": start + len(ANSWER), "text": ANSWER})
    assert shown.startswith("...word ") and f"word «{ANSWER}» wrote it and more" in shown and shown.endswith("...")
    assert len(shown) < 180
    assert _snippet("short text", None) == "short text" and _snippet(text, None) == text[:160] + "..."


def test_the_answer_endpoint_returns_the_copied_span(copying_rag):
    with TestClient(create_app(copying_rag, threads=1)) as client:
        r = client.post("/answer", json={"question": QUESTION})
    assert r.status_code == 200, r.text
    passages = {p["id"]: p for p in r.json()["passages"]}
    assert passages["author"]["copied"] == EXPECTED
    assert "copied" not in passages["plays"]  # None fields are left out, like `source`
