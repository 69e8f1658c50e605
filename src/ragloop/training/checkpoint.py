"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint folder holds `model.safetensors` (trainable weights), `optimizer.pt`, `scheduler.pt`,
`rng.pt` (torch RNG states) and `trainer_state.json` (step, epoch, position in the epoch, best dev
F1, Python/NumPy RNG states, and the sha256 of every other file). A run of P processes also keeps
`rng-rank{r}.pt` (and the matching Python/NumPy states) for every other process r: each process draws
its own dropout masks, so each needs its own RNG state back to continue exactly. It is written under
a temporary name and renamed, so a crash mid-save leaves the previous checkpoint in place. Everything
is read back with `torch.load(weights_only=True)` or safetensors: nothing is unpickled.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from ragloop.errors import RagloopError
from ragloop.io import atomic_dir, atomic_write_json, interrupted_hint, recover
from ragloop.manifest import checksum_files, verify_files

STATE_FILE = "trainer_state.json"


def rng_state() -> tuple[dict, dict]:
    """(tensors for rng.pt, JSON-able Python/NumPy states)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        # this process's GPU only: under DDP each process has its own, and reading every GPU's state
        # would open a CUDA context on each of them from every process
        tensors["cuda"] = torch.cuda.get_rng_state()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    return tensors, {"python": [py[0], list(py[1]), py[2]],
                     "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]}


def set_rng_state(tensors: dict, states: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda") and k != "cuda"]  # older checkpoints
    if torch.cuda.is_available() and "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"])
    elif cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, internal, gauss = states["python"]
    random.setstate((v, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer, scheduler, scaler, state: dict,
                    rank_rng: list[tuple[dict, dict]] | None = None) -> None:
    """`rank_rng`: `rng_state()` of processes 1, 2, ... of a multi-process run (this one is process 0)."""
    rank_states = {}
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        tensors, json_states = rng_state()
        torch.save(tensors, tmp / "rng.pt")
        for rank, (rank_tensors, rank_json) in enumerate(rank_rng or [], start=1):
            torch.save(rank_tensors, tmp / f"rng-rank{rank}.pt")
            rank_states[str(rank)] = rank_json
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        files = checksum_files(tmp, sorted(tmp.iterdir()))
        extra = {"rng_ranks": rank_states} if rank_states else {}
        atomic_write_json(tmp / STATE_FILE, {**state, "rng": json_states, **extra, "files": files})


def read_state(path: str | Path) -> dict:
    path = Path(path)
    recover(path)  # a save killed between its renames: the previous checkpoint is put back
    f = path / STATE_FILE
    if not f.is_file():
        raise RagloopError(f"{path}: no checkpoint here ({STATE_FILE} missing){interrupted_hint(path)}")
    try:
        state = json.loads(f.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError):  # bad JSON or UTF-8, numbers too long, nesting too deep
        raise RagloopError(f"{f}: corrupt checkpoint state") from None
    if not isinstance(state, dict):
        raise RagloopError(f"{f}: corrupt checkpoint state (not a JSON object)")
    verify_files(path, state.get("files", {}), STATE_FILE)
    return state


def _torch_load(file: Path):
    """Tensors and plain containers only (weights_only): a file holding other pickled objects is refused."""
    try:
        return torch.load(file, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1][:160] if str(e).strip() else type(e).__name__
        raise RagloopError(f"{file}: refused: it holds pickled Python objects other than tensors, which could run "
                          f"code when loaded ({first})") from None
    except (RuntimeError, EOFError) as e:
        raise RagloopError(f"{file}: not a readable torch file, truncated or corrupt "
                          f"({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__})") from None


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer, scheduler, scaler, rank: int = 0) -> dict:
    """Restore everything in place (RNG states: those of process `rank`); returns the trainer state."""
    path = Path(path)
    state = read_state(path)
    rng_file, rng_json = "rng.pt", state.get("rng")
    if rank:
        rng_file, rng_json = f"rng-rank{rank}.pt", state.get("rng_ranks", {}).get(str(rank))
        if rng_json is None or not (path / rng_file).is_file():
            raise RagloopError(f"{path}: no RNG state for process {rank} (the checkpoint was written by a run "
                              f"of {state.get('num_processes', 1)} processes)")
    try:
        try:
            load_model(model, str(path / "model.safetensors"))
        except SafetensorError as e:
            raise RagloopError(f"{path / 'model.safetensors'}: not a readable safetensors file ({e})") from None
        optimizer.load_state_dict(_torch_load(path / "optimizer.pt"))
        scheduler.load_state_dict(_torch_load(path / "scheduler.pt"))
        if scaler is not None and (path / "scaler.pt").is_file():
            scaler.load_state_dict(_torch_load(path / "scaler.pt"))
        set_rng_state(_torch_load(path / rng_file), rng_json)
    except (RuntimeError, OSError, KeyError, ValueError, TypeError) as e:
        hint = ("; a run with --question_encoder_lr 0 begun before ragloop froze that encoder outright (its "
                "optimizer still held the encoder's parameters) resumes only with the version that began it"
                if "parameter group" in str(e) else "")
        first = str(e).splitlines()[0][:200]
        raise RagloopError(f"{path}: checkpoint does not fit this model ({first}){hint}") from None
    return state
