"""Experiment "generator": which offline generator should ragloop default to? Measured, not guessed.

    python -m bench.experiments --only generator

No pretrained T5 can be downloaded on the ragloop machines, so the candidates are what can be built
offline: a BERT2BERT encoder-decoder warm-started from all-MiniLM-L6-v2 (cross-attention and LM head
new, trained at 10x the learning rate) and a small T5 trained from scratch on the same WordPiece
vocabulary, each with and without a copy head. Each is the generator of the same RAG model
(recipes/generator.json: the demo's data, RAG-Sequence, k=2), trained for the same wall-clock budget
(settings.minutes; bf16 autocast where the CPU has it), then scored on the demo's held-out questions
and questions of dev articles never trained on, each with retrieval, closed book and the gold paragraph.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from bench.experiments.pipeline import prepare, stamp, work_dir, write_results
from bench.suite.tables import table


def t5_from_scratch(path: Path, copy: bool = False) -> str:
    """A ~15M-parameter T5 (d_model 256, 4+4 layers) on the MiniLM WordPiece vocabulary, with a copy
    head or not."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from ragloop.generation import Generator
    from ragloop.generation.generator import CopyHead
    from ragloop.retrieval.encoders import DEFAULT_ENCODER, resolve_source

    tok = AutoTokenizer.from_pretrained(resolve_source(DEFAULT_ENCODER))
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_decoder_layers=4,
                   num_heads=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id,
                   decoder_start_token_id=tok.cls_token_id)
    head = CopyHead(cfg.d_model) if copy else None
    Generator(T5ForConditionalGeneration(cfg), tok, "t5-scratch", copy_head=head).save_pretrained(path)
    return str(path)


def bert2bert_without_copy(path: Path) -> str:
    """The bundled BERT2BERT (same warm start) without its copy head."""
    from ragloop.generation import BUNDLED_GENERATOR, Generator

    gen = Generator.from_pretrained(BUNDLED_GENERATOR)
    gen.copy_head = None
    gen.save_pretrained(path)
    return str(path)


def candidates(work: Path) -> dict[str, str]:
    from ragloop.generation import BUNDLED_GENERATOR

    return {"MiniLM BERT2BERT + copy head (default)": BUNDLED_GENERATOR,
            "MiniLM BERT2BERT, no copy head": bert2bert_without_copy(work / "bert2bert"),
            "T5 from scratch (15M, MiniLM vocab) + copy head": t5_from_scratch(work / "t5-copy", copy=True),
            "T5 from scratch (15M, MiniLM vocab)": t5_from_scratch(work / "t5-scratch")}


def run(exp, results: Path) -> None:
    from ragloop.model import RAG
    from ragloop.recipes import demo
    from ragloop.training.optim import cpu_has_bf16

    recipe, s = exp.recipe(), exp.settings
    bf16 = s.get("bf16_where_available") and cpu_has_bf16()
    rows = []
    with work_dir(s.get("work"), "generator") as work:
        prep = prepare(recipe, work, s.get("index"))
        sets = demo.eval_sets(prep.data, recipe.questions)
        for i, (name, generator) in enumerate(candidates(work).items()):
            cfg = demo.train_config(recipe, prep.files.train, prep.index_dir, work / f"run-{i}")
            cfg = replace(cfg, generator=generator, max_train_minutes=s["minutes"],
                          precision="bf16" if bf16 else cfg.precision)
            t0 = time.time()
            run = demo.train_rag(cfg, progress=False)
            model = RAG.from_pretrained(run.best_dir)
            row = {"generator": name, "steps": run.steps, "train_s": round(time.time() - t0),
                   "params_M": round(sum(p.numel() for p in model.generator.parameters()) / 1e6, 1)}
            for res in demo.score(model, sets, progress=False):
                short = "held-out q" if res["set"] == demo.HELD_OUT else "new articles"
                row[f"{short}: {res['context']} F1"], row[f"{short}: {res['context']} EM"] = res["f1"], res["em"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_results(results, {**stamp(exp), "minutes": s["minutes"], "questions": recipe.questions,
                                    "rows": rows})
    cols = ["generator", "params_M", "steps", "train_s"]
    cols += [f"{s}: {c} F1" for s in ("held-out q", "new articles") for c in ("rag", "closed-book", "oracle")]
    print(table(cols, [[row[c] for c in cols] for row in rows]))
