"""Which offline generator should ragloop default to? Measured, not guessed.

No pretrained T5 can be downloaded on the ragloop machines, so the candidates are what can be built
offline: a BERT2BERT encoder-decoder warm-started from all-MiniLM-L6-v2 (cross-attention and LM head
new, trained at 10x the learning rate) and a small T5 trained from scratch on the same WordPiece
vocabulary, each with and without a copy head (`CopyHead`; the bundled default has one). Each is trained
as the generator of the same RAG model (the demo's recipe: MiniLM retriever, RAG-Sequence, n_docs 2,
batch 8, bf16 autocast where the CPU has it) for the same wall-clock budget on the demo's training
split of the bundled SQuAD train articles, then scored on two held-out sets: the demo's held-out
questions of those articles (every 5th) and questions of dev articles never trained on; each with
retrieval (RAG), without passages (closed book) and with the gold paragraph (oracle).

    python bench/bench_generator.py              # 5 minutes of training per candidate, 100 questions per set
    python bench/bench_generator.py --minutes 4 --index runs/demo/index   # the README's table (~25 min)
    python bench/bench_generator.py --quick      # 1 minute each, 20 questions (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from ragloop.cli import quiet_libraries
from ragloop.generation import BUNDLED_GENERATOR, Generator
from ragloop.generation.generator import CopyHead
from ragloop.model import RAG
from ragloop.recipes import demo, load_recipe
from ragloop.training.trainer import cpu_has_bf16


def t5_from_scratch(path: Path, copy: bool = False) -> str:
    """A ~15M-parameter T5 (d_model 256, 4+4 layers) on the MiniLM WordPiece vocabulary, with a copy
    head or not."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

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
    gen = Generator.from_pretrained(BUNDLED_GENERATOR)
    gen.copy_head = None
    gen.save_pretrained(path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per candidate")
    parser.add_argument("--questions", type=int, default=100, help="questions scored in each held-out set")
    parser.add_argument("--quick", action="store_true", help="1 minute each, 20 questions")
    parser.add_argument("--index", help="an index of the bundled train + dev contexts (e.g. runs/demo/index, "
                        "which `ragloop demo` builds); default: build one")
    parser.add_argument("--out", default="bench/results/generator.json")
    args = parser.parse_args()
    quiet_libraries()
    if args.quick:
        args.minutes, args.questions = 1.0, 20

    work = Path(tempfile.mkdtemp(prefix="ragloop-bench-gen-"))
    # the demo's recipe and split, through its pipeline, with the reader the README's table was measured with
    recipe = load_recipe().with_train(rag_mode="sequence", n_docs=2, warmup_steps=50)
    data = demo.load_data(recipe)
    held, new = demo.eval_sets(data, args.questions)
    sets = {"held-out q": held[1], "new articles": new[1]}
    files = demo.write_data(data, work / "data")
    index_dir = demo.ensure_index(recipe, data, args.index or work / "index", progress=False)
    candidates = {  # name: generator (new parameters at 10x the learning rate, the default)
        "MiniLM BERT2BERT + copy head (default)": BUNDLED_GENERATOR,
        "MiniLM BERT2BERT, no copy head": bert2bert_without_copy(work / "bert2bert"),
        "T5 from scratch (15M, MiniLM vocab) + copy head": t5_from_scratch(work / "t5-copy", copy=True),
        "T5 from scratch (15M, MiniLM vocab)": t5_from_scratch(work / "t5-scratch"),
    }
    rows = []
    for i, (name, generator) in enumerate(candidates.items()):
        # a time budget, the same for each candidate, over a schedule planned as the recipe's first demo
        # was (700 steps in 15 minutes); bf16 autocast where the CPU has it, as the README's table was run
        cfg = demo.train_config(recipe, files.train, index_dir, work / f"run-{i}",
                                steps=round(700 * args.minutes / 15))
        cfg = replace(cfg, generator=generator, max_train_minutes=args.minutes, logging_steps=50,
                      precision="bf16" if cpu_has_bf16() else "auto")
        t0 = time.time()
        run = demo.train_rag(cfg, progress=False)
        seconds = time.time() - t0
        model = RAG.from_pretrained(run.best_dir)
        row = {"generator": name, "steps": run.steps, "train_s": round(seconds),
               "params_M": round(sum(p.numel() for p in model.generator.parameters()) / 1e6, 1)}
        for res in demo.score(model, list(sets.items()), progress=False):
            row[f"{res['set']}: {res['context']} F1"] = res["f1"]
            row[f"{res['set']}: {res['context']} EM"] = res["em"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {args.minutes:g} min training each; F1 on {args.questions} held-out "
          "questions of the training articles (held-out q) and of dev articles never trained on (new articles)\n")
    cols = ["generator", "params_M", "steps", "train_s"]
    cols += [f"{s}: {c} F1" for s in sets for c in ("rag", "closed-book", "oracle")]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"minutes": args.minutes, "questions": args.questions, "rows": rows},
                                         indent=2) + "\n")


if __name__ == "__main__":
    main()
