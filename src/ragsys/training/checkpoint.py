"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint folder holds `model.safetensors` (trainable weights), `optimizer.pt`, `scheduler.pt`,
`rng.pt` (torch RNG states) and `trainer_state.json` (step, epoch, position in the epoch, best dev
F1, Python/NumPy RNG states, and the sha256 of every other file). It is written under a temporary
name and renamed, so a crash mid-save leaves the previous checkpoint in place. Everything is read
back with `torch.load(weights_only=True)` or safetensors: nothing is unpickled.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from ragsys.errors import RagsysError
from ragsys.io import atomic_dir, atomic_write_json, checksum_files, verify_files

STATE_FILE = "trainer_state.json"


def rng_state() -> tuple[dict, dict]:
    """(tensors for rng.pt, JSON-able Python/NumPy states)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    return tensors, {"python": [py[0], list(py[1]), py[2]],
                     "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]}


def set_rng_state(tensors: dict, states: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, internal, gauss = states["python"]
    random.setstate((v, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer, scheduler, scaler, state: dict) -> None:
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        tensors, json_states = rng_state()
        torch.save(tensors, tmp / "rng.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        files = checksum_files(tmp, sorted(tmp.iterdir()))
        atomic_write_json(tmp / STATE_FILE, {**state, "rng": json_states, "files": files})


def read_state(path: str | Path) -> dict:
    path = Path(path)
    f = path / STATE_FILE
    if not f.is_file():
        raise RagsysError(f"{path}: no checkpoint here ({STATE_FILE} missing)")
    try:
        state = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RagsysError(f"{f}: corrupt checkpoint state") from None
    verify_files(path, state.get("files", {}), STATE_FILE)
    return state


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer, scheduler, scaler) -> dict:
    """Restore everything in place; returns the trainer state (step, epoch, ...)."""
    path = Path(path)
    state = read_state(path)
    try:
        load_model(model, str(path / "model.safetensors"))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        if scaler is not None and (path / "scaler.pt").is_file():
            scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
        set_rng_state(torch.load(path / "rng.pt", weights_only=True), state["rng"])
    except (RuntimeError, OSError, KeyError, ValueError) as e:
        raise RagsysError(f"{path}: checkpoint does not fit this model ({str(e).splitlines()[0][:200]})") from None
    return state
