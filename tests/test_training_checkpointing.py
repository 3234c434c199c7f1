"""Atomic checkpoints: a crash while writing never leaves `latest` naming a broken file."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from bertforge.checkpoint import CheckpointError
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
    with pytest.raises(CheckpointError, match="no checkpoint yet"):
        load_checkpoint(tmp_path)
    (tmp_path / "latest").write_text("step-0000005.pt\n")
    with pytest.raises(CheckpointError, match="step-0000005.pt, which is missing"):
        latest_checkpoint(tmp_path)


def test_pruning_goes_by_step_number_and_never_deletes_the_new_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 9_999_999, {"step": 9_999_999}, keep=0)
    save_checkpoint(tmp_path, 10_000_000, {"step": 10_000_000}, keep=0)  # sorts before 9999999 by name
    save_checkpoint(tmp_path, 10_000_001, {"step": 10_000_001}, keep=2)
    assert [p.name for p in checkpointing.checkpoints_by_step(tmp_path)] == ["step-10000000.pt", "step-10000001.pt"]
    # An earlier run's later checkpoints in the folder: the one just written stays, and `latest` names it.
    save_checkpoint(tmp_path, 3, {"step": 3}, keep=2)
    assert latest_checkpoint(tmp_path).name == "step-0000003.pt"
    assert load_checkpoint(tmp_path)["step"] == 3


def test_resume_skips_a_truncated_latest_checkpoint(tmp_path, caplog):
    for step in (2, 4):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.ones(1000)})
    newest = tmp_path / "step-0000004.pt"
    assert checkpointing.is_intact(newest)
    newest.write_bytes(newest.read_bytes()[:1500])  # the disk filled up while the copy was written
    assert not checkpointing.is_intact(newest)
    with caplog.at_level("WARNING"):
        assert checkpointing.resume_checkpoint(tmp_path).name == "step-0000002.pt"
    assert [r.getMessage() for r in caplog.records] == [
        f"{newest} is truncated or corrupt; resuming from step-0000002.pt instead"]
    with pytest.raises(CheckpointError, match="step-0000004.pt: cannot be read .* truncated or corrupt"):
        load_checkpoint(newest)
    (tmp_path / "step-0000002.pt").write_bytes(b"PK\x03\x04 not a whole archive")
    with pytest.raises(CheckpointError, match="no intact checkpoint to resume from"):
        checkpointing.resume_checkpoint(tmp_path)
    assert checkpointing.resume_checkpoint(tmp_path / "none-yet") is None


def test_a_bit_flip_inside_a_checkpoint_is_caught_by_its_checksums(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"w": torch.arange(4096, dtype=torch.float32)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor's bytes: the archive's layout is untouched
    path.write_bytes(bytes(data))
    assert not checkpointing.is_intact(path)
