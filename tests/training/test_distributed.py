"""Data-parallel training: P processes with --batch_size B train like one process with P*B; only
process 0 writes; every process's RNG state is checkpointed, so a DDP run resumes exactly."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ragloop import RagloopError
from ragloop.config import TrainConfig
from ragloop.training import train
from ragloop.training.checkpoint import load_checkpoint, rng_state, save_checkpoint
from ragloop.training.distributed import freeze_unused_parameters, rank_share


def test_rank_share_splits_a_global_batch_exactly():
    for n, world in ((8, 2), (7, 2), (5, 4), (3, 4), (1, 2), (6, 1)):
        batch = list(range(100, 100 + n))
        shares = [rank_share(batch, r, world) for r in range(world)]
        real = [(mine, w) for mine, w in shares if w > 0]
        assert sorted(i for mine, _ in real for i in mine) == batch  # every example once
        # process r's loss is w_r * (its mean) and DDP averages over processes, so every example
        # weighs w_r / (n_r * P) in the gradient: it must be 1/n, as in one process's mean loss
        assert all(w / (len(mine) * world) == pytest.approx(1 / n) for mine, w in real)
        assert all(len(mine) == 1 and w == 0.0 for mine, w in shares if w == 0)  # idle processes still step
    assert rank_share([1, 2, 3, 4], 0, 2) == ([1, 3], 1.0) and rank_share([1, 2, 3, 4], 1, 2) == ([2, 4], 1.0)


@pytest.fixture
def cfg(tmp_path, squad_small, tiny_bert_dir, tiny_t5_dir):
    return TrainConfig(train_file=str(squad_small), question_encoder=str(tiny_bert_dir), generator=str(tiny_t5_dir),
                       n_docs=2, batch_size=4, max_steps=4, eval_steps=2, logging_steps=1, warmup_steps=1,
                       learning_rate=1e-3, output_dir=str(tmp_path / "run"))


def test_parameters_without_gradient_are_frozen(cfg):
    """The tiny BERT question encoder has a pooler that mean pooling never reads: DDP (which by default
    insists every trainable parameter gets a gradient) would fail on it, so training freezes it."""
    from ragloop.training.setup import build_index, build_model, load_data

    examples, _ = load_data(cfg)
    model = build_model(cfg, build_index(cfg, examples, Path(cfg.output_dir) / "index", progress=False))
    model.train()
    ex = examples[0]
    frozen = freeze_unused_parameters(model, lambda: model([ex.question], [ex.answers[0]]).loss)
    assert frozen and all(".pooler." in name for name in frozen)
    assert all(p.grad is None for p in model.parameters())
    model([ex.question], [ex.answers[0]]).loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable)  # what DDP needs


def test_checkpoint_keeps_every_process_rng_state(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    torch.manual_seed(1)
    rank1 = rng_state()
    expected = torch.rand(3)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ck", model, opt, sched, None, {"step": 2, "num_processes": 2}, rank_rng=[rank1])
    assert (tmp_path / "ck" / "rng-rank1.pt").is_file()
    load_checkpoint(tmp_path / "ck", model, opt, sched, None, rank=1)
    assert torch.equal(torch.rand(3), expected)  # process 1 continues its own random stream
    with pytest.raises(RagloopError, match="no RNG state for process 2 .*run of 2 processes"):
        load_checkpoint(tmp_path / "ck", model, opt, sched, None, rank=2)


def test_resume_needs_the_same_number_of_processes(cfg):
    train(replace(cfg, max_steps=2), progress=False)
    state_file = Path(cfg.output_dir) / "last" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["num_processes"] == 1
    state_file.write_text(json.dumps({**state, "num_processes": 2}))  # as if a 2-process run wrote it
    with pytest.raises(RagloopError, match="written by a run of 2 process.*this run has 1"):
        train(replace(cfg, resume=True), progress=False)


def _without_dropout(src, dst, keys):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update({k: 0.0 for k in keys})
    (dst / "config.json").write_text(json.dumps(config))
    return dst


# Run under torchrun: the CLI (dropout-free models, so it can match one process exactly), then a run
# with dropout that crashes after its step-2 checkpoint and resumes, against a straight one.
SCRIPT = textwrap.dedent("""
    import json, os, sys
    from dataclasses import replace

    from ragloop.cli import main
    from ragloop.config import TrainConfig
    from ragloop.training import train
    from ragloop.training import trainer as trainer_mod

    job = json.loads(sys.argv[1])
    assert main(["train", *job["cli"]]) == 0

    cfg = TrainConfig(**job["cfg"])
    seen, real_share = [], trainer_mod.rank_share

    def recording_share(batch, rank, world):
        mine, weight = real_share(batch, rank, world)
        seen.append(mine)
        return mine, weight

    trainer_mod.rank_share = recording_share
    straight = train(replace(cfg, output_dir=job["straight"]), progress=False)
    trainer_mod.rank_share = real_share
    with open(job["seen"] % os.environ["RANK"], "w") as f:
        json.dump(seen, f)

    class Crash(Exception):
        pass

    real = trainer_mod.evaluate_and_save

    def save_then_crash(*args, **kwargs):
        real(*args, **kwargs)
        raise Crash("killed after the step-2 checkpoint")

    trainer_mod.evaluate_and_save = save_then_crash
    try:
        train(cfg, progress=False)
        raise SystemExit("no crash")
    except Crash:
        pass
    trainer_mod.evaluate_and_save = real
    resumed = train(replace(cfg, resume=True), progress=False)
    if os.environ["RANK"] == "0":
        with open(job["result"], "w") as f:
            json.dump({"straight": straight.losses, "resumed": resumed.losses}, f)
""")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sequence", "fid", "span"])  # fid: with the retriever's distillation loss
def test_two_processes_train_like_one_with_the_global_batch(mode, tmp_path, cfg, squad_small, tiny_bert_dir,
                                                            tiny_t5_dir):
    bert = _without_dropout(tiny_bert_dir, tmp_path / "bert", ["hidden_dropout_prob", "attention_probs_dropout_prob"])
    t5 = bert if mode == "span" else _without_dropout(tiny_t5_dir, tmp_path / "t5", ["dropout_rate"])
    common = dict(train_file=str(squad_small), validation_file=str(squad_small), max_eval_examples=2,
                  question_encoder=str(bert), generator=str(t5), n_docs=2, max_steps=4, eval_steps=2,
                  logging_steps=1, warmup_steps=1, learning_rate=1e-3, rag_mode=mode)
    one = train(TrainConfig(**common, batch_size=8, output_dir=str(tmp_path / "one")), progress=False)

    ddp = tmp_path / "ddp"
    cli = [f"--{k}={v}" for k, v in common.items()] + ["--batch_size=4", f"--output_dir={ddp}", "-q"]
    job = {"cli": cli, "cfg": replace(cfg, output_dir=str(tmp_path / "crashed"), rag_mode=mode,
                                  generator=str(bert) if mode == "span" else cfg.generator).to_dict(),
           "straight": str(tmp_path / "straight"), "result": str(tmp_path / "result.json"),
           "seen": str(tmp_path / "seen-%s.json")}
    (tmp_path / "job.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(tmp_path / "job.py"), json.dumps(job)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]

    # the same examples per step, the loss logged is the global batch's mean
    logged = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]  # process 0 alone writes: no duplicated lines
    assert [r["step"] for r in logged if "dev_f1" in r] == [2, 4]
    assert [r["loss"] for r in steps] == pytest.approx(one.losses, rel=1e-3, abs=1e-4)
    # process 0 alone writes files: one checkpoint (with both processes' RNG states), no stray temp folders
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert not [p for p in ddp.rglob(".*")]
    state = json.loads((ddp / "last" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and set(state["rng_ranks"]) == {"1"}
    assert (ddp / "last" / "rng-rank1.pt").is_file()
    assert not (tmp_path / "one" / "last" / "rng-rank1.pt").exists()

    # each process trained on its own half of every global batch of 2 x 4
    seen = [json.loads((tmp_path / f"seen-{rank}.json").read_text()) for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4
    assert all(len(a) == len(b) == 4 and not set(a) & set(b) for a, b in zip(*seen))

    # exact resume under DDP, with dropout: each process gets its own RNG stream back
    result = json.loads((tmp_path / "result.json").read_text())
    assert len(result["straight"]) == 4 and len(result["resumed"]) == 2
    assert result["resumed"] == pytest.approx(result["straight"][2:], rel=1e-5)
