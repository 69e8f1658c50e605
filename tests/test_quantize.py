"""Quantized inference (`--quantize int8`, ragloop/quantize.py): close vectors, working answers, what is
reported, and the refusals (training, saving, mixing precisions in one index, unknown modes)."""

import json

import numpy as np
import pytest
import torch

from ragloop.cli import main
from ragloop.errors import RagloopError


def _float_linears(module: torch.nn.Module) -> int:
    return sum(type(m) is torch.nn.Linear for m in module.modules())


def test_int8_minilm_retrieves_like_float32_on_real_text(squad_small):
    """The real encoder: each vector stays close to its float32 twin, and questions find the same paragraph."""
    from ragloop.data import load_qa
    from ragloop.retrieval import Encoder

    examples = load_qa(squad_small)
    contexts = list(dict.fromkeys(e.context for e in examples))
    gold = np.array([contexts.index(e.context) for e in examples])
    fp32 = Encoder.from_pretrained()
    int8 = Encoder.from_pretrained().quantize("int8")
    assert int8.quantization == "int8" and fp32.quantization is None
    assert _float_linears(int8.model) == 0 and _float_linears(fp32.model) > 0  # every linear layer is int8
    found = {}
    for name, enc in (("fp32", fp32), ("int8", int8)):
        p = enc.encode(contexts, progress=False)
        q = enc.encode([e.question for e in examples], progress=False)
        ranked = np.argsort(-(q @ p.T), axis=1)
        found[name] = p, [np.mean((ranked[:, :k] == gold[:, None]).any(1)) for k in (1, 3)]
    (p32, gold32), (p8, gold8) = found["fp32"], found["int8"]
    cos = np.sum(p32 * p8, 1) / np.linalg.norm(p32, axis=1) / np.linalg.norm(p8, axis=1)
    assert cos.min() > 0.95 and cos.mean() > 0.97
    # 139 questions over 12 paragraphs: their own paragraph first about as often, in the top 3 as often
    assert gold8[0] >= gold32[0] - 0.03 and gold8[1] >= gold32[1] - 0.01
    # the fingerprint an index checks is that of the float32 weights
    np.testing.assert_allclose(int8.probe(), fp32.probe(), atol=1e-6)


def test_index_built_int8_records_it_and_takes_queries_in_either_precision(tmp_path, squad_small, tiny_bert_dir,
                                                                           other_bert_dir):
    from ragloop import BiEncoder, Index, Retriever, load_corpus
    from ragloop.retrieval import Encoder

    passages = load_corpus([squad_small])
    encoder = BiEncoder.from_pretrained(tiny_bert_dir)
    encoder.passage.quantize("int8")
    built = Index.build(passages[:8], encoder, tmp_path / "idx", progress=False)
    assert built.manifest["encoder"]["passage"]["quantize"] == "int8"
    for quantize in (None, "int8"):
        r = Retriever.from_index(tmp_path / "idx", quantize=quantize)
        assert len(r.search("Who won Super Bowl 50?", k=3)[0]) == 3
        assert r.describe()["quantize"] == quantize
    with pytest.raises(RagloopError, match="other weights"):  # another model, quantized, is still refused
        built.check_question_encoder(Encoder.from_pretrained(other_bert_dir).quantize("int8"))
    with pytest.raises(RagloopError, match="would mix"):
        built.add(passages[8:12], BiEncoder.from_pretrained(tiny_bert_dir))
    assert built.add(passages[8:12]) == 4  # the manifest's encoder, quantized as the build was
    assert Index.load(tmp_path / "idx").manifest["encoder"]["passage"]["quantize"] == "int8"


def test_quantized_rag_answers_reports_and_refuses_training_and_saving(rag_dir, tmp_path):
    from ragloop.model import RAG

    rag = RAG.from_pretrained(rag_dir).quantize("int8")
    assert rag.describe()["quantize"] == "int8" and rag.describe()["retrieval"]["quantize"] == "int8"
    assert rag.describe()["lm_head_quantized"] is False
    assert isinstance(rag.generator.model.get_output_embeddings(), torch.nn.Linear)  # the LM head stays float32
    answers = rag.answer(["Who won Super Bowl 50?", "Where is Warsaw?"], k=2)
    assert [len(a.passages) for a in answers] == [2, 2] and all(isinstance(a.answer, str) for a in answers)
    with pytest.raises(RagloopError, match="cannot train this RAG model: it is quantized"):
        rag(["Who won Super Bowl 50?"], ["Denver Broncos"])
    with pytest.raises(RagloopError, match="cannot train encoder"):
        rag.question_encoder.encode_with_grad(["a question"])
    with pytest.raises(RagloopError, match="cannot save this RAG model"):
        rag.save_pretrained(tmp_path / "saved")
    with pytest.raises(RagloopError, match="cannot save generator"):
        rag.generator.save_pretrained(tmp_path / "gen")
    assert not (tmp_path / "saved").exists()
    with torch.no_grad():  # scoring without gradients is inference, and allowed
        assert rag(["Who won Super Bowl 50?"], ["Denver Broncos"]).loss.isfinite()


def test_lm_head_quantized_only_when_asked_and_copy_head_never(tiny_bert_dir):
    from ragloop.data.corpus import Passage
    from ragloop.generation import Generator

    gen = Generator.from_encoder_decoder(tiny_bert_dir, tiny_bert_dir, copy=True).quantize("int8", lm_head=True)
    assert gen.lm_head_quantized and not isinstance(gen.model.get_output_embeddings(), torch.nn.Linear)
    assert _float_linears(gen.copy_head) == 3 and _float_linears(gen.model) == 0
    inputs = gen.build_inputs(["who won?"], [[Passage("p", "Super Bowl", "The Denver Broncos won.")]])
    assert len(gen.generate(inputs, num_beams=2, max_new_tokens=4)) == 1


def test_the_lm_head_is_one_flag_value_away_on_the_command_line(tiny_bert_dir):
    from ragloop.cli import build_parser
    from ragloop.generation import Generator

    gen = Generator.from_encoder_decoder(tiny_bert_dir, tiny_bert_dir).quantize("int8-lm-head")
    assert gen.quantization == "int8" and gen.lm_head_quantized  # what reports show: int8, LM head too
    args = build_parser().parse_args(["answer", "model-dir", "a question", "--quantize", "int8-lm-head"])
    assert args.quantize == "int8-lm-head"


def test_unknown_quantization_is_refused(tiny_bert_dir, index, capsys):
    from ragloop.retrieval import Encoder

    with pytest.raises(RagloopError, match="unknown quantization 'int4'"):
        Encoder.from_pretrained(tiny_bert_dir).quantize("int4")
    with pytest.raises(SystemExit) as e:
        main(["search", str(index.path), "who?", "--quantize", "int4"])
    assert e.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "train-retriever", "train-reranker"])
def test_training_commands_refuse_quantize(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--quantize", "int8"])
    assert e.value.code == 2 and "--quantize is for inference" in capsys.readouterr().err


def test_cli_search_answer_eval_report_int8(index, rag_dir, squad_small, tmp_path, capsys):
    capsys.readouterr()
    assert main(["search", str(index.path), "Who won Super Bowl 50?", "--quantize", "int8", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["quantize"] == "int8" and len(out["hits"]) == 5
    assert main(["eval-retrieval", str(index.path), "--data", str(squad_small), "--limit", "4", "--mode", "all",
                 "--quantize", "int8", "-q"]) == 0
    table = capsys.readouterr().out
    assert "| quantize |" in table and "| int8 |" in table  # dense and hybrid rows; bm25 reads no model
    assert main(["answer", str(rag_dir), "Where is Warsaw?", "-k", "2", "--quantize", "int8", "--json", "-q"]) == 0
    assert len(json.loads(capsys.readouterr().out)["passages"]) == 2
    assert main(["eval", str(rag_dir), "--data", str(squad_small), "--limit", "4", "--quantize", "int8",
                 "--json", "-q"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["quantize"] == "int8" and res["lm_head_quantized"] is False and 0 <= res["f1"] <= 1
    assert main(["eval", str(rag_dir), "--data", str(squad_small), "--limit", "4", "--json", "-q"]) == 0
    assert "quantize" not in json.loads(capsys.readouterr().out)
    assert main(["index", str(squad_small), "--out", str(tmp_path / "idx8"), "--encoder",
                 str(index.manifest["encoder"]["passage"]["name"]), "--quantize", "int8", "-q"]) == 0
    assert "int8 encoder" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "idx8" / "manifest.json").read_text())
    assert manifest["encoder"]["passage"]["quantize"] == "int8"


def test_health_reports_quantization(rag_dir, index):
    from fastapi.testclient import TestClient

    from ragloop.serving import create_app

    with TestClient(create_app(rag_dir, threads=1, quantize="int8")) as c:
        health = c.get("/health").json()
        assert health["model"]["quantize"] == "int8" and health["retrieval"]["quantize"] == "int8"
        assert c.post("/answer", json={"question": "Where is Warsaw?", "k": 2}).status_code == 200
    with TestClient(create_app(index.path, threads=1, quantize="int8")) as c:
        assert c.get("/health").json()["retrieval"]["quantize"] == "int8"
    with TestClient(create_app(rag_dir, threads=1)) as c:
        assert c.get("/health").json()["model"]["quantize"] is None
