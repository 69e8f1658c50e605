"""Fusion-in-Decoder: fused encoder states, its loss and decoding against hand computations through
the generator's own model, perplexity distillation of the retriever, the copy head across passages,
save/load, and `ragloop train --rag_mode fid`."""

from __future__ import annotations

import json

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutput

import ragloop.generation.readers as readers
from ragloop import Encoder, Passage, RagloopError
from ragloop.config import TrainConfig
from ragloop.constants import READER_MODES
from ragloop.generation import Generator
from ragloop.generation.fusion import fuse
from ragloop.generation.readers import distillation_loss, fid_loss
from ragloop.model import RAG, RAGConfig

QUESTIONS = ["Which NFL team represented the AFC at Super Bowl 50?", "Where did Super Bowl 50 take place?"]
ANSWERS = ["Denver Broncos", "Levi's Stadium in Santa Clara"]
PASSAGES = [
    [Passage("a", "Weather", "It rained in Oregon for most of the week."),
     Passage("b", "Super Bowl 50", "The Denver Broncos won Super Bowl 50 against the Carolina Panthers."),
     Passage("c", "Football", "The game was watched by many people.")],
    [Passage("d", "Stadium", "Levi's Stadium is in Santa Clara, California."),
     Passage("e", "Halftime", "Beyonce and Coldplay performed at halftime of the game."),
     Passage("f", "Teams", "Two teams played.")],
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def copier(tiny_bert_dir) -> Generator:
    torch.manual_seed(0)
    gen = Generator.from_encoder_decoder(str(tiny_bert_dir), str(tiny_bert_dir), copy=True)
    gen.model.eval()
    return gen


def make_rag(index, tiny_bert_dir, generator, **config) -> RAG:
    return RAG(index, Encoder.from_pretrained(str(tiny_bert_dir)), generator, RAGConfig(**config))


def compact_fused_states(gen: Generator, inputs: dict, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per question: (encoder states [1, S, H], source ids [1, S]) of its k passages, each encoded on
    its own WITHOUT padding and concatenated: FiD as the paper writes it."""
    out = []
    for b in range(inputs["input_ids"].shape[0] // k):
        states, ids = [], []
        for row in range(b * k, (b + 1) * k):
            real = inputs["input_ids"][row][inputs["attention_mask"][row].bool()].unsqueeze(0)
            states.append(gen.model.get_encoder()(input_ids=real).last_hidden_state)
            ids.append(real)
        out.append((torch.cat(states, 1), torch.cat(ids, 1)))
    return out


# -- fusing ---------------------------------------------------------------------------------------


def test_fuse_concatenates_each_question_s_passages(t5):
    inputs = t5.build_inputs(QUESTIONS, PASSAGES)
    rows, length = inputs["input_ids"].shape
    with torch.no_grad():
        encoded = t5.encode(inputs["input_ids"], inputs["attention_mask"])
        fused, fused_inputs = fuse(encoded, inputs, 3)
    hidden = encoded.last_hidden_state.shape[-1]
    assert rows == 6 and fused.last_hidden_state.shape == (2, 3 * length, hidden)
    assert fused_inputs["attention_mask"].shape == fused_inputs["input_ids"].shape == (2, 3 * length)
    for b in range(2):
        for k in range(3):
            span = slice(k * length, (k + 1) * length)
            assert torch.equal(fused.last_hidden_state[b, span], encoded.last_hidden_state[b * 3 + k])
            assert torch.equal(fused_inputs["attention_mask"][b, span], inputs["attention_mask"][b * 3 + k])
            assert torch.equal(fused_inputs["input_ids"][b, span], inputs["input_ids"][b * 3 + k])
    with pytest.raises(RagloopError, match="not k=4 passages"):
        fuse(encoded, inputs, 4)


# -- the reader's loss ----------------------------------------------------------------------------


def test_fid_loss_is_one_decoder_pass_over_the_concatenated_passages(index, tiny_bert_dir, t5):
    """The answer's NLL equals the model's own forward on each question's passages encoded apart
    (unpadded) and concatenated; given passages carry no retriever gradient, so nothing is added."""
    rag = make_rag(index, tiny_bert_dir, t5, n_docs=3, mode="fid").eval()
    inputs = t5.build_inputs(QUESTIONS, PASSAGES)
    labels = t5.tokenize_targets(ANSWERS)
    with torch.no_grad():
        out = rag(QUESTIONS, ANSWERS, passages=PASSAGES)
        by_hand = []
        for b, (states, _) in enumerate(compact_fused_states(t5, inputs, 3)):
            logits = t5.model(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                              decoder_input_ids=t5.decoder_inputs(labels[b : b + 1])).logits
            gold = labels[b][labels[b] != -100]
            by_hand.append(-torch.log_softmax(logits[0, : len(gold)], -1)[torch.arange(len(gold)), gold].sum())
    assert out.retriever_loss is None
    assert torch.allclose(out.losses, torch.stack(by_hand), atol=1e-4)
    assert torch.allclose(out.reader_loss, out.loss)


def test_one_passage_fid_is_rag_token(index, tiny_bert_dir, t5):
    """With k=1 there is nothing to fuse: FiD's NLL and its decoding are RAG-Token's (greedy and beam)."""
    one = [[ps[1]] for ps in PASSAGES]
    fid = make_rag(index, tiny_bert_dir, t5, n_docs=1, mode="fid").eval()
    tok = make_rag(index, tiny_bert_dir, t5, n_docs=1, mode="token").eval()
    with torch.no_grad():
        assert torch.allclose(fid(QUESTIONS, ANSWERS, passages=one).losses,
                              tok(QUESTIONS, ANSWERS, passages=one).losses, atol=1e-5)
        ctx = fid._contexts(QUESTIONS, one, None)
        for num_beams in (1, 3):
            assert fid._generate_ids(QUESTIONS, ctx, num_beams, 6) == tok._generate_ids(QUESTIONS, ctx, num_beams, 6)


# -- distillation ---------------------------------------------------------------------------------


def test_distillation_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, generator=g, requires_grad=True)
    scores = -5 * torch.rand(3, 4, generator=g)  # log p(y|x,z) of each passage alone
    doc_logprobs = torch.log_softmax(logits, -1)
    for temperature in (1.0, 0.5):
        loss = distillation_loss(doc_logprobs, scores, temperature)
        for b in range(3):
            w = [float(torch.exp(scores[b, z] / temperature)) for z in range(4)]
            target = [x / sum(w) for x in w]
            retr = [float(p) for p in torch.softmax(logits[b].detach(), -1)]
            kl = sum(t * (torch.log(torch.tensor(t)) - torch.log(torch.tensor(r))) for t, r in zip(target, retr))
            assert loss[b].item() == pytest.approx(float(kl), abs=1e-6)
    # d KL / d logits = p_retr - p_target: the retriever moves towards the reader's preference
    scores.requires_grad_(True)
    distillation_loss(doc_logprobs, scores).sum().backward()
    assert torch.allclose(logits.grad, torch.softmax(logits.detach(), -1) - torch.softmax(scores.detach(), -1),
                          atol=1e-6)
    assert scores.grad is None  # the target is not trained


def test_each_loss_part_trains_only_its_own_side(index, tiny_bert_dir, t5):
    """With retrieval, loss = reader NLL + KL(target || p(z|x)), the target each passage's answer
    likelihood alone; the NLL's gradient reaches only the generator, the KL's only the question encoder."""
    rag = make_rag(index, tiny_bert_dir, t5, n_docs=3, mode="fid", distill_temperature=0.5).eval()
    out = rag(QUESTIONS, ANSWERS)
    assert out.retriever_loss is not None and out.doc_logprobs.requires_grad
    with torch.no_grad():
        inputs = t5.build_inputs(QUESTIONS, out.passages)
        labels = t5.tokenize_targets(ANSWERS)
        alone = t5(inputs["input_ids"], inputs["attention_mask"], labels.repeat_interleave(3, 0)).sum(-1).view(2, 3)
        kl = distillation_loss(out.doc_logprobs, alone, 0.5)
    assert torch.allclose(out.retriever_loss, kl.mean(), atol=1e-5)
    assert torch.allclose(out.loss, out.reader_loss + out.retriever_loss, atol=1e-5)

    ctx = rag.retrieve(QUESTIONS)
    parts = fid_loss(t5, t5.build_inputs(QUESTIONS, ctx.passages), labels, ctx.doc_logprobs, rag.config)
    q_params, g_params = list(rag.question_encoder.parameters()), list(t5.parameters())
    parts.nll.sum().backward(retain_graph=True)
    assert all(p.grad is None for p in q_params)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in g_params)
    rag.zero_grad(set_to_none=True)
    parts.retriever.sum().backward()
    assert all(p.grad is None for p in g_params)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in q_params)
    rag.zero_grad(set_to_none=True)


def test_frozen_question_encoder_costs_no_distillation(index, tiny_bert_dir, t5, monkeypatch):
    rag = make_rag(index, tiny_bert_dir, t5, n_docs=3, mode="fid").eval()
    rag.question_encoder.requires_grad_(False)  # what --question_encoder_lr 0 does

    def no_second_pass(*args, **kwargs):
        raise AssertionError("a frozen retriever needs no per-passage scoring")

    monkeypatch.setattr(readers, "passage_token_logprobs", no_second_pass)
    out = rag(QUESTIONS, ANSWERS)
    assert out.retriever_loss is None and not out.doc_logprobs.requires_grad
    out.loss.backward()
    assert all(p.grad is None for p in rag.question_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t5.parameters())
    rag.zero_grad(set_to_none=True)


# -- decoding -------------------------------------------------------------------------------------


def test_greedy_fid_decoding_is_the_argmax_over_all_passages(index, tiny_bert_dir, t5):
    """Each greedy token is the argmax of the decoder over the concatenated (unpadded) passages,
    recomputed from the whole prefix; beam search runs and gives one answer a question."""
    rag = make_rag(index, tiny_bert_dir, t5, n_docs=3, mode="fid")
    ctx = rag._contexts(QUESTIONS, PASSAGES, None)
    with torch.no_grad():
        greedy = rag._generate_ids(QUESTIONS, ctx, 1, 6)
        inputs = t5.build_inputs(QUESTIONS, PASSAGES)
        for b, (states, _) in enumerate(compact_fused_states(t5, inputs, 3)):
            prefix = [t5.decoder_start_token_id]
            while len(prefix) <= 6 and prefix[-1] != t5.eos_token_id:
                logits = t5.model(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                                  decoder_input_ids=torch.tensor([prefix])).logits
                prefix.append(int(logits[0, -1].argmax()))
            assert greedy[b] == prefix[1:]
        beams = rag.generate(QUESTIONS, num_beams=3, max_new_tokens=6, passages=PASSAGES)
    assert len(beams) == 2 and all(isinstance(s, str) for s in beams)


def test_copy_head_copies_from_every_passage(index, tiny_bert_dir, copier):
    """BERT2BERT with a copy head, the gate shut (copy only): the answer's tokens are only in the
    second passage, and the fused reader still gives them their copy mass; the first passage alone
    cannot. Teacher forcing through the model agrees with the copy head's own formula by hand."""
    rag = make_rag(index, tiny_bert_dir, copier, n_docs=2, mode="fid").eval()
    question = ["Which NFL team represented the AFC at Super Bowl 50?"]
    passages = [[Passage("x", "Weather", "It rained in Oregon."),
                 Passage("y", "Super Bowl 50", "The Denver Broncos won.")]]
    bias = copier.copy_head.gate.bias.detach().clone()
    try:
        with torch.no_grad():
            copier.copy_head.gate.bias.fill_(-30.0)
            fused = rag(question, ["Denver Broncos"], passages=passages).losses
            first_only = rag(question, ["Denver Broncos"], passages=[passages[0][:1]]).losses
            # eos is never copyable: both pay ~30 + log V for it; the first passage alone pays it for every token
            assert first_only.item() - fused.item() > 50

            inputs, labels = copier.build_inputs(question, passages), copier.tokenize_targets(["Denver Broncos"])
            (states, source), = compact_fused_states(copier, inputs, 2)
            out = copier.model(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                               decoder_input_ids=copier.decoder_inputs(labels), output_hidden_states=True)
            head = copier.copy_head
            query = head.query(out.decoder_hidden_states[-1])
            copyable = ~torch.isin(source, torch.tensor(copier.tokenizer.all_special_ids))
            scores = (query @ head.key(states).transpose(1, 2)) / head.hidden_size**0.5
            attention = torch.softmax(scores.masked_fill(~copyable[:, None], float("-inf")), -1)
            gate = torch.sigmoid(head.gate(out.decoder_hidden_states[-1]))[..., 0]
            vocab = torch.softmax(out.logits, -1).gather(-1, labels.unsqueeze(-1))[..., 0]
            copy = (attention * (source[:, None, :] == labels[:, :, None])).sum(-1)
            by_hand = -torch.log(gate * vocab + (1 - gate) * copy).sum()
            assert fused.item() == pytest.approx(by_hand.item(), rel=1e-4)
            second = inputs["input_ids"][1][inputs["attention_mask"][1].bool()]
            denver = copier.tokenizer("denver", add_special_tokens=False)["input_ids"][0]
            assert denver in second.tolist() and denver not in inputs["input_ids"][0].tolist()
            decoded = rag._generate_ids(question, rag._contexts(question, passages, None), 1, 4)[0]
            assert decoded and set(decoded) <= set(source[0].tolist()) | {copier.eos_token_id}  # copies only
    finally:
        with torch.no_grad():
            copier.copy_head.gate.bias.copy_(bias)
    answer = rag.answer(question[0])  # retrieval, FiD decoding and the copied spans (per passage) together
    assert len(answer.passages) == 2 and all("copied" in p for p in answer.passages)
    out = rag(question, ["Denver Broncos"], passages=passages)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in copier.copy_head.parameters())
    rag.zero_grad(set_to_none=True)


# -- config, saving, training ---------------------------------------------------------------------


def test_modes_are_spelled_once_and_bad_settings_fail_clearly():
    assert set(readers.READERS) == set(READER_MODES)
    assert TrainConfig(rag_mode="fid").rag_mode == "fid"
    with pytest.raises(RagloopError, match="fid"):
        RAGConfig(mode="fusion")
    with pytest.raises(RagloopError, match="distill_temperature"):
        RAGConfig(mode="fid", distill_temperature=0.0)
    with pytest.raises(RagloopError, match="distill_temperature"):
        TrainConfig(distill_temperature=-1.0)


def test_save_load_keeps_fid(index, tiny_bert_dir, t5, tmp_path):
    rag = make_rag(index, tiny_bert_dir, t5, n_docs=3, mode="fid", distill_temperature=2.0).eval()
    with torch.no_grad():
        before = rag(QUESTIONS, ANSWERS)
        answers = rag.generate(QUESTIONS, max_new_tokens=5)
    rag.save_pretrained(tmp_path / "rag")
    saved = json.loads((tmp_path / "rag" / "rag_config.json").read_text())["config"]
    assert saved["mode"] == "fid" and saved["distill_temperature"] == 2.0
    loaded = RAG.from_pretrained(tmp_path / "rag").eval()
    assert loaded.config == rag.config
    with torch.no_grad():
        assert torch.equal(loaded(QUESTIONS, ANSWERS).losses, before.losses)
        assert loaded.generate(QUESTIONS, max_new_tokens=5) == answers


def test_train_fid_from_the_command_line(squad_small, tiny_bert_dir, tiny_t5_dir, tmp_path, capsys, monkeypatch):
    """`ragloop train --rag_mode fid` trains both sides (the question encoder by distillation) and
    saves a FiD model; with --question_encoder_lr 0 the question encoder is frozen: no gradient, no
    distillation pass, weights as they were."""
    from ragloop.cli import main

    common = ["train", "--train_file", str(squad_small), "--validation_file", str(squad_small),
              "--question_encoder", str(tiny_bert_dir), "--generator", str(tiny_t5_dir), "--n_docs", "2",
              "--batch_size", "2", "--max_steps", "2", "--eval_steps", "2", "--warmup_steps", "0",
              "--max_eval_examples", "2", "--learning_rate", "1e-2", "--rag_mode", "fid", "--logging_steps", "1",
              "--quiet"]
    start = Encoder.from_pretrained(str(tiny_bert_dir)).model.state_dict()

    def changed(run) -> bool:
        trained = RAG.from_pretrained(run / "best_model")
        assert trained.config.mode == "fid"
        assert isinstance(trained.answer(QUESTIONS[0], k=2).answer, str)
        state = trained.question_encoder.model.state_dict()
        return any(not torch.equal(state[name], start[name]) for name in start)

    main(common + ["--output_dir", str(tmp_path / "fid")])
    assert "trained 2 steps" in capsys.readouterr().out
    assert changed(tmp_path / "fid")
    logged = [r for r in map(json.loads, (tmp_path / "fid" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(logged) == 2 and all(r["retriever_loss"] >= 0 for r in logged)  # a KL
    assert all(r["loss"] == pytest.approx(r["reader_loss"] + r["retriever_loss"], abs=1e-5) for r in logged)

    real = readers.passage_token_logprobs
    calls = []
    monkeypatch.setattr(readers, "passage_token_logprobs", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    main(common + ["--output_dir", str(tmp_path / "frozen"), "--question_encoder_lr", "0"])
    assert not changed(tmp_path / "frozen") and calls == []
    logged = [json.loads(r) for r in (tmp_path / "frozen" / "metrics.jsonl").read_text().splitlines()]
    assert not any("retriever_loss" in r for r in logged)
