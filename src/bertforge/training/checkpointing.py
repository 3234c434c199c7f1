"""Training checkpoints that resume exactly: model, optimizer, scheduler, loss scaler, data position
and every random-number generator (python, numpy, torch CPU and CUDA).

Each checkpoint is one file `checkpoints/step-0000100.pt` written atomically (temporary file + rename),
then the one-line pointer `checkpoints/latest` is replaced atomically too: a crash at any moment leaves
"latest" naming a complete checkpoint, never a half-written one. Old checkpoints are pruned by step
number, and the one "latest" names is never deleted. Resuming checks the file first: a truncated or
corrupt checkpoint (a full disk, a copy cut short) is skipped for the newest intact one, with one line
saying so.
"""

from __future__ import annotations

import logging
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertforge.checkpoint import CheckpointError
from bertforge.files import write_atomic, write_text_atomic

log = logging.getLogger(__name__)

LATEST = "latest"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


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
    """Write `state` as step-{step}.pt, point `latest` at it, then delete the older checkpoints beyond the
    newest `keep` (by step number; 0 = keep all). The new checkpoint is never deleted, whatever else the
    folder holds."""
    directory = Path(directory)
    path = directory / f"step-{step:07d}.pt"
    write_atomic(path, lambda tmp: torch.save(state, tmp))
    write_text_atomic(directory / LATEST, path.name + "\n")
    if keep > 0:
        others = [p for p in checkpoints_by_step(directory) if p.name != path.name]
        for old in others[: max(0, len(others) - (keep - 1))]:
            old.unlink(missing_ok=True)
    return path


def checkpoints_by_step(directory: str | Path) -> list[Path]:
    """The step-N.pt files of a folder, oldest step first (by number: step 10000000 sorts after 9999999)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint `latest` points at, or None when the folder has none yet."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    path = Path(directory) / pointer.read_text(encoding="utf-8").strip()
    if not path.is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which is missing; delete {pointer} to start over")
    return path


def is_intact(path: str | Path) -> bool:
    """Whether a checkpoint file is complete: torch.save writes a zip archive, whose directory sits at
    the end (a truncated file has none) and whose members carry CRC-32 checksums (checked here)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def resume_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint to resume from: the one `latest` names if intact, else the newest intact one
    (saying so in one line). None when the folder holds no checkpoint; an error when none is intact."""
    directory = Path(directory)
    candidates = checkpoints_by_step(directory)
    pointer = directory / LATEST
    named = directory / pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
    if named is not None and named.is_file() and is_intact(named):
        return named
    if named is None and not candidates:
        return None
    for path in reversed(candidates):
        if path != named and is_intact(path):
            problem = "is missing" if named is None or not named.is_file() else "is truncated or corrupt"
            log.warning("%s %s; resuming from %s instead", named or pointer, problem, path.name)
            return path
    raise CheckpointError(f"{directory}: no intact checkpoint to resume from (the files are truncated or missing); "
                          "start over with --overwrite")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file, or a run folder / checkpoints folder (its latest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = latest_checkpoint(folder)
        if found is None:
            raise CheckpointError(f"{folder}: no checkpoint yet (no '{LATEST}' file)")
        path = found
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        # Our own files hold numpy RNG state and plain containers: weights_only would refuse them.
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc}); the checkpoint is truncated or corrupt — "
                              "resume from an earlier one or start over") from None
