"""The saved RAG folder: what `RAG.save_pretrained` writes and `RAG.from_pretrained` reads.

    >>> from ragloop.model_io import CONFIG_FILE, load_parts, save_rag
    >>> save_rag(rag, "runs/rag")                          # what RAG.save_pretrained does
    >>> parts = load_parts("runs/rag", "fast")             # index, encoders, generator, config, reranker
    >>> rag = RAG(**parts)                                 # what RAG.from_pretrained does

The folder:
    rag_config.json      format and version, the RAG config, encoder specs, generator name, sha256 of every
                         model file (the index keeps its own)
    question_encoder/    the (fine-tuned) question encoder
    generator/           the seq2seq model and tokenizer
    passage_encoder/     only when the passage encoder is trained
    reranker/            only when the model reranks (saved inside, under the name it had)
    index/               a ragloop index folder (its own manifest and checksums)

It is written atomically (`ragloop.io.atomic_dir`), and replaces only a folder that holds a
`rag_config.json`. This module knows the model only by the attributes it reads (`SavableRAG`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ragloop._version import __version__
from ragloop.config import RAGConfig
from ragloop.errors import RagloopError
from ragloop.generation.extractive import SpanReader
from ragloop.generation.generator import Generator
from ragloop.generation.readers import READERS
from ragloop.io import atomic_dir, atomic_write_json
from ragloop.manifest import checksum_files, legacy_name, only_replace, read_manifest_json, verify_files
from ragloop.retrieval.encoders import BiEncoder, Encoder
from ragloop.retrieval.index import Index

if TYPE_CHECKING:
    from ragloop.retrieval.retriever import Retriever

log = logging.getLogger(__name__)

CONFIG_FILE = "rag_config.json"
QUESTION_DIR, PASSAGE_DIR, GENERATOR_DIR, INDEX_DIR = "question_encoder", "passage_encoder", "generator", "index"
RERANKER_DIR = "reranker"
ENCODER_FILE = "ragloop_encoder.json"
FORMAT, FORMAT_VERSION = "ragloop-rag", 1


class SavableRAG(Protocol):
    """What `save_rag` reads of a RAG model (`ragloop.model.RAG` is one)."""

    config: RAGConfig
    question_encoder: Encoder
    passage_encoder: Encoder | None
    generator: Generator | SpanReader
    retriever: Retriever

    @property
    def index(self) -> Index: ...


def save_rag(model: SavableRAG, path: str | Path, reindexed: bool = False) -> None:
    """Write `model` as a self-contained folder at `path`, atomically (the layout in the module
    docstring). `reindexed`: the model's FAISS vectors changed in memory (`RAG.reindex`), so the index
    is built again from its store rather than copied."""
    path = Path(path)
    index_inside = _is_within(model.index.path, path)
    with atomic_dir(path, may_replace=_check_replaceable) as tmp:
        model.question_encoder.save_pretrained(tmp / QUESTION_DIR)
        model.generator.save_pretrained(tmp / GENERATOR_DIR)
        if model.passage_encoder is not None:
            model.passage_encoder.save_pretrained(tmp / PASSAGE_DIR)
        if model.retriever.reranker is not None:
            (tmp / RERANKER_DIR).mkdir()
            model.retriever.reranker.write_files(tmp / RERANKER_DIR)
        if reindexed:  # the FAISS vectors changed in memory: write an index that matches them
            built = Index.build(model.index.store, BiEncoder(model.question_encoder, model.passage_encoder),
                                tmp / INDEX_DIR, model.index.settings(), progress=False)
            built.store.close()
        else:
            _copy_tree(model.index.path, tmp / INDEX_DIR, link=index_inside)
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.relative_to(tmp).parts[0] != INDEX_DIR)
        atomic_write_json(tmp / CONFIG_FILE, {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "ragloop_version": __version__,
            "config": saved_config(model),
            "question_encoder": model.question_encoder.spec.to_dict(),
            "passage_encoder": model.passage_encoder.spec.to_dict() if model.passage_encoder is not None else None,
            "generator": model.generator.name,
            "files": checksum_files(tmp, files),
        })
    log.info("saved RAG model to %s", path)


def saved_config(model: SavableRAG) -> dict:
    """The config as the model now retrieves: a mode or reranker set on its retriever after it was
    built (`model.retriever.set_reranker`, `--rerank`) is saved, and loads back."""
    r = model.retriever
    return dict(model.config.to_dict(), search_mode=r.mode, rerank=r.reranker.name if r.reranker else None,
                rerank_depth=r.rerank_depth if r.reranker else None)


def load_parts(path: str | Path, verify: bool | str) -> dict:
    """The parts of a folder `save_rag` wrote, as the RAG constructor's keyword arguments (index,
    question_encoder, generator, config, passage_encoder, reranker), its files checked against the
    manifests first (`verify`: see `ragloop.manifest.verify_files`). The saved config says whether to load
    a reranker."""
    path = Path(path)
    meta = _read_meta(path)
    config = RAGConfig.from_dict(meta.get("config", {}), where=str(path / CONFIG_FILE))
    verify_files(path, meta.get("files", {}), CONFIG_FILE, checksums=verify)
    index = Index.load(path / INDEX_DIR, verify=verify)
    question_encoder = _load_encoder(path / QUESTION_DIR)
    passage_encoder = _load_encoder(path / PASSAGE_DIR) if (path / PASSAGE_DIR).is_dir() else None
    generator = READERS[config.mode].load(str(path / GENERATOR_DIR))  # a Generator, or a SpanReader
    index.check_question_encoder(question_encoder, allow_finetuned=True)
    reranker = None
    if config.rerank is not None:  # saved inside the folder; the name it had is kept for reports
        from ragloop.retrieval.rerank import Reranker

        if not (path / RERANKER_DIR).is_dir():
            raise RagloopError(f"{path / RERANKER_DIR}: missing (the config names reranker {config.rerank!r})")
        reranker = Reranker.from_pretrained(path / RERANKER_DIR)
        reranker.name = config.rerank
    return {"index": index, "question_encoder": question_encoder, "generator": generator, "config": config,
            "passage_encoder": passage_encoder, "reranker": reranker}


def _is_within(inner: Path, outer: Path) -> bool:
    try:
        Path(inner).resolve().relative_to(Path(outer).resolve())
        return True
    except ValueError:
        return False


def _copy_tree(src: Path, dst: Path, link: bool) -> None:
    """Copy a folder; with `link`, hard-link files where possible (the source is about to be replaced)."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy if link else shutil.copy2)


_check_replaceable = only_replace(CONFIG_FILE, "saved RAG model")


def _read_meta(path: Path) -> dict:
    return read_manifest_json(path, CONFIG_FILE, FORMAT, FORMAT_VERSION, "saved RAG model")


def _load_encoder(folder: Path) -> Encoder:
    """An encoder saved inside a RAG folder keeps the name it had when the index was built, so the
    index accepts it as a fine-tuned version of its own question encoder."""
    spec_file = folder / ENCODER_FILE
    if not spec_file.is_file():
        spec_file = folder / legacy_name(ENCODER_FILE)
    if not spec_file.is_file():
        raise RagloopError(f"{spec_file}: missing")
    encoder = Encoder.from_pretrained(str(folder))
    try:
        encoder.spec.name = json.loads(spec_file.read_text())["name"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError) as e:
        raise RagloopError(f"{spec_file}: corrupt encoder spec ({e})") from None
    return encoder
