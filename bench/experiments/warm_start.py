"""Experiment "warm-start": does the generator learn to read? The bundled BERT2BERT's warm start and
copy head, trained alone on gold paragraphs.

    python -m bench.experiments --only warm-start

The offline default generator is an encoder-decoder warm-started from all-MiniLM-L6-v2, whose
checkpoint has no cross-attention and no LM-head transform. This probe trains the generator alone (no
retrieval: each question with its own paragraph) and scores held-out questions of the same articles
with their paragraph (gold) and without (closed book): what the paragraph adds over closed book is what
the model has learned to read. It also scores questions of dev articles it never trained on.

Variants (settings.variants; the same data, steps, batch, learning rates and seed, from
recipes/warm_start.json's train section):
- random: the layers the checkpoint lacks start at random (transformers' default for a warm start);
- warm: cross-attention copies its layer's self-attention and the missing LM-head transform starts
  with its dense layer as the identity (`Generator.from_encoder_decoder`);
- copy (ragloop's default, `bundled:minilm-bert2bert`): the warm start plus a copy head.

Data: settings.articles of the recipe's train file, evaluate.questions held out evenly; as many
questions of the recipe's dev file. The variants run at once, one thread each, so they see the same load.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from pathlib import Path

from bench.experiments.pipeline import stamp, write_results
from bench.suite.tables import say, table

DESCRIBE = {"random": "new layers at random (transformers' warm start), no copy head",
            "warm": "cross-attention from self-attention, head dense identity, no copy head",
            "copy": "the same warm start + copy head (ragloop default)"}
COLUMNS = ["gold F1", "closed book F1", "gold - closed book F1", "gold EM", "unseen gold F1", "unseen closed book F1",
           "unseen gold - closed book F1", "unseen gold EM", "gold distinct answers", "final_loss"]


def generator_for(variant: str, train: dict):
    """The bundled generator as `variant` starts it."""
    import torch

    from ragloop.generation import Generator

    gen = Generator.from_pretrained(train["generator"], max_source_length=train["max_source_length"])
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
    return gen


def passages(e, gold: bool) -> list:
    """The gold paragraph, or what `ragloop eval --closed-book` gives."""
    from ragloop.evaluation.answers import given_passages

    return given_passages([e], "oracle" if gold else "closed-book")[0]


def train_generator(gen, examples: list, train: dict, label: str, autocast) -> tuple[int, list[float]]:
    """The generator alone on (question, gold paragraph) -> answer; new layers at new_params_lr."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(train["seed"])  # the same dropout masks for every variant, whatever a re-init drew
    rng = random.Random(train["seed"])
    new = {id(p) for p in gen.untrained_parameters()}
    optimizer = torch.optim.AdamW([
        {"params": [p for p in gen.parameters() if id(p) not in new], "lr": train["learning_rate"]},
        {"params": [p for p in gen.parameters() if id(p) in new], "lr": train["new_params_lr"]}])
    scheduler = get_linear_schedule_with_warmup(optimizer, train["warmup_steps"], train["max_steps"])
    gen.model.train()
    start, losses, size = time.time(), [], train["batch_size"]
    while len(losses) < train["max_steps"]:
        rng.shuffle(examples)
        for i in range(0, len(examples) - size + 1, size):
            batch = examples[i : i + size]
            inputs = gen.build_inputs([e.question for e in batch], [passages(e, True) for e in batch])
            labels = gen.tokenize_targets([e.answers[0] for e in batch])
            with autocast:
                loss = -gen(inputs["input_ids"], inputs["attention_mask"], labels).sum() / len(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
            optimizer.step(), scheduler.step(), optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if len(losses) % 50 == 0:
                say(f"  {label}: step {len(losses)}, loss {sum(losses[-50:]) / 50:.2f}, {time.time() - start:.0f} s")
            if len(losses) >= train["max_steps"]:
                break
    return len(losses), losses


def score(gen, row: dict, sets: list, autocast) -> None:
    """F1, EM and distinct answers of each set read with its gold paragraph and closed book, into `row`."""
    import torch

    from ragloop.evaluation.metrics import exact_match, f1_score

    gen.model.eval()
    for prefix, questions in sets:
        for name, gold in (("gold", True), ("closed book", False)):
            predictions = []
            for i in range(0, len(questions), 25):
                batch = questions[i : i + 25]
                inputs = gen.build_inputs([e.question for e in batch], [passages(e, gold) for e in batch])
                with torch.no_grad(), autocast:
                    predictions += gen.decode(gen.generate(inputs, max_new_tokens=20))
            n, key = len(questions), prefix + name
            row[f"{key} F1"] = round(sum(f1_score(p, e.answers) for p, e in zip(predictions, questions)) / n, 3)
            row[f"{key} EM"] = round(sum(exact_match(p, e.answers) for p, e in zip(predictions, questions)) / n, 3)
            row[f"{key} distinct answers"] = len(set(predictions))
        row[f"{prefix}gold - closed book F1"] = round(row[f"{prefix}gold F1"] - row[f"{prefix}closed book F1"], 3)


def run_variant(variant: str, recipe_path: str, articles: list[str]) -> dict:
    """One variant in its own process (spawned), on one thread."""
    import torch

    from ragloop.cli import quiet_libraries
    from ragloop.data import load_qa
    from ragloop.data.qa import sample_evenly
    from ragloop.recipes import load_recipe

    quiet_libraries()
    torch.set_num_threads(1)
    recipe = load_recipe(recipe_path)
    train = recipe.train
    torch.manual_seed(train["seed"])
    qa = [e for e in load_qa(recipe.train_data) if e.title in articles]
    held = sample_evenly(qa, recipe.questions)
    held_ids = {e.id for e in held}
    examples = [e for e in qa if e.id not in held_ids]
    unseen = sample_evenly(load_qa(recipe.dev_data), recipe.questions)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=train["precision"] == "bf16")
    gen = generator_for(variant, train)
    start = time.time()
    steps, losses = train_generator(gen, examples, train, variant, autocast)
    row = {"variant": variant, "steps": steps, "train_s": round(time.time() - start),
           "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 3)}
    score(gen, row, [("", held), ("unseen ", unseen)], autocast)
    return row


def run(exp, results: Path) -> None:
    recipe, variants = exp.recipe(), exp.settings["variants"]
    with mp.get_context("spawn").Pool(len(variants)) as pool:
        rows = pool.starmap(run_variant, [(v, str(recipe.path), exp.settings["articles"]) for v in variants])
    write_results(results, {**stamp(exp), "train": recipe.train, "questions": recipe.questions,
                            "articles": exp.settings["articles"], "rows": rows})
    print(table(["generator", *COLUMNS], [[DESCRIBE[r["variant"]], *(r[c] for c in COLUMNS)] for r in rows]))
