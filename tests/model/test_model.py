"""The RAG model: losses against brute-force enumeration, gradients, decoding, save/load."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from ragloop import Encoder, Passage, RagloopError
from ragloop.generation import Generator
from ragloop.generation.decoding import cut_at_eos
from ragloop.generation.readers import rag_sequence_loss, rag_token_loss
from ragloop.model import RAG, Answer, RAGConfig

QUESTIONS = ["Which NFL team represented the AFC at Super Bowl 50?", "Where did Super Bowl 50 take place?"]
ANSWERS = ["Denver Broncos", "Levi's Stadium in Santa Clara"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def passage_encoder(encoder) -> Encoder:
    """The passage side of the shared `index` (conftest.py)."""
    return encoder.passage


@pytest.fixture(scope="module")
def bert2bert(tiny_bert_dir) -> Generator:
    torch.manual_seed(0)
    return Generator.from_encoder_decoder(str(tiny_bert_dir), str(tiny_bert_dir))


def make_rag(index, tiny_bert_dir, generator, **config) -> RAG:
    return RAG(index, Encoder.from_pretrained(str(tiny_bert_dir)), generator, RAGConfig(**config))


# -- losses ---------------------------------------------------------------------------------------


def toy_tensors(b=3, k=4, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    doc_logprobs = torch.log_softmax(torch.randn(b, k, generator=g), dim=-1)
    token_logprobs = torch.log(torch.rand(b, k, t, generator=g) * 0.98 + 0.01)
    lengths = torch.tensor([t, t - 2, 1])[:b]
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    garbage = token_logprobs.clone()
    garbage[~mask.unsqueeze(1).expand_as(garbage)] = float("nan")  # padded positions must not matter
    return doc_logprobs, token_logprobs, garbage, mask


def test_rag_sequence_loss_equals_enumeration():
    doc_lp, tok_lp, with_nan_pads, mask = toy_tensors()
    loss = rag_sequence_loss(doc_lp, with_nan_pads, mask)
    for b in range(doc_lp.shape[0]):
        total = 0.0
        for z in range(doc_lp.shape[1]):
            p_y = 1.0
            for t in range(mask.shape[1]):
                if mask[b, t]:
                    p_y *= math.exp(tok_lp[b, z, t].item())
            total += math.exp(doc_lp[b, z].item()) * p_y
        assert loss[b].item() == pytest.approx(-math.log(total), rel=1e-5)


def test_rag_token_loss_equals_enumeration():
    doc_lp, tok_lp, with_nan_pads, mask = toy_tensors(seed=1)
    loss = rag_token_loss(doc_lp, with_nan_pads, mask)
    for b in range(doc_lp.shape[0]):
        nll = 0.0
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            marginal = sum(math.exp(doc_lp[b, z].item() + tok_lp[b, z, t].item()) for z in range(doc_lp.shape[1]))
            nll -= math.log(marginal)
        assert loss[b].item() == pytest.approx(nll, rel=1e-5)


def test_losses_agree_with_one_document_and_give_finite_gradients():
    doc_lp, tok_lp, _, mask = toy_tensors(k=1)
    expected = -(tok_lp[:, 0] * mask).sum(-1)
    for fn in (rag_sequence_loss, rag_token_loss):
        assert torch.allclose(fn(doc_lp, tok_lp, mask), expected, atol=1e-5)
    doc_lp, _, with_nan_pads, mask = toy_tensors(seed=2)
    doc_lp.requires_grad_(True)
    for fn in (rag_sequence_loss, rag_token_loss):
        fn(doc_lp, with_nan_pads, mask).sum().backward()
        assert torch.isfinite(doc_lp.grad).all()


# -- generator inputs -----------------------------------------------------------------------------


def test_generator_puts_question_first_and_truncates_the_passage(tiny_bert_dir):
    gen = Generator.from_encoder_decoder(str(tiny_bert_dir), str(tiny_bert_dir))
    tok = gen.tokenizer
    gen.max_source_length = 24
    long = Passage("p-long", "Title", "word " * 200)
    short = Passage("p-short", "Other", "a short passage")
    batch = gen.build_inputs(["who is it?"], [[long, short]])
    assert batch["input_ids"].shape == (2, 24)
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert all(r[0] == tok.cls_token_id and r[-1] == tok.sep_token_id for r in rows)
    assert len(rows[0]) == 24 and len(rows[1]) < 24
    assert tok.decode(rows[0][1:-1]).startswith("question : who is it? title : title context : word")
    assert tok.decode(rows[1][1:-1]) == "question : who is it? title : other context : a short passage"
    assert {pid for pid, _ in gen._passage_cache} == {"p-long", "p-short"}  # one entry per passage


def test_targets_end_with_eos_and_mask_pads(t5):
    labels = t5.tokenize_targets(["Denver Broncos", "x"])
    assert labels.shape[0] == 2
    assert labels[1, 1].item() == t5.eos_token_id and (labels[1, 2:] == -100).all()
    assert t5.decoder_inputs(labels)[:, 0].eq(t5.decoder_start_token_id).all()


@pytest.mark.parametrize("answer", ["1,000", "post-war", "5.5 million", "10:30 p.m.", "U.S. Army", "O'Hara",
                                    "1981\u201382", "and/or"])
def test_wordpiece_decoding_keeps_numbers_and_hyphenated_words_whole(bert2bert, answer):
    """A BERT tokenizer decodes "1,000" as "1, 000", which SQuAD's F1 would score as two wrong words."""
    from ragloop.evaluation.metrics import f1_score

    ids = bert2bert.tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert f1_score(bert2bert.decode([ids])[0], [answer]) == 1.0


def test_wordpiece_decoding_leaves_lists_apart():
    from ragloop.generation.generator import join_wordpiece_punctuation

    assert join_wordpiece_punctuation("1999, 2000 and 2001") == "1999, 2000 and 2001"
    assert join_wordpiece_punctuation("john f. kennedy") == "john f. kennedy"
    assert join_wordpiece_punctuation("j. s. bach") == "j. s. bach"  # initials are separate words in SQuAD too


# -- training signal ------------------------------------------------------------------------------


def test_gradient_reaches_question_encoder_not_passage_side(index, tiny_bert_dir, t5, passage_encoder):
    rag = make_rag(index, tiny_bert_dir, t5, n_docs=3, mode="token")
    out = rag(QUESTIONS, ANSWERS)
    assert out.loss.dim() == 0 and out.losses.shape == (2,) and out.doc_scores.shape == (2, 3)
    out.loss.backward()
    grads = [p.grad for p in rag.question_encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in passage_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in rag.generator.parameters())
    rag.zero_grad()


def test_given_passages_use_a_uniform_prior(index, tiny_bert_dir, t5):
    rag = make_rag(index, tiny_bert_dir, t5, mode="sequence")
    gold = [[Passage("gold", "Super Bowl 50", "The Denver Broncos defeated the Carolina Panthers.")]] * 2
    with torch.no_grad():
        out = rag(QUESTIONS, ANSWERS, passages=gold)
        batch = t5.build_inputs(QUESTIONS, gold)
        direct = -t5(batch["input_ids"], batch["attention_mask"], t5.tokenize_targets(ANSWERS)).sum(-1)
    assert torch.allclose(out.losses, direct, atol=1e-5)
    with pytest.raises(RagloopError, match="same, non-zero number"):
        rag(QUESTIONS, ANSWERS, passages=[gold[0], []])


@pytest.mark.own_copy  # re-encodes the index
def test_train_passage_encoder_gets_gradient_and_reindexes(index, tiny_bert_dir, t5, tmp_path):
    trained = Encoder.from_pretrained(str(tiny_bert_dir))
    rag = RAG(index, Encoder.from_pretrained(str(tiny_bert_dir)), t5,
              RAGConfig(n_docs=2, train_passage_encoder=True), passage_encoder=trained)
    rag(QUESTIONS, ANSWERS).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())
    rag.zero_grad()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    old = index.backend
    try:
        rag.reindex(progress=False)
        assert index.backend is not old and len(index.backend) == len(old)
        rows = np.arange(len(index))  # the new vectors are the trained encoder's
        with torch.no_grad():
            fresh = trained.encode([p.title for p in index.store], [p.text for p in index.store], progress=False)
        assert np.allclose(index.vectors(rows), fresh, atol=1e-5)
        assert not np.allclose(old.vectors(rows), fresh, atol=1e-3)
        rag.save_pretrained(tmp_path / "rag")  # writes an index that matches the new vectors
        loaded = RAG.from_pretrained(tmp_path / "rag")
        assert loaded.passage_encoder is not None
        assert loaded.retrieve(QUESTIONS).rows.tolist() == rag.retrieve(QUESTIONS).rows.tolist()
    finally:
        index.backend = old


@pytest.mark.parametrize("search_mode", ["bm25", "hybrid"])
def test_sparse_and_hybrid_search_fill_k_passages(index, tiny_bert_dir, t5, search_mode):
    rag = make_rag(index, tiny_bert_dir, t5, n_docs=4, search_mode=search_mode)
    ctx = rag.retrieve([QUESTIONS[0], "zzqx vvkq"])  # the second matches nothing in BM25: dense fills it
    assert ctx.rows.shape == (2, 4) and (ctx.rows >= 0).all()
    assert all(len(set(r)) == 4 for r in ctx.rows.tolist())
    assert torch.allclose(ctx.doc_logprobs.exp().sum(-1), torch.ones(2))


# -- generation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sequence", "token"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_returns_one_string_per_question(index, tiny_bert_dir, t5, mode, num_beams):
    rag = make_rag(index, tiny_bert_dir, t5, n_docs=3, mode=mode)
    out = rag.generate(QUESTIONS, num_beams=num_beams, max_new_tokens=5)
    assert len(out) == len(QUESTIONS) and all(isinstance(s, str) for s in out)


def _hf_ids(gen: Generator, inputs: dict, num_beams: int, max_new_tokens: int) -> list[list[int]]:
    out = gen.model.generate(**inputs, num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False)
    eos = gen.eos_token_id
    return [row[: row.index(eos) + 1] if eos in row else row for row in out[:, 1:].tolist()]


@pytest.mark.parametrize("which", ["t5", "bert2bert"])
@pytest.mark.parametrize("mode", ["token", "sequence"])
def test_one_document_decoding_equals_hf_generate(index, tiny_bert_dir, which, mode, request):
    """With k=1 both RAG decoders reduce to the generator's own decoding: token for token for greedy
    and beam search, including when eos ends some hypotheses early."""
    gen: Generator = request.getfixturevalue(which)
    rag = make_rag(index, tiny_bert_dir, gen, n_docs=1, mode=mode)
    ctx = rag.retrieve(QUESTIONS)
    inputs = gen.build_inputs(QUESTIONS, ctx.passages)
    config, gen_config = gen.model.config.eos_token_id, gen.model.generation_config.eos_token_id
    try:
        for eos_from in (None, 1):  # the real eos, then a token it actually emits (so eos gets exercised)
            if eos_from is not None:
                eos = _hf_ids(gen, inputs, 1, 8)[0][eos_from]
                gen.model.config.eos_token_id = gen.model.generation_config.eos_token_id = eos
            for num_beams in (1, 3) if mode == "token" else (1,):
                hf = _hf_ids(gen, inputs, num_beams, 8)
                assert rag._generate_ids(QUESTIONS, ctx, num_beams, 8) == hf
            assert rag.generate(QUESTIONS, num_beams=num_beams, max_new_tokens=8) == gen.decode(hf)
    finally:
        gen.model.config.eos_token_id, gen.model.generation_config.eos_token_id = config, gen_config


def test_rag_token_greedy_marginalises_over_documents(index, tiny_bert_dir, t5):
    """k=3: each greedy token is the argmax of Σ_z p(z|x) p(y_t|x,z,y<t), recomputed without a cache."""
    rag = make_rag(index, tiny_bert_dir, t5, n_docs=3, mode="token")
    with torch.no_grad():
        ctx = rag.retrieve(QUESTIONS)
        ctx.doc_logprobs = torch.log_softmax(torch.tensor([[0.5, 0.0, -1.0], [-0.3, 1.0, 0.2]]), dim=-1)
        inputs = t5.build_inputs(QUESTIONS, ctx.passages)
        got = rag._generate_ids(QUESTIONS, ctx, 1, 6)
        for b in range(len(QUESTIONS)):
            rows = slice(3 * b, 3 * b + 3)
            prefix: list[int] = []
            while len(prefix) < 6:
                dec = torch.tensor([[t5.decoder_start_token_id] + prefix] * 3)
                logits = t5.model(input_ids=inputs["input_ids"][rows], attention_mask=inputs["attention_mask"][rows],
                                  decoder_input_ids=dec).logits[:, -1]
                marginal = torch.logsumexp(torch.log_softmax(logits, -1) + ctx.doc_logprobs[b].unsqueeze(-1), dim=0)
                prefix.append(int(marginal.argmax()))
                if prefix[-1] == t5.eos_token_id:
                    break
            assert got[b] == prefix


@pytest.mark.parametrize("which", ["bert2bert", "copier"])
def test_rag_sequence_picks_the_best_marginal_candidate(index, tiny_bert_dir, which, request):
    """One greedy candidate per (question, passage) — transformers' generate, or for a copy head the
    generator's own search — each re-scored over all 3 passages; the best marginal wins."""
    gen: Generator = request.getfixturevalue(which)
    rag = make_rag(index, tiny_bert_dir, gen, n_docs=3, mode="sequence")
    with torch.no_grad():
        ctx = rag.retrieve(QUESTIONS)
        inputs = gen.build_inputs(QUESTIONS, ctx.passages)
        got = rag._generate_ids(QUESTIONS, ctx, 1, 5)
        if gen.copy_head is None:
            candidates = _hf_ids(gen, inputs, 1, 5)
        else:
            candidates = [cut_at_eos(ids, gen.eos_token_id) for ids in gen.generate(inputs, max_new_tokens=5)]
            # passages that disagree, so the re-scoring is what picks the answer
            assert any(len({tuple(c) for c in candidates[3 * b : 3 * b + 3]}) > 1 for b in range(len(QUESTIONS)))
        for b in range(len(QUESTIONS)):
            rows = slice(3 * b, 3 * b + 3)
            scores = {}
            for cand in candidates[rows]:
                labels = torch.tensor([cand] * 3)
                seq = gen(inputs["input_ids"][rows], inputs["attention_mask"][rows], labels).sum(-1)
                scores[tuple(cand)] = torch.logsumexp(ctx.doc_logprobs[b] + seq, dim=0).item()
            assert tuple(got[b]) == max(scores, key=scores.get)


def test_answer_returns_text_and_passages(index, tiny_bert_dir, t5):
    rag = make_rag(index, tiny_bert_dir, t5, n_docs=2)
    ans = rag.answer(QUESTIONS[0], k=3)
    assert isinstance(ans, Answer) and ans.question == QUESTIONS[0] and isinstance(ans.answer, str)
    assert len(ans.passages) == 3 and set(ans.passages[0]) == {"id", "title", "text", "source", "score", "copied"}
    assert all(p["copied"] is None for p in ans.passages)  # a generator without a copy head points at nothing
    assert [a.question for a in rag.answer(QUESTIONS)] == QUESTIONS


def test_empty_question_raises(index, tiny_bert_dir, t5):
    rag = make_rag(index, tiny_bert_dir, t5)
    with pytest.raises(RagloopError, match="empty"):
        rag.answer("   ")
    with pytest.raises(RagloopError, match="empty"):
        rag(["", QUESTIONS[1]], ANSWERS)
    with pytest.raises(RagloopError, match="unknown RAG mode"):
        RAGConfig(mode="both")
    with pytest.raises(RagloopError, match=r"question 0 is not a string \(got bytes\)"):
        rag.answer([b"who?"])
    with pytest.raises(RagloopError, match=r"questions must be a string or a list of strings \(got dict\)"):
        rag.answer({QUESTIONS[0]: 1})


def test_models_load_from_path_objects(index, tiny_bert_dir, tiny_t5_dir):
    """pathlib.Path works wherever a model name or path is taken."""
    assert Encoder.from_pretrained(tiny_bert_dir).spec.name == str(tiny_bert_dir.resolve())
    gen = Generator.from_pretrained(tiny_t5_dir)
    rag = RAG.from_index(index.path, generator=tiny_t5_dir, question_encoder=tiny_bert_dir,
                         config=RAGConfig(n_docs=2))
    assert isinstance(gen, Generator) and len(rag.retrieve([QUESTIONS[0]]).passages[0]) == 2


# -- saving and loading ---------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_loss(index, tiny_bert_dir, t5, tmp_path):
    rag = make_rag(index, tiny_bert_dir, t5, n_docs=3, mode="token")
    with torch.no_grad():
        rag.question_encoder.model.embeddings.word_embeddings.weight.mul_(1.5)  # "fine-tuned"
        before = rag(QUESTIONS, ANSWERS)
    rag.save_pretrained(tmp_path / "rag")
    assert (tmp_path / "rag" / "index" / "manifest.json").is_file()
    loaded = RAG.from_pretrained(tmp_path / "rag")
    assert loaded.config == rag.config
    with torch.no_grad():
        after = loaded(QUESTIONS, ANSWERS)
    assert torch.equal(before.losses, after.losses) and torch.equal(before.doc_scores, after.doc_scores)
    loaded.save_pretrained(tmp_path / "rag")  # again, over itself: the index inside is kept
    with torch.no_grad():
        assert torch.equal(RAG.from_pretrained(tmp_path / "rag")(QUESTIONS, ANSWERS).losses, before.losses)


def test_corrupt_or_missing_pieces_raise(index, tiny_bert_dir, t5, tmp_path):
    make_rag(index, tiny_bert_dir, t5).save_pretrained(tmp_path / "rag")
    weights = tmp_path / "rag" / "generator" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:1000])
    with pytest.raises(RagloopError, match="model.safetensors"):
        RAG.from_pretrained(tmp_path / "rag")
    weights.write_bytes(b"\xff" * 16 + good[16:])  # same size, so only loading can tell
    with pytest.raises(RagloopError, match="generator"):
        RAG.from_pretrained(tmp_path / "rag", verify=False)
    weights.write_bytes(good)
    shutil.rmtree(tmp_path / "rag" / "question_encoder")
    with pytest.raises(RagloopError, match="question_encoder"):
        RAG.from_pretrained(tmp_path / "rag")
    with pytest.raises(RagloopError, match="rag_config.json"):
        RAG.from_pretrained(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RagloopError, match="refusing to overwrite"):
        make_rag(index, tiny_bert_dir, t5).save_pretrained(tmp_path / "other")


@pytest.mark.slow
def test_bundled_bert2bert_saves_and_loads(tmp_path):
    gen = Generator.from_pretrained("bundled:minilm-bert2bert")
    tok = gen.tokenizer
    assert gen.decoder_start_token_id == tok.cls_token_id and gen.eos_token_id == tok.sep_token_id
    gen.save_pretrained(tmp_path / "gen")
    again = Generator.from_pretrained(str(tmp_path / "gen"))
    assert again.name == "bundled:minilm-bert2bert" and again.copy_head is not None
    passages = [[Passage("p", "Super Bowl 50", "The Denver Broncos won Super Bowl 50.")]]
    batch = gen.build_inputs(QUESTIONS[:1], passages)
    labels = gen.tokenize_targets(ANSWERS[:1])
    with torch.no_grad():
        assert torch.equal(gen(batch["input_ids"], batch["attention_mask"], labels),
                           again(batch["input_ids"], batch["attention_mask"], labels))


def test_untrained_parameters_are_the_warm_start_s_new_layers(bert2bert, t5, tmp_path):
    names = {id(p): n for n, p in bert2bert.model.named_parameters()}
    new = [names[id(p)] for p in bert2bert.untrained_parameters()]
    assert new and all("crossattention" in n or ".predictions." in n for n in new)
    assert any("crossattention" in n for n in new) and "decoder.cls.predictions.transform.dense.weight" in new
    # the output projection is tied to the word embeddings, which the warm start did train
    embeddings = bert2bert.model.decoder.get_input_embeddings().weight
    assert all(p is not embeddings for p in bert2bert.untrained_parameters())
    # chosen by name: a saved and reloaded generator (as --resume loads it) has the same ones
    bert2bert.save_pretrained(tmp_path / "gen")
    reloaded = Generator.from_pretrained(str(tmp_path / "gen"))
    names2 = {id(p): n for n, p in reloaded.model.named_parameters()}
    assert [names2[id(p)] for p in reloaded.untrained_parameters()] == new
    assert t5.untrained_parameters() == []


def test_warm_start_gives_new_layers_a_useful_start_not_noise(bert2bert, tiny_bert_dir):
    """Cross-attention starts as a copy of its layer's self-attention and the dense layer of the
    LM-head transform the encoder checkpoint lacks as the identity; the encoder's own weights are
    loaded, not re-initialised."""
    from transformers import AutoModel

    decoder = bert2bert.model.decoder
    for layer in decoder.bert.encoder.layer:
        own, cross = layer.attention.state_dict(), layer.crossattention.state_dict()
        assert own.keys() == cross.keys() and all(torch.equal(own[k], cross[k]) for k in own)
        assert layer.attention.self.query.weight is not layer.crossattention.self.query.weight  # copies, not tied
    dense = decoder.cls.predictions.transform.dense
    assert torch.equal(dense.weight, torch.eye(dense.in_features)) and not dense.bias.any()
    checkpoint = AutoModel.from_pretrained(str(tiny_bert_dir))
    assert torch.equal(bert2bert.model.encoder.encoder.layer[0].attention.self.query.weight,
                       checkpoint.encoder.layer[0].attention.self.query.weight)
    assert torch.equal(decoder.bert.encoder.layer[0].attention.self.query.weight,
                       checkpoint.encoder.layer[0].attention.self.query.weight)


def test_warm_start_keeps_a_head_the_decoder_checkpoint_has(tiny_bert_dir, tmp_path):
    """Only what the checkpoint lacks is started anew: a decoder checkpoint with a trained MLM head
    keeps it; with two different checkpoints cross-attention is not copied."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    mlm = BertForMaskedLM(cfg)
    mlm.save_pretrained(tmp_path / "mlm")
    AutoTokenizer.from_pretrained(str(tiny_bert_dir)).save_pretrained(tmp_path / "mlm")
    gen = Generator.from_encoder_decoder(str(tiny_bert_dir), str(tmp_path / "mlm"))
    head = gen.model.decoder.cls.predictions.transform.dense.weight
    assert torch.equal(head, mlm.cls.predictions.transform.dense.weight)
    assert not torch.equal(head, torch.eye(head.shape[0]))
    layer = gen.model.decoder.bert.encoder.layer[0]
    assert not torch.equal(layer.crossattention.self.query.weight, layer.attention.self.query.weight)


# -- copy head (pointer-generator) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def copier(tiny_bert_dir) -> Generator:
    torch.manual_seed(0)
    gen = Generator.from_encoder_decoder(str(tiny_bert_dir), str(tiny_bert_dir), copy=True)
    with torch.no_grad():  # a trained-looking head, not the identity start, so the tests see its weights
        for p in gen.copy_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return gen


def _copy_batch(gen: Generator) -> tuple[dict, torch.Tensor]:
    passages = [[Passage("p1", "Super Bowl 50", "The Denver Broncos won Super Bowl 50.")],
                [Passage("p2", "Super Bowl 50", "It was played at Levi's Stadium in Santa Clara.")]]
    return gen.build_inputs(QUESTIONS, passages), gen.tokenize_targets(ANSWERS)


def test_copy_head_mixes_a_vocabulary_and_a_copy_distribution(copier):
    """Each step is a distribution over the vocabulary; with the gate shut it puts all its mass on
    the source's own tokens (never on padding or special tokens), with the gate open it is the
    decoder's softmax."""
    inputs, labels = _copy_batch(copier)
    encoded = copier.encode(inputs["input_ids"], inputs["attention_mask"])
    dec = copier.decoder_inputs(labels)
    gate_bias = copier.copy_head.gate.bias.detach().clone()
    try:
        with torch.no_grad():
            for bias in (-50.0, 50.0):
                copier.copy_head.gate.bias.fill_(bias)
                steps = [copier.decoder_step(encoded, inputs["attention_mask"], dec[:, : t + 1],
                                             input_ids=inputs["input_ids"])[0] for t in range(dec.shape[1])]
                probs = torch.stack(steps, 1).exp()
                assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:2]), atol=1e-4)
                if bias < 0:
                    for row, ids in enumerate(inputs["input_ids"]):
                        mask = inputs["attention_mask"][row].bool()
                        allowed = set(ids[mask].tolist()) - set(copier.tokenizer.all_special_ids)
                        outside = [v for v in range(probs.shape[-1]) if v not in allowed]
                        assert probs[row][:, outside].sum(-1).max() < 1e-6
                else:
                    logits = copier.model(encoder_outputs=encoded, attention_mask=inputs["attention_mask"],
                                          decoder_input_ids=dec).logits
                    assert torch.allclose(probs, torch.softmax(logits, -1), atol=1e-5)
    finally:
        with torch.no_grad():
            copier.copy_head.gate.bias.copy_(gate_bias)


def test_copy_head_mixture_by_hand(copier):
    """At the trained-looking gate, each step is g softmax(logits) + (1 - g) Σ_s attention_s 1[y = x_s],
    computed here from the head's own layers; a row whose source holds nothing copyable is the
    decoder's softmax alone."""
    inputs, labels = _copy_batch(copier)
    head = copier.copy_head
    with torch.no_grad():
        encoded = copier.encode(inputs["input_ids"], inputs["attention_mask"])
        dec = copier.decoder_inputs(labels)
        out = copier.model(encoder_outputs=encoded, attention_mask=inputs["attention_mask"], decoder_input_ids=dec,
                           output_hidden_states=True)
        states, source = out.decoder_hidden_states[-1], inputs["input_ids"]
        scores = head.query(states) @ head.key(encoded.last_hidden_state).transpose(1, 2) / head.hidden_size**0.5
        ok = inputs["attention_mask"].bool() & ~torch.isin(source, torch.tensor(copier.tokenizer.all_special_ids))
        attention = torch.softmax(scores.masked_fill(~ok[:, None, :], -1e30), -1)
        gate = torch.sigmoid(head.gate(states))
        expected = gate * torch.softmax(out.logits, -1)
        for n in range(source.shape[0]):
            for pos in range(source.shape[1]):
                expected[n, :, source[n, pos]] += (1 - gate[n, :, 0]) * attention[n, :, pos]
        steps = [copier.decoder_step(encoded, inputs["attention_mask"], dec[:, : t + 1], input_ids=source)[0]
                 for t in range(dec.shape[1])]
        assert torch.allclose(torch.stack(steps, 1).exp(), expected, atol=1e-5)
        gold = copier(source, inputs["attention_mask"], labels)
        want = expected.log().gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(labels == -100, 0)
        assert torch.allclose(gold, want, atol=1e-4)
        # nothing to copy: only special tokens in the source
        bare = {"input_ids": source[:, :1], "attention_mask": inputs["attention_mask"][:, :1]}
        enc1 = copier.encode(bare["input_ids"], bare["attention_mask"])
        step = copier.decoder_step(enc1, bare["attention_mask"], dec[:, :1], input_ids=bare["input_ids"])[0]
        plain = copier.model(encoder_outputs=enc1, attention_mask=bare["attention_mask"], decoder_input_ids=dec[:, :1])
        assert torch.allclose(step.exp(), torch.softmax(plain.logits[:, -1], -1), atol=1e-5)


def test_copy_head_cached_decoding_matches_teacher_forcing_and_trains(copier):
    """decoder_step with its cache gives the log-probs forward gives; gradient reaches the head;
    its parameters count as new (the larger learning rate)."""
    inputs, labels = _copy_batch(copier)
    gold = copier(inputs["input_ids"], inputs["attention_mask"], labels)
    encoded = copier.encode(inputs["input_ids"], inputs["attention_mask"])
    with torch.no_grad():
        assert torch.allclose(copier(inputs["input_ids"], inputs["attention_mask"], labels, encoder_outputs=encoded),
                              gold, atol=1e-5)
        dec, past, steps = copier.decoder_inputs(labels), None, []
        for t in range(dec.shape[1]):
            logprobs, past = copier.decoder_step(encoded, inputs["attention_mask"],
                                                 dec[:, : t + 1] if past is None else dec[:, t : t + 1], past,
                                                 input_ids=inputs["input_ids"])
            steps.append(logprobs)
        cached = torch.stack(steps, 1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(cached.masked_fill(labels == -100, 0.0), gold, atol=1e-4)
    gold.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in copier.copy_head.parameters())
    copier.zero_grad()
    new = {id(p) for p in copier.untrained_parameters()}
    assert all(id(p) in new for p in copier.copy_head.parameters())
    with pytest.raises(RagloopError, match="input_ids"):
        copier(None, inputs["attention_mask"], labels, encoder_outputs=encoded)


@pytest.mark.parametrize("mode", ["token", "sequence"])
def test_copy_head_decoding_is_greedy_on_its_own_distribution(index, tiny_bert_dir, copier, mode):
    """With k=1 both RAG decoders give the greedy sequence of the copy-mixed distribution,
    recomputed here from the whole prefix without a cache."""
    rag = make_rag(index, tiny_bert_dir, copier, n_docs=1, mode=mode)
    with torch.no_grad():
        ctx = rag.retrieve(QUESTIONS)
        inputs = copier.build_inputs(QUESTIONS, ctx.passages)
        got = rag._generate_ids(QUESTIONS, ctx, 1, 6)
        for b in range(len(QUESTIONS)):
            row = {name: t[b : b + 1] for name, t in inputs.items()}
            prefix: list[int] = []
            while len(prefix) < 6:
                labels = torch.tensor([prefix + [copier.pad_token_id]])  # the last label is never looked at
                encoded = copier.encode(row["input_ids"], row["attention_mask"])
                step = copier.decoder_step(encoded, row["attention_mask"],
                                           copier.decoder_inputs(labels), input_ids=row["input_ids"])[0]
                prefix.append(int(step.argmax()))
                if prefix[-1] == copier.eos_token_id:
                    break
            assert cut_at_eos(got[b], copier.eos_token_id) == prefix
        assert [cut_at_eos(ids, copier.eos_token_id) for ids in copier.generate(inputs, max_new_tokens=6)] == \
            [cut_at_eos(ids, copier.eos_token_id) for ids in got]


def test_copy_head_saves_loads_and_a_truncated_head_fails_clearly(copier, tmp_path):
    inputs, labels = _copy_batch(copier)
    copier.save_pretrained(tmp_path / "gen")
    again = Generator.from_pretrained(str(tmp_path / "gen"))
    assert again.copy_head is not None
    with torch.no_grad():
        assert torch.equal(copier(inputs["input_ids"], inputs["attention_mask"], labels),
                           again(inputs["input_ids"], inputs["attention_mask"], labels))
    head = tmp_path / "gen" / "copy_head.safetensors"
    head.write_bytes(head.read_bytes()[:100])
    with pytest.raises(RagloopError, match="copy_head.safetensors"):
        Generator.from_pretrained(str(tmp_path / "gen"))


def test_copy_head_beam_search_with_passages_matches_recomputing_every_step(index, tiny_bert_dir, copier,
                                                                           monkeypatch):
    """k=2, 2 beams: the cached search (beams reorder the cache, the copy keys stay per passage)
    gives what recomputing every step from the whole prefix gives."""
    rag = make_rag(index, tiny_bert_dir, copier, n_docs=2, mode="token")
    with torch.no_grad():
        ctx = rag.retrieve(QUESTIONS)
        cached = rag._generate_ids(QUESTIONS, ctx, 2, 6)
        step = copier.decoder_step
        monkeypatch.setattr(copier, "decoder_step", lambda enc, att, tokens, past=None, **kw:
                            (step(enc, att, tokens, None, **kw)[0], None))  # no cache: full prefix every step
        assert rag._generate_ids(QUESTIONS, ctx, 2, 6) == cached
