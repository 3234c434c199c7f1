"""Atomic checkpoints: a crash while writing never leaves `latest` naming a broken file."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from bertforge.training import checkpointing
from bertforge.training.checkpointing import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_crash_mid_write_keeps_the_previous_latest(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"step": 1, "w": torch.ones(3)})
    real_save = torch.save

    def dying_save(obj, path):
        real_save({"partial": True}, path)  # some bytes reach the temporary file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpointing.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "step-0000001.pt"
    assert load_checkpoint(tmp_path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-0000001.pt"]  # no temporary left over


def test_keeps_the_newest_checkpoints(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["step-0000020.pt", "step-0000030.pt"]
    assert load_checkpoint(tmp_path / "step-0000020.pt")["step"] == 20


def test_rng_state_round_trip():
    state = rng_state()
    drawn = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == drawn


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint yet"):
        load_checkpoint(tmp_path)
    (tmp_path / "latest").write_text("step-0000005.pt\n")
    with pytest.raises(FileNotFoundError, match="step-0000005.pt, which is missing"):
        latest_checkpoint(tmp_path)
