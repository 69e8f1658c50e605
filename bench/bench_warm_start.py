"""Does the generator learn to read? The bundled BERT2BERT's warm start and copy head, on gold paragraphs.

The offline default generator is an encoder-decoder warm-started from all-MiniLM-L6-v2, whose
checkpoint has no cross-attention and no LM-head transform. This probe trains the generator alone
(no retrieval: each question with its own paragraph) and scores held-out questions of the same
articles twice: with their paragraph (gold) and without (closed book). What the paragraph adds over
closed book is what the model has learned to read; the rest it remembers about the articles. It
also scores questions of dev articles it never trained on, where there is nothing to remember.

Variants (the same data, steps, batch, learning rates and seed):
- random: the layers the checkpoint lacks start at random (transformers' default for a warm start);
- warm: cross-attention copies its layer's self-attention and the missing LM-head transform starts
  with its dense layer as the identity (`Generator.from_encoder_decoder`);
- copy (ragloop's default, `bundled:minilm-bert2bert`): the warm start plus a copy head
  (`CopyHead`, a pointer-generator output that can copy source tokens).

    python bench/bench_warm_start.py                 # 470 steps of 8 per variant (~25 min, all at once)
    python bench/bench_warm_start.py --steps 40 --questions 20   # a smoke run

Data: five articles of the bundled SQuAD train sample (Spectre, Notre Dame, Twilight Princess,
Antibiotics, Montana), 200 questions held out evenly (876 train); 200 questions of the bundled dev
articles (never trained on). The variants run at once, one thread each, so they see the same load.
Writes bench/results/warm_start.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import random
import time
from pathlib import Path

ARTICLES = ("Spectre (2015 film)", "University of Notre Dame", "The Legend of Zelda: Twilight Princess",
            "Antibiotics", "Montana")
VARIANTS = {"random": "new layers at random (transformers' warm start), no copy head",
            "warm": "cross-attention from self-attention, head dense identity, no copy head",
            "copy": "the same warm start + copy head (ragloop default)"}


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    import torch
    from transformers import get_linear_schedule_with_warmup

    from ragloop.cli import quiet_libraries
    from ragloop.data import load_qa
    from ragloop.data.bundled import SQUAD_DEV, SQUAD_TRAIN, bundled_path
    from ragloop.data.corpus import Passage
    from ragloop.data.qa import sample_evenly
    from ragloop.evaluation.metrics import exact_match, f1_score
    from ragloop.generation import Generator
    from ragloop.generation.generator import BUNDLED_GENERATOR

    quiet_libraries()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    qa = [e for e in load_qa(bundled_path(SQUAD_TRAIN)) if e.title in ARTICLES]
    held = sample_evenly(qa, args.questions)
    held_ids = {e.id for e in held}
    train = [e for e in qa if e.id not in held_ids]
    unseen = sample_evenly(load_qa(bundled_path(SQUAD_DEV)), args.questions)

    gen = Generator.from_pretrained(BUNDLED_GENERATOR, max_source_length=args.max_source_length)
    if variant != "copy":
        gen.copy_head = None
    if variant == "random":  # undo the warm start: the new layers as transformers initialises them
        std = gen.model.decoder.config.initializer_range
        for name, module in gen.model.decoder.named_modules():
            if name.endswith(("crossattention", "predictions.transform")):
                for sub in module.modules():
                    if isinstance(sub, torch.nn.Linear):
                        torch.nn.init.normal_(sub.weight, std=std)
                        torch.nn.init.zeros_(sub.bias)
                    elif isinstance(sub, torch.nn.LayerNorm):
                        torch.nn.init.ones_(sub.weight)
                        torch.nn.init.zeros_(sub.bias)
    torch.manual_seed(args.seed)  # the same dropout masks for both variants, whatever the re-init drew
    new = {id(p) for p in gen.untrained_parameters()}
    optimizer = torch.optim.AdamW([
        {"params": [p for p in gen.parameters() if id(p) not in new], "lr": args.learning_rate},
        {"params": [p for p in gen.parameters() if id(p) in new], "lr": args.learning_rate * args.new_params_x}])
    scheduler = get_linear_schedule_with_warmup(optimizer, 50, args.steps)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    def passage(e, gold: bool) -> list[Passage]:  # closed book reads what `ragloop eval --closed-book` gives
        return [Passage(e.doc_id or "oracle", e.title, e.context) if gold else Passage("closed-book", "", "")]

    gen.model.train()
    start, step, losses = time.time(), 0, []
    while step < args.steps:
        rng.shuffle(train)
        for i in range(0, len(train) - args.batch_size + 1, args.batch_size):
            batch = train[i : i + args.batch_size]
            inputs = gen.build_inputs([e.question for e in batch], [passage(e, True) for e in batch])
            labels = gen.tokenize_targets([e.answers[0] for e in batch])
            with autocast:
                loss = -gen(inputs["input_ids"], inputs["attention_mask"], labels).sum() / len(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            if step % 50 == 0:
                print(f"  {variant}: step {step}/{args.steps}, loss {sum(losses[-50:]) / 50:.2f}, "
                      f"{time.time() - start:.0f} s", flush=True)
            if step >= args.steps:
                break
    train_s = time.time() - start

    gen.model.eval()
    row = {"variant": variant, "steps": step, "train_s": round(train_s), "final_loss": round(sum(losses[-50:]) /
                                                                                          len(losses[-50:]), 3)}
    for prefix, questions in (("", held), ("unseen ", unseen)):
        for name, gold in (("gold", True), ("closed book", False)):
            predictions = []
            for i in range(0, len(questions), 25):
                batch = questions[i : i + 25]
                inputs = gen.build_inputs([e.question for e in batch], [passage(e, gold) for e in batch])
                with torch.no_grad(), autocast:
                    predictions += gen.decode(gen.generate(inputs, max_new_tokens=20))
            key = prefix + name
            row[f"{key} F1"] = round(sum(f1_score(p, e.answers) for p, e in zip(predictions, questions))
                                     / len(questions), 3)
            row[f"{key} EM"] = round(sum(exact_match(p, e.answers) for p, e in zip(predictions, questions))
                                     / len(questions), 3)
            row[f"{key} distinct answers"] = len(set(predictions))
        row[f"{prefix}gold - closed book F1"] = round(row[f"{prefix}gold F1"] - row[f"{prefix}closed book F1"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=470)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--new_params_x", type=float, default=10.0, help="new layers' lr over --learning_rate")
    parser.add_argument("--max_source_length", type=int, default=192)
    parser.add_argument("--questions", type=int, default=200, help="held-out questions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="fp32 instead of bf16 autocast")
    parser.add_argument("--out", default="bench/results/warm_start.json")
    args = parser.parse_args()

    with mp.get_context("spawn").Pool(len(VARIANTS)) as pool:
        rows = pool.starmap(run_variant, [(v, args) for v in VARIANTS])

    import torch

    machine = platform.processor() or platform.machine()
    print(f"\nmachine: {machine}, one thread per variant, torch {torch.__version__}; "
          f"{args.steps} steps of {args.batch_size}, lr {args.learning_rate:g} (new layers x{args.new_params_x:g}), "
          f"{args.questions} held-out questions of the same 5 articles and {args.questions} of unseen dev "
          "articles, greedy\n")
    cols = ["gold F1", "closed book F1", "gold - closed book F1", "gold EM", "unseen gold F1", "unseen closed book F1",
            "unseen gold - closed book F1", "unseen gold EM", "gold distinct answers", "final_loss"]
    print("| generator | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for row in rows:
        print(f"| {VARIANTS[row['variant']]} | " + " | ".join(str(row[c]) for c in cols) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "articles": ARTICLES, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
