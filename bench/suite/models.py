"""The models and knowledge bases of the peer comparisons, built offline with the SAME weights on both
sides.

- Retriever encoders: DPR towers (`DPRQuestionEncoder`, `DPRContextEncoder`) whose BERT weights are
  those of the bundled all-MiniLM-L6-v2 (6 layers, hidden 384; both towers the same weights), CLS
  pooling (DPR's `pooler_output`, no projection), max_length 256. ragloop loads the same folders
  (`Encoder.from_pretrained` reads a DPR folder as pooling "pooler"), so both sides compute the
  same vectors.
- Generator: a small T5 (d_model 256, 4+4 layers, 15M parameters with the embeddings) built from a
  config on the MiniLM WordPiece vocabulary (pad [PAD], eos [SEP], decoder start [CLS]); one folder
  loaded by both sides. No pretrained T5 can be downloaded here.
- Knowledge base: a ragloop index folder, and for transformers a `datasets.Dataset` with title, text
  and embeddings (the same vectors) plus a Flat inner-product FAISS index, saved to disk and loaded
  back through `CustomHFIndex.load_from_disk`, the way transformers' RAG examples do.

Each side is wrapped in a `Side` with the same four calls (loss, answer, generate, modules), so a
training step or an answer is the same code for both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from ragloop.data.qa import QAExample
from ragloop.retrieval.encoders import DEFAULT_ENCODER, resolve_source

MAX_ENCODER_LENGTH = 256


def minilm_dir() -> str:
    return resolve_source(DEFAULT_ENCODER)


# -- encoders and generator -----------------------------------------------------------------------


def dpr_from_minilm(root: Path) -> tuple[Path, Path]:
    """(question encoder, context encoder) folders; built once, reused if present. The names contain
    `question_encoder` / `ctx_encoder`, so ragloop pairs them by itself (`BiEncoder.from_pretrained`)."""
    from transformers import AutoTokenizer, BertModel, DPRConfig, DPRContextEncoder, DPRQuestionEncoder

    q_dir, c_dir = root / "dpr-minilm-question_encoder", root / "dpr-minilm-ctx_encoder"
    if (q_dir / "config.json").is_file() and (c_dir / "config.json").is_file():
        return q_dir, c_dir
    bert = BertModel.from_pretrained(minilm_dir())
    b = bert.config
    cfg = DPRConfig(vocab_size=b.vocab_size, hidden_size=b.hidden_size, num_hidden_layers=b.num_hidden_layers,
                    num_attention_heads=b.num_attention_heads, intermediate_size=b.intermediate_size,
                    hidden_act=b.hidden_act, hidden_dropout_prob=b.hidden_dropout_prob,
                    attention_probs_dropout_prob=b.attention_probs_dropout_prob,
                    max_position_embeddings=b.max_position_embeddings, type_vocab_size=b.type_vocab_size,
                    initializer_range=b.initializer_range, layer_norm_eps=b.layer_norm_eps,
                    pad_token_id=b.pad_token_id, projection_dim=0)
    state = {k: v for k, v in bert.state_dict().items() if not k.startswith("pooler.")}  # DPR has no pooler
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    tokenizer.model_max_length = MAX_ENCODER_LENGTH
    for cls, folder, tower in ((DPRQuestionEncoder, q_dir, "question_encoder"),
                               (DPRContextEncoder, c_dir, "ctx_encoder")):
        model = cls(cfg)
        getattr(model, tower).bert_model.load_state_dict(state, strict=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return q_dir, c_dir


def small_t5(path: Path, seed: int = 0) -> Path:
    """A ~15M-parameter T5 (d_model 256, 4+4 layers, 4 heads) on the MiniLM vocabulary, random init."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    if (path / "config.json").is_file():
        return path
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_decoder_layers=4,
                   num_heads=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id,
                   decoder_start_token_id=tok.cls_token_id)
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# -- knowledge bases ------------------------------------------------------------------------------


def hf_dataset(titles: list[str], texts: list[str], vectors: np.ndarray):
    """A `datasets.Dataset` (title, text, embeddings) with a Flat inner-product FAISS index."""
    from datasets import Dataset, Features, Sequence, Value

    features = Features({"title": Value("string"), "text": Value("string"),
                         "embeddings": Sequence(Value("float32"))})
    ds = Dataset.from_dict({"title": titles, "text": texts, "embeddings": vectors}, features=features)
    ds.add_faiss_index("embeddings", metric_type=faiss.METRIC_INNER_PRODUCT)
    return ds


def save_hf_knowledge_base(index_dir: Path, out: Path) -> tuple[Path, Path]:
    """The passages and vectors of a ragloop index folder as a saved dataset + FAISS file, the two
    paths `CustomHFIndex.load_from_disk` takes (transformers' own "custom index" format)."""
    from ragloop.retrieval import Index

    index = Index.load(index_dir, verify=False)
    passages = list(index.store)
    vectors = index.backend.index.reconstruct_n(0, len(index))
    index.store.close()
    ds = hf_dataset([p.title for p in passages], [p.text for p in passages], vectors)
    dataset_path, index_path = out / "hf_dataset", out / "hf_index.faiss"
    ds.get_index("embeddings").save(str(index_path))
    ds.drop_index("embeddings")
    ds.save_to_disk(str(dataset_path))
    return dataset_path, index_path


# -- the two RAG implementations ------------------------------------------------------------------


@dataclass
class Setup:
    """Everything a side needs to build itself (also handed to the worker subprocesses as JSON)."""

    question_encoder: str
    ctx_encoder: str
    generator: str
    index_dir: str  # ragloop index folder
    hf_dataset: str  # saved datasets.Dataset
    hf_index: str  # its FAISS index file
    n_docs: int = 5
    batch_size: int = 8
    max_source_length: int = 256  # ragloop max_source_length = transformers max_combined_length
    max_target_length: int = 32
    max_new_tokens: int = 32
    learning_rate: float = 3e-4

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Setup:
        return cls(**json.loads(Path(path).read_text()))


SIDES = ("ragloop-sequence", "hf-sequence", "ragloop-token", "hf-token")
LABELS = {"ragloop-sequence": "ragloop RAG (mode sequence)", "hf-sequence": "transformers RagSequenceForGeneration",
          "ragloop-token": "ragloop RAG (mode token)", "hf-token": "transformers RagTokenForGeneration"}


class Side:
    """One RAG implementation: `loss(questions, answers)` (mean NLL, differentiable), `answer(q)` (one
    question end to end: encode, retrieve, generate, decode), `generate(questions)`, `module`."""

    name: str
    module: torch.nn.Module
    last_tokens: list[int]  # tokens generated per question by the last generate/answer call

    def loss(self, questions: list[str], answers: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, questions: list[str], max_new_tokens: int) -> list[str]:
        raise NotImplementedError

    def answer(self, question: str, max_new_tokens: int) -> str:
        raise NotImplementedError

    def generator_model(self) -> torch.nn.Module:
        raise NotImplementedError


class RagloopSide(Side):
    def __init__(self, setup: Setup, mode: str, index=None, model=None) -> None:
        from ragloop.generation import Generator
        from ragloop.model import RAG, RAGConfig
        from ragloop.retrieval import Encoder, Index

        self.name = f"ragloop-{mode}"
        if model is None:
            index = index if index is not None else Index.load(setup.index_dir, verify=False)
            config = RAGConfig(n_docs=setup.n_docs, mode=mode, max_source_length=setup.max_source_length,
                               max_target_length=setup.max_target_length)
            model = RAG(index, Encoder.from_pretrained(setup.question_encoder),
                        Generator.from_pretrained(setup.generator), config)
        self.rag = self.module = model
        self.last_tokens = []
        decode = model.generator.decode

        def counting_decode(sequences):  # the token ids RAG.generate/answer produced, before text
            self.last_tokens = [len(s) for s in sequences]
            return decode(sequences)

        model.generator.decode = counting_decode

    def loss(self, questions, answers):
        return self.rag(questions, answers).loss

    def generate(self, questions, max_new_tokens):
        return self.rag.generate(questions, num_beams=1, max_new_tokens=max_new_tokens)

    def answer(self, question, max_new_tokens):
        return self.rag.answer(question, num_beams=1, max_new_tokens=max_new_tokens).answer

    def generator_model(self):
        return self.rag.generator.model


class HFSide(Side):
    """transformers' RagSequenceForGeneration / RagTokenForGeneration with a RagRetriever over a
    CustomHFIndex (the saved dataset + FAISS file), question encoder and generator from the same folders."""

    def __init__(self, setup: Setup, mode: str) -> None:
        from transformers import (
            AutoTokenizer,
            DPRQuestionEncoder,
            RagConfig,
            RagRetriever,
            RagSequenceForGeneration,
            RagTokenForGeneration,
            T5ForConditionalGeneration,
        )
        from transformers.models.rag.retrieval_rag import CustomHFIndex

        self.name = f"hf-{mode}"
        self.setup = setup
        question_encoder = DPRQuestionEncoder.from_pretrained(setup.question_encoder)
        generator = T5ForConditionalGeneration.from_pretrained(setup.generator)
        self.q_tokenizer = AutoTokenizer.from_pretrained(setup.question_encoder)
        self.g_tokenizer = AutoTokenizer.from_pretrained(setup.generator)
        dim = question_encoder.config.hidden_size
        config = RagConfig.from_question_encoder_generator_configs(
            question_encoder.config, generator.config, n_docs=setup.n_docs,
            max_combined_length=setup.max_source_length, index_name="custom", retrieval_vector_size=dim,
            passages_path=setup.hf_dataset, index_path=setup.hf_index)
        # transformers 5.x: RAG's get_nll reads generator.bos_token_id, which T5Config no longer defines
        if not hasattr(config.generator, "bos_token_id"):
            config.generator.bos_token_id = None
        kb = CustomHFIndex.load_from_disk(vector_size=dim, dataset_path=setup.hf_dataset, index_path=setup.hf_index)
        retriever = RagRetriever(config, question_encoder_tokenizer=self.q_tokenizer,
                                 generator_tokenizer=self.g_tokenizer, index=kb)
        cls = RagSequenceForGeneration if mode == "sequence" else RagTokenForGeneration
        self.rag = self.module = cls(config, question_encoder=question_encoder, generator=generator,
                                     retriever=retriever)
        self.last_tokens = []

    def _questions(self, questions: list[str]) -> dict:
        return self.q_tokenizer(questions, padding=True, truncation=True, return_tensors="pt")

    def loss(self, questions, answers):
        labels = self.g_tokenizer(answers, padding=True, truncation=True,
                                  max_length=self.setup.max_target_length + 1, return_tensors="pt")["input_ids"]
        q = self._questions(questions)
        out = self.rag(input_ids=q["input_ids"], attention_mask=q["attention_mask"], labels=labels,
                       n_docs=self.setup.n_docs)
        return out.loss.mean()

    def generate(self, questions, max_new_tokens):
        q = self._questions(questions)
        ids = self.rag.generate(input_ids=q["input_ids"], attention_mask=q["attention_mask"], num_beams=1,
                                n_docs=self.setup.n_docs, max_new_tokens=max_new_tokens)
        body = ids[:, 1:].tolist()  # after the decoder start token
        if len(body) == 1:
            self.last_tokens = [len(body[0])]
        else:  # trailing pads fill the rows that stopped early
            pad = self.rag.config.generator.pad_token_id
            self.last_tokens = [len(row) - next((i for i, t in enumerate(reversed(row)) if t != pad), len(row))
                                for row in body]
        # the same answer clean-up as ragloop's Generator.decode, so section 5 scores both sides alike
        from ragloop.generation.generator import is_wordpiece, join_wordpiece_punctuation

        wordpiece = is_wordpiece(self.g_tokenizer)
        texts = self.g_tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=wordpiece)
        return [join_wordpiece_punctuation(t.strip()) if wordpiece else t.strip() for t in texts]

    def answer(self, question, max_new_tokens):
        return self.generate([question], max_new_tokens)[0]

    def generator_model(self):
        return self.rag.generator


def make_side(setup: Setup, name: str, index=None) -> Side:
    impl, mode = name.split("-")
    return RagloopSide(setup, mode, index) if impl == "ragloop" else HFSide(setup, mode)


# -- training -------------------------------------------------------------------------------------


def optimizer_for(side: Side, lr: float) -> torch.optim.Optimizer:
    """AdamW over every trainable parameter, as ragloop's trainer makes it (fused where torch has it)."""
    fused = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)
    params = [p for p in side.module.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=fused)


def train_step(side: Side, optimizer: torch.optim.Optimizer, batch: list[QAExample], max_grad_norm: float = 1.0,
               scheduler=None) -> float:
    """One optimizer step on one batch: loss, backward, clip, step. The same code for both sides."""
    side.module.train()
    loss = side.loss([e.question for e in batch], [e.answers[0] for e in batch])
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in side.module.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return float(loss.detach())


def fixed_batches(examples: list[QAExample], batch_size: int, count: int, seed: int = 0) -> list[list[QAExample]]:
    """`count` batches drawn in a fixed pseudo-random order (the same batches for every side)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    return [[examples[int(i)] for i in np.take(order, range(b * batch_size, (b + 1) * batch_size), mode="wrap")]
            for b in range(count)]
