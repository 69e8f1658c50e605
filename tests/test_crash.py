"""Crash safety: a process killed with SIGKILL in the middle of writing an index or a checkpoint
leaves the previous one loadable, and the next write (or `--resume`) carries on.

Each test starts a real child process, lets it block at a chosen point of the write (a function
patched inside the child: it writes part of a file, or performs the first of the two renames, then
signals through a file and sleeps), and kills it with SIGKILL. No test hook lives in ragloop itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ragloop import BiEncoder, Index, RagloopError, load_corpus
from ragloop.cli import main
from ragloop.training.checkpoint import load_checkpoint, read_state, save_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")

# The child's patches: `block()` signals the parent and waits to be killed.
PRELUDE = r"""
import os, sys, time
from pathlib import Path

READY, WHERE, TARGET = sys.argv[1], sys.argv[2], os.path.basename(sys.argv[3])

def block():
    Path(READY).write_text(str(os.getpid()))
    time.sleep(600)

if WHERE == "rename":  # killed after the old version is moved aside, before the new one is moved in
    real_rename = os.rename
    def rename(src, dst):
        real_rename(src, dst)
        if os.path.basename(os.fspath(dst)).startswith(f".{TARGET}.old-"):
            block()
    os.rename = rename
"""

INDEX_CHILD = PRELUDE + r"""
import faiss
if WHERE == "write":  # killed with half of index.faiss written into the temporary folder
    real_write = faiss.write_index
    def half_write(index, fname):
        real_write(index, fname)
        data = Path(fname).read_bytes()
        Path(fname).write_bytes(data[: len(data) // 2])
        block()
    faiss.write_index = half_write

from ragloop import BiEncoder, Index, RagloopError, load_corpus
out, corpus, encoder = sys.argv[3:6]
Index.build(load_corpus([corpus]), BiEncoder.from_pretrained(encoder), out)
raise SystemExit("the child was not killed")
"""

CHECKPOINT_CHILD = PRELUDE + r"""
import torch
if WHERE == "write":  # killed with optimizer.pt half written into the temporary folder
    real_save = torch.save
    def half_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if Path(f).name == "optimizer.pt":
            data = Path(f).read_bytes()
            Path(f).write_bytes(data[: len(data) // 2])
            block()
    torch.save = half_save

from ragloop.training.checkpoint import save_checkpoint
torch.manual_seed(1)
model = torch.nn.Linear(4, 2)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
model(torch.ones(1, 4)).sum().backward()
optimizer.step()
save_checkpoint(sys.argv[3], model, optimizer, scheduler, None, {"step": 2})
raise SystemExit("the child was not killed")
"""

TRAIN_CHILD = PRELUDE + r"""
from ragloop.cli import main
main(sys.argv[4:])
raise SystemExit("the child was not killed")
"""


def kill_mid_write(script: str, where: str, *args, tmp_path: Path, timeout: float = 150) -> None:
    """Run `script` in a child, wait until it blocks at `where`, SIGKILL it and reap it."""
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    log = tmp_path / "child.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", script, str(ready), where, *map(str, args)],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None:
                pytest.fail(f"the child ended (exit {proc.returncode}) before blocking:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the child did not reach the blocking point in time")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ready.unlink()


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, squad_small):
    """Two corpora: the previous index is built from the first, the killed write from the second."""
    root = tmp_path_factory.mktemp("corpora")
    data = json.loads(squad_small.read_text())["data"]
    first, second = root / "first.json", root / "second.json"
    first.write_text(json.dumps({"data": data[:1]}))
    second.write_text(json.dumps({"data": data[1:]}))
    return first, second


@pytest.mark.parametrize("where", ["write", "rename"])
def test_index_killed_mid_write_keeps_the_previous_index(where, corpora, tiny_bert_dir, tmp_path, capsys):
    first, second = corpora
    out = tmp_path / "runs" / "idx"
    encoder = BiEncoder.from_pretrained(str(tiny_bert_dir))
    with Index.build(load_corpus([first]), encoder, out) as before:
        n_before = len(before)
    manifest = (out / "manifest.json").read_bytes()

    kill_mid_write(INDEX_CHILD, where, out, second, tiny_bert_dir, tmp_path=tmp_path)
    left = siblings(out)
    if where == "write":  # the temporary folder with a half-written index.faiss is left; idx untouched
        assert len(left) == 2 and left[0].startswith(".idx.tmp-") and left[1] == "idx"
        assert (out.parent / left[0] / "index.faiss").is_file()  # half of it, where the child was killed
        assert (out / "manifest.json").read_bytes() == manifest
    else:  # killed between the renames: idx itself is gone, moved aside to .idx.old-PID
        assert "idx" not in left and any(name.startswith(".idx.old-") for name in left)

    with Index.load(out) as index:  # the previous index, whole (checksums verified)
        assert len(index) == n_before
        assert index.store.get_rows([0])[0].title == json.loads(first.read_text())["data"][0]["title"].replace("_", " ")
    assert (out / "manifest.json").read_bytes() == manifest
    if where == "rename":
        assert siblings(out) == ["idx"]  # restored and tidied by the load

    # the next write works and tidies the leftovers
    capsys.readouterr()
    assert main(["index", str(second), "--out", str(out), "--encoder", str(tiny_bert_dir), "-q"]) == 0
    assert siblings(out) == ["idx"]
    with Index.load(out) as index:
        assert len(index) == len(load_corpus([second]))


@pytest.mark.parametrize("where", ["write", "rename"])
def test_checkpoint_killed_mid_save_keeps_the_previous_checkpoint(where, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    path = tmp_path / "run" / "last"
    save_checkpoint(path, model, optimizer, scheduler, None, {"step": 1})
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    kill_mid_write(CHECKPOINT_CHILD, where, path, tmp_path=tmp_path)
    assert any(name.startswith((".last.tmp-", ".last.old-")) for name in siblings(path))

    fresh = torch.nn.Linear(4, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    state = load_checkpoint(path, fresh, fresh_opt, torch.optim.lr_scheduler.StepLR(fresh_opt, 1), None)
    assert state["step"] == 1
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in weights.items())
    save_checkpoint(path, model, optimizer, scheduler, None, {"step": 3})  # the next save is unaffected
    assert siblings(path) == ["last"] and read_state(path)["step"] == 3


@pytest.mark.slow
def test_train_killed_mid_checkpoint_resumes(squad_small, tiny_bert_dir, tiny_t5_dir, tmp_path, capsys):
    """`ragloop train` killed while saving its step-4 checkpoint; `--resume` continues from step 2."""
    out = tmp_path / "run"
    args = ["train", "--train_file", str(squad_small), "--question_encoder", str(tiny_bert_dir),
            "--generator", str(tiny_t5_dir), "--n_docs", "2", "--batch_size", "4", "--max_steps", "6",
            "--eval_steps", "2", "--logging_steps", "1", "--warmup_steps", "1", "--learning_rate", "1e-3",
            "--max_train_examples", "40", "--output_dir", str(out), "-q"]
    # the first save of last/ (step 2) has nothing to move aside; the second (step 4) is killed between
    # moving the step-2 checkpoint aside and moving its own into place
    kill_mid_write(TRAIN_CHILD, "rename", out / "last", *args, tmp_path=tmp_path)
    assert "last" not in {p.name for p in out.iterdir()}  # the step-2 checkpoint is moved aside ...
    assert any(p.name.startswith(".last.old-") for p in out.iterdir())
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0  # ... and --resume puts it back and continues from it
    assert "trained 6 steps" in capsys.readouterr().out
    assert read_state(out / "last")["step"] == 6
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4, 5, 6]


# -- corrupt files: one RagloopError naming the file, from the API and the CLI ------------------------


def truncate(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def flip(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # in a JSON file: a non-ASCII byte among ASCII ones, never valid UTF-8
    f.write_bytes(bytes(data))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ragloop: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, corpora, tiny_bert_dir) -> Path:
    out = tmp_path_factory.mktemp("built") / "idx"
    Index.build(load_corpus([corpora[0]]), BiEncoder.from_pretrained(str(tiny_bert_dir)), out).close()
    return out


@pytest.mark.parametrize("damage", [truncate, flip])
@pytest.mark.parametrize("name", ["index.faiss", "passages.sqlite", "manifest.json", "bm25/params.index.json"])
def test_corrupt_index_file_is_one_error_naming_it(built_index, tmp_path, name, damage, capsys):
    idx = tmp_path / "idx"
    shutil.copytree(built_index, idx)
    damage(idx / name)
    with pytest.raises(RagloopError) as err:
        Index.load(idx)
    assert str(idx / name) in str(err.value)
    assert main(["search", str(idx), "Warsaw", "--mode", "bm25", "-q"]) == 2
    assert str(idx / name) in one_error_line(capsys)
    assert open_files_under(idx) == []  # the failed load closed the passage store


def test_damaged_store_without_checksums_is_one_error(built_index, tmp_path):
    """`verify=False` skips the sha256s: a store SQLite cannot read is still an error naming it."""
    idx = tmp_path / "idx"
    shutil.copytree(built_index, idx)
    store = idx / "passages.sqlite"
    store.write_bytes(b"not a database!!" + store.read_bytes()[16:])  # the 16-byte SQLite header
    with pytest.raises(RagloopError, match=r"passages\.sqlite: not a readable passage store"):
        Index.load(idx, verify=False)
    assert open_files_under(idx) == []


def open_files_under(folder: Path) -> list[str]:
    """Files under `folder` this process holds open (Linux /proc)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc/self/fd")
    found = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


def test_index_closes_its_store_on_every_way_out(built_index, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(built_index, idx)
    with Index.load(idx) as index:
        assert open_files_under(idx)  # the store is open while the index is
        index.store.get_rows([0])
    assert open_files_under(idx) == []
    manifest = json.loads((idx / "manifest.json").read_text())
    manifest["passages"] += 1  # loads FAISS and opens the store, then finds the counts disagree
    (idx / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RagloopError, match="passages"):
        Index.load(idx)
    assert open_files_under(idx) == []
    manifest["passages"] -= 1
    del manifest["index"]  # valid JSON, not the structure ragloop writes
    (idx / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RagloopError, match=r"manifest\.json: corrupt"):
        Index.load(idx)
    assert open_files_under(idx) == []


def small_checkpoint(path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    save_checkpoint(path, model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1), None, {"step": 1})


def load_small(path: Path) -> dict:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return load_checkpoint(path, model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1), None)


@pytest.mark.parametrize("damage", [truncate, flip])
@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json"])
def test_corrupt_checkpoint_file_is_one_error_naming_it(name, damage, tmp_path, squad_small, tiny_bert_dir,
                                                        tiny_t5_dir, capsys):
    from ragloop.cli import build_parser
    from ragloop.config import config_from_args

    out = tmp_path / "run"
    args = ["train", "--train_file", str(squad_small), "--question_encoder", str(tiny_bert_dir),
            "--generator", str(tiny_t5_dir), "--output_dir", str(out), "-q"]
    out.mkdir()
    config_from_args(build_parser().parse_args(args)).save(out / "train_config.json")
    small_checkpoint(out / "last")
    assert load_small(out / "last")["step"] == 1
    damage(out / "last" / name)
    with pytest.raises(RagloopError) as err:
        load_small(out / "last")
    assert str(out / "last" / name) in str(err.value)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2  # fails on the checkpoint before any model loads
    assert str(out / "last" / name) in one_error_line(capsys)


def test_corrupt_files_from_the_command_line_are_one_line_without_traceback(built_index, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(built_index, idx)
    truncate(idx / "index.faiss")
    proc = subprocess.run([sys.executable, "-m", "ragloop.cli", "search", str(idx), "q"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"ragloop: error: {idx / 'index.faiss'}: does not match the checksum in manifest.json (truncated, corrupt "
        "or changed)"]


# -- nothing is unpickled ----------------------------------------------------------------------------


class Payload:
    """Unpickling this runs open(marker, "w"): a stand-in for arbitrary code in a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    from ragloop.manifest import checksum_files

    path = tmp_path / "last"
    small_checkpoint(path)
    marker = tmp_path / "code-ran"
    optimizer = torch.optim.AdamW(torch.nn.Linear(4, 2).parameters())
    torch.save({**optimizer.state_dict(), "extra": Payload(marker)}, path / "optimizer.pt")
    state = json.loads((path / "trainer_state.json").read_text())  # checksums updated, as an attacker would
    state["files"] = checksum_files(path, sorted(p for p in path.iterdir() if p.name != "trainer_state.json"))
    (path / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(RagloopError, match=r"optimizer\.pt: refused: it holds pickled Python objects"):
        load_small(path)
    assert not marker.exists()


def test_nothing_in_src_unpickles():
    """Every torch.load is weights_only=True; no pickle.load, no np.load(allow_pickle=True)."""
    import re

    src = Path(__file__).parent.parent / "src" / "ragloop"
    for f in src.rglob("*.py"):
        text = f.read_text()
        for call in re.finditer(r"torch\.load\(([^()]*(?:\([^()]*\))?[^()]*)\)", text):
            assert "weights_only=True" in call.group(1), f"{f}: {call.group(0)}"
        assert not re.search(r"\bpickle\.loads?\(|allow_pickle\s*=\s*True|\bjoblib\.load\(", text), f


# -- what recovery may and may not touch ------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leftover(folder: Path, name: str, content: str) -> Path:
    path = folder / name
    path.mkdir()
    (path / "manifest.json").write_text(content)
    return path


def test_recovery_judges_only_this_machines_writers(tmp_path, monkeypatch):
    from ragloop.io import HOST, atomic_dir, recover

    dead, live = dead_pid(), os.getppid()
    # killed between its renames, on this machine: the previous version is restored, the rest removed
    leftover(tmp_path, f".a.old-{dead}-{HOST}", "previous")
    leftover(tmp_path, f".a.tmp-{dead}-{HOST}-x1y2", "half")
    recover(tmp_path / "a")
    assert siblings(tmp_path / "a") == ["a"] and (tmp_path / "a" / "manifest.json").read_text() == "previous"
    # the same, by a process whose PID this one now has (a restarted container): not ours, so stale
    leftover(tmp_path, f".b.old-{os.getpid()}-{HOST}", "previous")
    recover(tmp_path / "b")
    assert (tmp_path / "b" / "manifest.json").read_text() == "previous"
    # a live writer's files, and those of a writer on another machine sharing the folder, stay
    keep = [leftover(tmp_path, f".c.old-{live}-{HOST}", "live"), leftover(tmp_path, f".c.tmp-{live}-{HOST}-ab", "x"),
            leftover(tmp_path, f".c.old-{dead}-elsewhere", "remote"),
            leftover(tmp_path, f".c.tmp-{dead}-elsewhere-cd", "remote")]
    recover(tmp_path / "c")
    assert all(p.exists() for p in keep) and not (tmp_path / "c").exists()
    with pytest.raises(RagloopError, match=r"an interrupted write left the previous version in .*\.c\.old-"):
        Index.load(tmp_path / "c")
    # a leftover of an older ragloop (.NAME.old-PID) is restored; a temporary without a PID is left alone
    leftover(tmp_path, f".d.old-{dead}", "previous")
    legacy = leftover(tmp_path, ".d.tmp-k3j4h5g6", "unknown")
    recover(tmp_path / "d")
    assert (tmp_path / "d" / "manifest.json").read_text() == "previous" and legacy.exists()
    # a failure inside atomic_dir, after the old version was moved aside, puts it back
    real_rename = os.rename

    def fail_second(src, dst):
        if Path(dst) == tmp_path / "a" and ".a.tmp-" in Path(src).name:  # moving the new version in
            raise OSError("disk full")
        real_rename(src, dst)

    with pytest.raises(OSError, match="disk full"), atomic_dir(tmp_path / "a") as tmp:
        (tmp / "manifest.json").write_text("new")
        monkeypatch.setattr(os, "rename", fail_second)
    monkeypatch.undo()
    assert (tmp_path / "a" / "manifest.json").read_text() == "previous"
    assert not [n for n in siblings(tmp_path / "a") if n.startswith(".a.")]
