"""Training checkpoints that resume exactly: model, optimizer, scheduler, loss scaler, data position
and every random-number generator (python, numpy, torch CPU and CUDA).

Each checkpoint is one file `checkpoints/step-0000100.pt` written atomically (temporary file + rename),
then the one-line pointer `checkpoints/latest` is replaced atomically too: a crash at any moment leaves
"latest" naming a complete checkpoint, never a half-written one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertforge.files import write_atomic, write_text_atomic

LATEST = "latest"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Write `state` as step-{step}.pt, point `latest` at it, delete all but the newest `keep`."""
    directory = Path(directory)
    path = directory / f"step-{step:07d}.pt"
    write_atomic(path, lambda tmp: torch.save(state, tmp))
    write_text_atomic(directory / LATEST, path.name + "\n")
    if keep > 0:
        for old in sorted(directory.glob("step-*.pt"))[:-keep]:
            old.unlink(missing_ok=True)
    return path


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint `latest` points at, or None when the folder has none yet."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    path = Path(directory) / pointer.read_text(encoding="utf-8").strip()
    if not path.is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is missing; delete {pointer} to start over")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file, or a run folder / checkpoints folder (its latest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = latest_checkpoint(folder)
        if found is None:
            raise FileNotFoundError(f"{folder}: no checkpoint yet (no '{LATEST}' file)")
        path = found
    # Our own files hold numpy RNG state and plain containers: weights_only would refuse them.
    return torch.load(path, map_location="cpu", weights_only=False)
