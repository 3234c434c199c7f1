"""benchmarks/transfer_best.py: each side at its best schedule, over the same floor and one pre-trained model."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # transfer_best imports transfer's task table
SPEC = importlib.util.spec_from_file_location("transfer_best", BENCHMARKS / "transfer_best.py")
transfer_best = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(transfer_best)


def _folder(root: Path, runs: dict, *, model="runs/m/model", floor=b"floor weights", examples=None) -> Path:
    """A transfer.py output folder: runs maps (side, task, epochs) -> {seed: metric (0-1)}."""
    (root / "floor_model").mkdir(parents=True)
    (root / "floor_model" / "model.safetensors").write_bytes(floor)
    for (side, task, epochs), per_seed in runs.items():
        metric = {"sst2": "dev/accuracy", "stsb": "dev/spearman"}[task]
        for seed, value in per_seed.items():
            run = root / side / task / f"seed{seed}"
            (run / "run").mkdir(parents=True)
            (run / "result.json").write_text(json.dumps({"seed": seed, "model": model if side == "pretrained" else
                                                         str(root / "floor_model"), metric: value}))
            (run / "run" / "finetune_config.json").write_text(json.dumps(
                {"epochs": epochs, "learning_rate": 1e-4, "batch_size": 32, "dropout": 0.1,
                 "max_train_examples": examples}))
    return root


def test_each_side_gets_its_own_best_schedule(tmp_path):
    short = _folder(tmp_path / "e2", {("pretrained", "sst2", 2): {42: 0.84, 1: 0.83},
                                      ("floor", "sst2", 2): {42: 0.82, 1: 0.82}})
    long = _folder(tmp_path / "e4", {("pretrained", "sst2", 4): {42: 0.86, 1: 0.85},
                                     ("floor", "sst2", 4): {42: 0.80, 1: 0.81}})
    table = transfer_best.best_schedules([short, long], [])
    best = {side: rows[0] for side, rows in table["sst2", "all"].items()}
    assert best["pretrained"][0] == pytest.approx(85.5) and best["pretrained"][2] == 4
    assert best["floor"][0] == pytest.approx(82.0) and best["floor"][2] == 2  # not its 4-epoch 80.5
    text = transfer_best.report(table)
    assert "+3.50" in text and "2 epochs: 83.50 / 82.00; 4 epochs: 85.50 / 80.50" in text


def test_floor_runs_of_another_model_join_only_the_floor_side(tmp_path):
    ours = _folder(tmp_path / "ours", {("pretrained", "stsb", 3): {42: 0.5}, ("floor", "stsb", 3): {42: 0.1}})
    other = _folder(tmp_path / "other", {("pretrained", "stsb", 10): {42: 0.9}, ("floor", "stsb", 10): {42: 0.2}},
                    model="runs/other/model")
    transfer_best.check_same_models([ours], [other])
    table = transfer_best.best_schedules([ours], [other])
    assert table["stsb", "all"]["pretrained"][0][0] == pytest.approx(50.0)  # the other model's 90 is not read
    assert table["stsb", "all"]["floor"][0][0] == pytest.approx(20.0)
    with pytest.raises(SystemExit, match="different pre-trained models"):
        transfer_best.check_same_models([ours, other], [])


def test_refuses_different_floors_and_keeps_training_sizes_apart(tmp_path):
    a = _folder(tmp_path / "a", {("pretrained", "sst2", 2): {42: 0.84}, ("floor", "sst2", 2): {42: 0.82}})
    b = _folder(tmp_path / "b", {("pretrained", "sst2", 2): {42: 0.80}, ("floor", "sst2", 2): {42: 0.79}},
                floor=b"another initialisation", examples=20000)
    with pytest.raises(SystemExit, match="floor_model weights differ"):
        transfer_best.check_same_models([a, b], [])
    table = transfer_best.best_schedules([a, b], [])
    assert set(table) == {("sst2", "all"), ("sst2", 20000)}
    assert "| 20,000 |" in transfer_best.report(table)
