"""Which offline generator should ragsys default to? Measured, not guessed.

No pretrained T5 can be downloaded on the ragsys machines, so the candidates are what can be built
offline: a BERT2BERT encoder-decoder warm-started from all-MiniLM-L6-v2 (cross-attention and LM head
new), and a small T5 trained from scratch on the same WordPiece vocabulary. Each is trained as the
generator of the same RAG model (MiniLM retriever, RAG-Sequence, n_docs 2, batch 8) for the same
wall-clock budget on the bundled SQuAD train articles, then scored on dev questions from articles it
never saw: with retrieval (RAG), without passages (closed book) and with the gold paragraph (oracle).

    python bench/bench_generator.py              # 8 minutes of training per candidate, 200 dev questions
    python bench/bench_generator.py --quick      # 1 minute each, 40 questions (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from ragsys.cli import quiet_libraries
from ragsys.config import TrainConfig
from ragsys.data import load_qa
from ragsys.data.bundled import SQUAD_DEV, SQUAD_TRAIN, bundled_path
from ragsys.data.corpus import make_passages
from ragsys.data.qa import sample_evenly
from ragsys.evaluation import evaluate_answers
from ragsys.model import RAG
from ragsys.retrieval import BiEncoder, Index
from ragsys.training import train


def t5_from_scratch(path: Path) -> str:
    """A ~15M-parameter T5 (d_model 256, 4+4 layers) on the MiniLM WordPiece vocabulary."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from ragsys.retrieval.encoders import DEFAULT_ENCODER, resolve_source

    tok = AutoTokenizer.from_pretrained(resolve_source(DEFAULT_ENCODER))
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_decoder_layers=4,
                   num_heads=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id,
                   decoder_start_token_id=tok.cls_token_id)
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per candidate")
    parser.add_argument("--questions", type=int, default=200, help="held-out dev questions scored")
    parser.add_argument("--quick", action="store_true", help="1 minute each, 40 questions")
    parser.add_argument("--out", default="bench/results/generator.json")
    args = parser.parse_args()
    quiet_libraries()
    if args.quick:
        args.minutes, args.questions = 1.0, 40

    work = Path(tempfile.mkdtemp(prefix="ragsys-bench-gen-"))
    train_file, dev_file = bundled_path(SQUAD_TRAIN), bundled_path(SQUAD_DEV)
    train_qa, dev_qa = load_qa(train_file), load_qa(dev_file)
    held_out = sample_evenly(dev_qa, args.questions)
    docs = ({"doc_id": e.doc_id, "title": e.title, "text": e.context} for e in train_qa + dev_qa)
    index = Index.build(make_passages(docs), BiEncoder.from_pretrained(), work / "index", progress=False)
    candidates = {
        "MiniLM BERT2BERT (warm-started)": "bundled:minilm-bert2bert",
        "T5 from scratch (15M, MiniLM vocab)": t5_from_scratch(work / "t5-scratch"),
    }
    rows = []
    for name, generator in candidates.items():
        cfg = TrainConfig(train_file=str(train_file), index=str(index.path), generator=generator, n_docs=2,
                          batch_size=8, learning_rate=1e-4, warmup_steps=50, max_steps=100_000,
                          max_train_minutes=args.minutes, eval_steps=100_000, logging_steps=50,
                          max_source_length=192, output_dir=str(work / name.split()[0]))
        t0 = time.time()
        result = train(cfg, progress=False)
        seconds = time.time() - t0
        model = RAG.from_pretrained(result.best_dir)
        row = {"generator": name, "steps": result.steps, "train_s": round(seconds),
               "params_M": round(sum(p.numel() for p in model.generator.parameters()) / 1e6, 1)}
        for context in ("rag", "closed-book", "oracle"):
            res = evaluate_answers(model, held_out, context, progress=False)
            row[f"{context} F1"] = res["f1"]
            row[f"{context} EM"] = res["em"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {args.minutes:g} min training each; {len(held_out)} dev questions "
          "from articles not trained on\n")
    cols = ["generator", "params_M", "steps", "rag F1", "closed-book F1", "oracle F1", "rag EM"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"minutes": args.minutes, "questions": len(held_out), "rows": rows},
                                         indent=2) + "\n")


if __name__ == "__main__":
    main()
